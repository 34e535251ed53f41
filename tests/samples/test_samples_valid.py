"""Every sample: valid, canonical, described, runnable with its defaults; all ten there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.flows.format import dump_flow, load_flow
from engine.flows.registry import Registry
from engine.flows.validate import validate_flow

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "samples").glob("*.flow.json"))
ISSUE_7 = [
    "sales-import",
    "sales-ticker",
    "nightly-prices",
    "customer-to-shop",
    "order-status-report",
    "invoice-drop",
    "db-sync",
    "documents-to-mongo",
    "downloads",
    "batch-chain",
]


def test_the_ten_legacy_scenarios_are_samples() -> None:
    names = {path.name.removesuffix(".flow.json") for path in SAMPLES}
    missing = [name for name in ISSUE_7 if not any(n.startswith(name) for n in names)]
    assert missing == []


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_a_sample_is_valid_canonical_and_described(path: Path) -> None:
    flow = load_flow(path)
    assert validate_flow(flow, Registry.discover()) == []
    assert path.read_text(encoding="utf-8") == dump_flow(flow), "not canonical: flowmill fmt"
    assert len(flow.get("description", "")) >= 40, "say what it does and what to adapt"
    assert flow.get("name")
    for name, decl in (flow.get("params") or {}).items():
        assert "default" in decl, f"param {name} has no default: Run now would ask for it"
    for node in flow["nodes"]:
        assert "ui" in node and {"x", "y"} <= set(node["ui"]), f"node {node['id']} has no place"


def test_flowmill_validate_accepts_every_sample() -> None:
    env = {**os.environ}
    result = subprocess.run(
        [sys.executable, "-m", "designer.cli", "validate", *map(str, SAMPLES)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.dumps(result.stderr) == '""'
