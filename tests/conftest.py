"""Fixtures shared by every test package: real databases, one fresh database per test.

``db_url`` is parametrised over SQLite, PostgreSQL and MariaDB. A missing service skips the
test on a developer machine and fails it in CI (``CI=true``): CI must never go green
without the service-backed tests having run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get(
    "FLOWMILL_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MARIADB_ADMIN_URL = os.environ.get(
    "FLOWMILL_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def service_missing(what: str, error: Exception) -> None:
    """Skip locally, fail in CI: a missing service must never pass CI silently."""
    message = f"{what} is not reachable: {error}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


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
