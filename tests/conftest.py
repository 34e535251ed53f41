"""Fixtures shared by every test package: real databases, one fresh database per test.

``db_url`` is parametrised over SQLite, PostgreSQL and MariaDB. A missing service skips the
test on a developer machine and fails it in CI (``CI=true``): CI must never go green
without the service-backed tests having run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get(
    "FLOWMILL_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MARIADB_ADMIN_URL = os.environ.get(
    "FLOWMILL_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI=true every skip is a failure: a skipped real-client or service test would
    hide exactly what it is there to prove. Locally a skip stays a skip."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which counts as a failure: {reason}"


def service_missing(what: str, error: Exception) -> None:
    """Skip locally, fail in CI: a missing service must never pass CI silently."""
    message = f"{what} is not reachable: {error}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


# A test waits for the state it needs, never for a time: the deadline only bounds a test that
# would otherwise hang, so it is generous (CI machines run at full load). The test still
# returns as soon as the state arrives.
DEADLINE = 120.0


def wait_until(
    check: Callable[[], Any], seconds: float = DEADLINE, what: str = "", interval: float = 0.02
) -> Any:
    """Poll ``check`` until it returns something true (returned) or fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what or check}")
        time.sleep(interval)


# Every program a test runs, and the Debian package scripts/services.sh installs it from.
# tests/scripts/test_programs.py checks that no test calls a program missing here and that
# services.sh installs each package, so a fresh machine has them all.
PROGRAMS = {
    "bash": "bash",
    "curl": "curl",
    "litmus": "litmus",
    "pdftotext": "poppler-utils",
    "pdftoppm": "poppler-utils",
    "mosquitto": "mosquitto",
    "mosquitto_passwd": "mosquitto",
    "dovecot": "dovecot-imapd",
    "chromium": "chromium",
}


def require_program(name: str) -> str:
    """The path of a program a test runs; a missing one skips locally and fails in CI."""
    assert name in PROGRAMS, f"add {name!r} to PROGRAMS in tests/conftest.py"
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        package = PROGRAMS[name]
        service_missing(name, FileNotFoundError(f"{name} (Debian {package}: scripts/services.sh)"))
    return str(path)


def status_shown(env: dict[str, str]) -> str:
    """What ``flowmill status`` prints for the server of ``env`` (its data directory)."""
    done = subprocess.run(
        [sys.executable, "-m", "designer.cli", "status"], env=env, capture_output=True,
        text=True, timeout=DEADLINE,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def run_queued(app: Any, worker: str = "test-worker") -> list[str]:
    """Run every queued job in order, as a worker of the batch server does; their states."""
    from engine.batch.workers import run_job

    outcomes = []
    while (job := app.jobs.claim(worker)) is not None:
        outcomes.append(run_job(app, job.id, worker, 5.0, threading.Event()))
    return outcomes


def _server_database(admin_url: str, dialect: str) -> Iterator[str]:
    name = f"fm_{uuid.uuid4().hex[:12]}"
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
    except Exception as exc:
        service_missing(dialect, exc)
    url = sa.make_url(admin_url).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            if dialect == "postgresql":
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :n AND pid <> pg_backend_pid()"
                    ),
                    {"n": name},
                )
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


@pytest.fixture
def poppler() -> None:
    """pdftotext and pdftoppm, which read back the PDFs a test made."""
    require_program("pdftotext")
    require_program("pdftoppm")


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLAlchemy URL of an empty database of each kind, dropped after the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
    elif request.param == "postgresql":
        yield from _server_database(PG_ADMIN_URL, "postgresql")
    else:
        yield from _server_database(MARIADB_ADMIN_URL, "mariadb")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An empty Flowmill data directory."""
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a MongoDB wire-protocol server (SecantusDB's ``secantusd-py``, a test
    dependency) running as a separate process for the whole test session."""
    import pymongo

    here = Path(sys.executable).parent / "secantusd-py"
    binary = str(here) if here.exists() else shutil.which("secantusd-py")
    if binary is None:
        service_missing("secantusd-py", FileNotFoundError("pip install -e '.[test]'"))
    root = tmp_path_factory.mktemp("secantus")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            str(binary),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--storage-path",
            str(root / "db"),
        ],
        cwd=root,  # the server reads ./secantusd.toml when there is one
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"mongodb://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 3 * DEADLINE
        while True:
            with pymongo.MongoClient(url, serverSelectionTimeoutMS=500) as client:
                try:
                    client.admin.command("ping")
                    break
                except pymongo.errors.PyMongoError as exc:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        tail = (root / "server.log").read_text(errors="replace")[-2000:]
                        pytest.fail(f"secantusd-py did not start: {exc}\n{tail}", pytrace=False)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Quickstart:
    """The README's quick start, running: its address, the admin password it printed."""

    url: str
    password: str
    data_dir: Path
    log: Path


@contextmanager
def quickstart(tmp_path: Path) -> Iterator[Quickstart]:
    """Run ``scripts/quickstart`` as a new user does (own data directory, web port of its
    own) until the samples are loaded and scheduled; stop it and all it started after."""
    data_dir = tmp_path / "data"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    env = {**os.environ, "FLOWMILL_DATA_DIR": str(data_dir), "FLOWMILL_WEB_PORT": str(port)}
    env |= {"FLOWMILL_FTPS_PORT": "0", "FLOWMILL_WEBDAV_PORT": "0"}  # ports of their own
    env |= {"FLOWMILL_STOP_GRACE": "5"}  # at the end, running sample jobs are cancelled soon
    env.pop("FLOWMILL_FLOWS_DIR", None)
    log = tmp_path / "quickstart.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["bash", str(ROOT / "scripts" / "quickstart")],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 3 * DEADLINE
        text = ""
        while "imported flow sales-import" not in text or "schedule flow:" not in text:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
            text = log.read_text()
        password = re.search(r"user 'admin' with password (\S+)", text)
        assert password, text
        assert f"web app: http://127.0.0.1:{port}/" in text
        yield Quickstart(f"http://127.0.0.1:{port}", password.group(1), data_dir, log)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(DEADLINE)
