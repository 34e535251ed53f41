"""Connections and secrets are encrypted at rest with the installation's key."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine.errors import FlowmillError
from engine.service import Flowmill
from engine.store.factory import open_store
from engine.store.secrets import ENV_KEY, KEY_FILE, SecretBox, SecretKeyError


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEY, raising=False)


def test_nothing_readable_in_the_database(db_url: str, data_dir: Path) -> None:
    with open_store(db_url, data_dir) as store:
        store.set_connection("erp", {"user": "fm", "password": "hunter2-Übung"})
        store.set_secret("smtp", "s3cret-Straße")
        with store.engine.connect() as conn:
            raw = [
                str(value)
                for table in ("connections", "secrets")
                for row in conn.execute(sa.text(f"SELECT * FROM {table}"))
                for value in row
            ]
    dumped = "\n".join(raw)
    for plaintext in ("hunter2", "Übung", "password", '"user"', "s3cret", "Straße"):
        assert plaintext not in dumped
    assert "erp" in dumped and "smtp" in dumped  # names stay listable


def test_a_different_key_is_a_clear_error(
    db_url: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_KEY, SecretBox.generate_key())
    with open_store(db_url, data_dir) as store:
        store.set_secret("smtp-password", "s3cret")
        store.set_connection("erp", {"password": "hunter2"})

    monkeypatch.setenv(ENV_KEY, SecretBox.generate_key())
    with open_store(db_url, data_dir) as store:
        assert store.list_secrets() == ["smtp-password"]
        with pytest.raises(SecretKeyError, match=r"secret .smtp-password.*does not match"):
            store.get_secret("smtp-password")
        with pytest.raises(FlowmillError, match=rf"connection .erp.*{ENV_KEY}"):
            store.get_connection("erp")


def test_key_file_is_created_once_readable_by_owner_only(data_dir: Path) -> None:
    box = SecretBox(data_dir / "fresh")
    token = box.encrypt("s3cret")
    key_file = data_dir / "fresh" / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert SecretBox(data_dir / "fresh").decrypt(token) == "s3cret"
    assert key_file.read_text().strip() not in token


def test_boxes_starting_together_agree_on_one_key(data_dir: Path) -> None:
    boxes = [SecretBox(data_dir) for _ in range(8)]
    tokens: list[str] = [""] * len(boxes)
    start = threading.Barrier(len(boxes))

    def encrypt(i: int) -> None:
        start.wait()
        tokens[i] = boxes[i].encrypt(f"value {i}")

    threads = [threading.Thread(target=encrypt, args=(i,)) for i in range(len(boxes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [boxes[0].decrypt(t) for t in tokens] == [f"value {i}" for i in range(8)]


def test_key_from_environment_wins_and_no_key_file_is_written(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = SecretBox.generate_key()
    monkeypatch.setenv(ENV_KEY, key)
    token = SecretBox(data_dir).encrypt("s3cret")
    assert not (data_dir / KEY_FILE).exists()
    assert SecretBox(data_dir, key=key).decrypt(token) == "s3cret"
    with pytest.raises(SecretKeyError, match="does not match"):
        SecretBox(data_dir, key=SecretBox.generate_key()).decrypt(token)


@pytest.mark.parametrize("bad", ["", "not-a-key", "x" * 44])
def test_a_malformed_key_is_a_clear_error(
    bad: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_KEY, bad)
    with pytest.raises(SecretKeyError, match=f"{ENV_KEY} is not valid"):
        SecretBox(data_dir).encrypt("s3cret")


def test_a_tampered_token_is_refused(data_dir: Path) -> None:
    box = SecretBox(data_dir)
    token = box.encrypt("s3cret")
    with pytest.raises(SecretKeyError):
        middle = len(token) // 2
        box.decrypt(token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :])


@pytest.mark.parametrize("name", ["smtp\x00", "smtp\npassword", "\x1b[31mred", "caf\udce9"])
def test_secret_and_connection_names_must_be_plain_text(
    db_url: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """PostgreSQL stored NUL in no name (a 500 or a traceback before); a newline or escape
    sequence made listings lie. Every front end comes through the service's check."""
    monkeypatch.setenv("FLOWMILL_DATABASE_URL", db_url)
    with Flowmill.open(data_dir) as app:
        with pytest.raises(FlowmillError, match=r"secret name .* is not allowed"):
            app.set_secret(name, "s3cret")
        with pytest.raises(FlowmillError, match=r"connection name .* is not allowed"):
            app.set_connection(name, {"url": "sqlite://"})
        assert app.list_secrets() == [] and app.list_connections() == []
