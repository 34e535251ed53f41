"""``flowmill user …`` and ``flowmill token …`` as an admin types them (SQLite store)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.access.users import AuthError
from engine.service import Flowmill

ROOT = Path(__file__).parents[2]
FLOWMILL = Path(sys.executable).parent / "flowmill"
PW = "correct horse battery"


def fm(*args: str, data_dir: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLOWMILL_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [str(FLOWMILL), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        input=stdin if stdin is not None else "",
    )


def login(data_dir: Path, name: str, password: str) -> str:
    with Flowmill.open(data_dir) as app:
        return app.users.authenticate(name, password).role


def test_user_add_list_passwd_role_remove(data_dir: Path):
    added = fm("user", "add", "root", "--role", "admin", "--password", PW, data_dir=data_dir)
    assert added.returncode == 0, added.stderr
    assert "user root added (admin)" in added.stdout
    piped = fm("user", "add", "ann", "--role", "viewer", data_dir=data_dir, stdin=PW + "\n")
    assert piped.returncode == 0, piped.stderr
    assert login(data_dir, "ann", PW) == "viewer"

    listed = fm("user", "list", "--json", data_dir=data_dir)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(u["name"], u["role"], u["disabled"]) for u in rows] == [
        ("ann", "viewer", False),
        ("root", "admin", False),
    ]
    assert "scrypt" not in listed.stdout and PW not in listed.stdout
    table = fm("user", "list", data_dir=data_dir).stdout.splitlines()
    assert [line.split()[:3] for line in table] == [
        ["ann", "viewer", "enabled"],
        ["root", "admin", "enabled"],
    ]

    changed = fm("user", "passwd", "ann", data_dir=data_dir, stdin="a new password\n")
    assert changed.returncode == 0, changed.stderr
    assert login(data_dir, "ann", "a new password") == "viewer"
    with pytest.raises(AuthError):
        login(data_dir, "ann", PW)

    assert "ann is now operator" in fm("user", "role", "ann", "operator", data_dir=data_dir).stdout
    assert fm("user", "disable", "ann", data_dir=data_dir).returncode == 0
    with pytest.raises(AuthError):
        login(data_dir, "ann", "a new password")
    assert fm("user", "enable", "ann", data_dir=data_dir).returncode == 0
    assert fm("user", "remove", "ann", data_dir=data_dir).returncode == 0
    left = json.loads(fm("user", "list", "--json", data_dir=data_dir).stdout)
    assert [u["name"] for u in left] == ["root"]


def test_user_errors_exit_2_with_a_clear_message(data_dir: Path):
    root = fm("user", "add", "root", "--role", "admin", "--password", PW, data_dir=data_dir)
    assert root.returncode == 0, root.stderr
    cases = [
        (("user", "add", "root", "--role", "viewer", "--password", PW), "already exists"),
        (("user", "add", "Bob", "--role", "viewer", "--password", PW), "lowercase letters"),
        (("user", "add", "bob", "--role", "viewer", "--password", "short"), "at least 10"),
        (("user", "add", "bob", "--role", "viewer"), "no password"),  # empty stdin
        (("user", "add", "bob", "--role", "root", "--password", PW), "invalid choice"),
        (("user", "passwd", "nobody", "--password", PW), "user 'nobody' does not exist"),
        (("user", "remove", "root"), "last enabled admin"),
        (("user", "role", "root", "viewer"), "last enabled admin"),
        (("token", "create", "nobody"), "user 'nobody' does not exist"),
        (("token", "revoke", "nope"), "API token 'nope' does not exist"),
    ]
    for args, message in cases:
        done = fm(*args, data_dir=data_dir)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr, (args, done.stderr)


def test_token_create_list_revoke(data_dir: Path):
    fm("user", "add", "root", "--role", "admin", "--password", PW, data_dir=data_dir)
    fm("user", "add", "bot", "--role", "operator", "--password", PW, data_dir=data_dir)
    created = fm("token", "create", "bot", "--label", "nightly import", data_dir=data_dir)
    assert created.returncode == 0, created.stderr
    [token] = created.stdout.splitlines()  # alone on its line, nothing else on stdout
    assert token.startswith("fmt_")
    assert "not shown again" in created.stderr and token not in created.stderr
    with Flowmill.open(data_dir) as app:
        assert app.users.user_for_token(token).name == "bot"

    listed = fm("token", "list", "--json", data_dir=data_dir)
    assert listed.returncode == 0, listed.stderr
    [info] = json.loads(listed.stdout)
    assert (info["user"], info["label"], info["revoked"]) == ("bot", "nightly import", False)
    assert info["last_used_at"] is not None
    plain = fm("token", "list", "--user", "bot", data_dir=data_dir).stdout
    assert info["id"] in plain and "nightly import" in plain
    for text in (listed.stdout, plain):
        assert token not in text and token[4:20] not in text
    assert fm("token", "list", "--user", "root", data_dir=data_dir).stdout == ""

    revoked = fm("token", "revoke", info["id"], data_dir=data_dir)
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(fm("token", "list", "--json", data_dir=data_dir).stdout)[0]["revoked"]
    with Flowmill.open(data_dir) as app, pytest.raises(AuthError):
        app.users.user_for_token(token)


def test_user_drop_flag_grants_and_revokes_the_file_servers(data_dir: Path):
    added = fm(
        "user", "add", "scanner", "--role", "operator", "--drop", "--password", PW,
        data_dir=data_dir,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "may use the file-drop servers" in added.stdout
    assert fm("user", "list", data_dir=data_dir).stdout.split()[:4] == [
        "scanner", "operator", "enabled", "drop",
    ]  # fmt: skip
    with Flowmill.open(data_dir) as app:
        assert app.users.authenticate_drop("scanner", PW).file_drop
    off = fm("user", "drop", "scanner", "--off", data_dir=data_dir)
    assert off.returncode == 0 and "may not use" in off.stdout
    with Flowmill.open(data_dir) as app:
        assert not app.users.get("scanner").file_drop
    unknown = fm("user", "drop", "nobody", data_dir=data_dir)
    assert unknown.returncode == 2 and "nobody" in unknown.stderr
