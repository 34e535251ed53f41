"""trigger.file_drop run by hand: the param ``path`` names the file (or one glob match)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from engine.errors import NodeError
from engine.testing import run_node
from nodes.file_drop import FILE_DROP


def _run(path: str) -> dict:
    [record] = run_node(FILE_DROP, {"folder": "in"}, params={"path": path})["out"]
    return record


def test_a_path_param_describes_that_file(tmp_path: Path):
    invoice = tmp_path / "rechnung-RE-2026-0815.csv"
    invoice.write_bytes(b"a;b\n1;2\n")
    record = _run(str(invoice))
    assert record["path"] == str(invoice) and record["name"] == invoice.name
    assert record["size"] == 8 and record["source"] == "manual"
    assert record["sha256"] == hashlib.sha256(b"a;b\n1;2\n").hexdigest()
    with pytest.raises(NodeError, match=r"param path: .*fehlt\.csv is not a file"):
        _run(str(tmp_path / "fehlt.csv"))


def test_a_glob_in_the_path_param_must_match_exactly_one_file(tmp_path: Path):
    (tmp_path / "rechnung-RE-2026-0815.csv").write_text("x\n")
    assert _run(str(tmp_path / "rechnung-RE-*-0815.csv"))["name"] == "rechnung-RE-2026-0815.csv"
    with pytest.raises(NodeError, match=r"must match exactly one file, matches 0 \(none\)"):
        _run(str(tmp_path / "rechnung-XX-*.csv"))
    (tmp_path / "rechnung-RE-2027-0815.csv").write_text("y\n")
    with pytest.raises(
        NodeError,
        match=r"matches 2 \(rechnung-RE-2026-0815\.csv, rechnung-RE-2027-0815\.csv\): give the",
    ):
        _run(str(tmp_path / "rechnung-RE-*-0815.csv"))
    # a file whose name really holds a '*' is taken as it is
    (tmp_path / "odd*.csv").write_text("z\n")
    assert _run(str(tmp_path / "odd*.csv"))["name"] == "odd*.csv"
