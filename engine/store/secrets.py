"""Encryption at rest for connections and secrets (Fernet: AES-128-CBC + HMAC-SHA256).

The key comes from the environment variable ``FLOWMILL_SECRET_KEY`` when it is set (so a
container or several servers can share it), else from ``data_dir/secret.key``, which is
created on first use, readable by its owner only. Losing the key means losing every stored
connection and secret; a different key gives ``SecretKeyError``, never garbage.

Example::

    >>> box = SecretBox(Path("/tmp/flowmill-data"))
    >>> box.decrypt(box.encrypt("s3cret"))
    's3cret'
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from engine.errors import FlowmillError

__all__ = ["ENV_KEY", "KEY_FILE", "SecretBox", "SecretKeyError"]

ENV_KEY = "FLOWMILL_SECRET_KEY"
KEY_FILE = "secret.key"

log = logging.getLogger(__name__)


class SecretKeyError(FlowmillError):
    """The secret key is malformed or is not the key the stored data was encrypted with."""


class SecretBox:
    """Encrypts and decrypts text with the installation's secret key.

    The key is read (or created) lazily on first use, so opening a store never touches the
    key file; ``key`` overrides both sources (tests, key-rotation tools).
    """

    def __init__(self, data_dir: Path, key: str | bytes | None = None) -> None:
        self.data_dir = Path(data_dir)
        self._explicit_key = key
        self._fernet: Fernet | None = None
        self._source = ""
        self._lock = threading.Lock()

    @property
    def key_path(self) -> Path:
        return self.data_dir / KEY_FILE

    @property
    def key_source(self) -> str:
        """Where the key came from, for error messages (never the key itself)."""
        self._get_fernet()
        return self._source

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode("ascii")

    def encrypt(self, plaintext: str) -> str:
        return self._get_fernet().encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str, *, what: str = "a stored value") -> str:
        """Plaintext of ``token``.

        Raises:
            SecretKeyError: the key is not the one ``token`` was encrypted with (or the
                ciphertext was altered).
        """
        fernet = self._get_fernet()
        try:
            return fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeEncodeError) as exc:
            raise SecretKeyError(
                f"cannot decrypt {what}: the secret key ({self._source}) does not match the "
                f"key it was encrypted with; restore the original {ENV_KEY} or {self.key_path}"
            ) from exc

    # -- key loading ---------------------------------------------------------------------

    def _get_fernet(self) -> Fernet:
        with self._lock:
            if self._fernet is None:
                self._fernet = self._load()
            return self._fernet

    def _load(self) -> Fernet:
        if self._explicit_key is not None:
            self._source = "key given to SecretBox"
            return _fernet(self._explicit_key, self._source)
        env = os.environ.get(ENV_KEY)
        if env is not None:
            # An empty variable is refused rather than ignored: falling back to a fresh key
            # file would silently encrypt new data with a key nobody meant to use.
            self._source = f"environment variable {ENV_KEY}"
            return _fernet(env.strip(), self._source)
        self._source = f"key file {self.key_path}"
        return _fernet(self._read_or_create_key_file(), self._source)

    def _read_or_create_key_file(self) -> str:
        path = self.key_path
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                # O_EXCL: two processes starting together must not both write a key.
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                key = self.generate_key()
                with os.fdopen(fd, "w", encoding="ascii") as fh:
                    fh.write(key + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                log.info("created secret key %s: back it up, stored secrets need it", path)
                return key
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning(
                "secret key file %s is readable by others (mode %o): chmod 600 it", path, mode
            )
        # The process that won O_EXCL may still be writing: wait briefly for the key.
        deadline = time.monotonic() + 2.0
        while True:
            key = path.read_text(encoding="ascii").strip()
            if key or time.monotonic() > deadline:
                return key
            time.sleep(0.02)


def _fernet(key: str | bytes, source: str) -> Fernet:
    try:
        return Fernet(key)
    except (ValueError, TypeError) as exc:
        raise SecretKeyError(
            f"the secret key from {source} is not valid: it must be 32 url-safe "
            "base64-encoded bytes (make one with "
            "`python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'`)"
        ) from exc
