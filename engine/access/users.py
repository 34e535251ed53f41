"""Users, roles, passwords and API tokens, kept in the store. No Flask here.

- Roles are fixed: ``admin`` > ``editor`` (edit and run flows) > ``operator`` (run and steer
  jobs) > ``viewer`` (read only). Front ends ask ``user.can(permission)`` or
  ``user.require(permission)``; the permission names are the keys of ``PERMISSIONS``.
- Passwords are hashed with stdlib scrypt into a self-describing string
  ``scrypt$16384$8$1$<salt b64>$<hash b64>``; a stored hash made with other parameters is
  re-hashed on the next successful login.
- ``authenticate`` says the same thing, after the same work (one scrypt), for an unknown
  user and a wrong password, so neither the message nor the time tells which names exist.
- API tokens (``fmt_…``) are shown once when made; only their sha256 is stored.
- There is always at least one enabled admin: removing, demoting or disabling the last one
  is refused (the admin rows are locked while checking, so two servers cannot race).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from engine.clock import Clock, SystemClock
from engine.errors import FlowmillError
from engine.store.sql import SqlRunStore
from engine.store.tables import api_tokens, users

__all__ = [
    "ROLES",
    "PERMISSIONS",
    "ALL_PERMISSIONS",
    "MIN_PASSWORD_LENGTH",
    "INITIAL_PASSWORD_FILE",
    "AuthError",
    "PermissionDenied",
    "UserError",
    "UserExists",
    "UserNotFound",
    "TokenNotFound",
    "User",
    "TokenInfo",
    "UserStore",
    "hash_password",
    "verify_password",
]

ROLES = ("admin", "editor", "operator", "viewer")

ALL_PERMISSIONS = (
    "flows.read",
    "flows.write",
    "jobs.read",
    "jobs.run",
    "jobs.steer",
    "schedules.read",
    "schedules.write",
    "connections.read",  # names only: connection settings and secrets are never shown
    "connections.write",
    "users.manage",
    "status.read",
)

_VIEWER = frozenset(
    {"flows.read", "jobs.read", "schedules.read", "status.read", "connections.read"}
)
_OPERATOR = _VIEWER | {"jobs.run", "jobs.steer"}
_EDITOR = _OPERATOR | {"flows.write", "schedules.write"}

PERMISSIONS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "admin": frozenset(ALL_PERMISSIONS),
        "editor": _EDITOR,
        "operator": _OPERATOR,
        "viewer": _VIEWER,
    }
)

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
MAX_LABEL_LENGTH = 200
INITIAL_PASSWORD_FILE = "initial-admin-password"
TOKEN_PREFIX = "fmt_"
TOKEN_TOUCH_INTERVAL = timedelta(minutes=1)  # last_used_at is written at most this often

# starts with a letter, digit or '_': never '.', '..' or a hidden name, because a user name
# is also the name of the user's file-drop home folder (DATA/drop/<name>)
_NAME = re.compile(r"[a-z0-9_][a-z0-9_.-]{0,63}")
_AUTH_FAILED = "wrong user name or password"
_TOKEN_FAILED = "invalid or revoked API token"

# scrypt: n=2**14, r=8 needs 128*n*r = 16 MiB per hash; verify allows stored hashes of up
# to n=2**17 (128 MiB) so the parameters can be raised later without locking anyone out.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_SALT_BYTES, _HASH_BYTES = 16, 32
_MAX_N = 2**17


# -- errors --------------------------------------------------------------------------------


class AuthError(FlowmillError):
    """Login or token refused. The message never says which part was wrong."""


class PermissionDenied(FlowmillError):
    """An authenticated user may not do this. ``user`` is the user's name (a str),
    ``role`` their role and ``permission`` the permission that was missing."""

    def __init__(self, user: str, role: str, permission: str) -> None:
        super().__init__(f"user {user} ({role}) may not {permission}")
        self.user = user
        self.role = role
        self.permission = permission


class UserError(FlowmillError):
    """A user operation that cannot be done: bad name, role or password, the last admin."""


class UserExists(UserError):
    def __init__(self, name: str) -> None:
        super().__init__(f"user {name!r} already exists")
        self.name = name


class UserNotFound(UserError):
    def __init__(self, name: str) -> None:
        super().__init__(f"user {name!r} does not exist")
        self.name = name


class TokenNotFound(UserError):
    def __init__(self, token_id: str) -> None:
        super().__init__(f"API token {token_id!r} does not exist")
        self.token_id = token_id


# -- values --------------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    name: str
    role: str
    created_at: datetime
    disabled: bool = False
    file_drop: bool = False  # may log in to the FTPS and WebDAV file-drop servers

    @property
    def permissions(self) -> frozenset[str]:
        """What the user may do now (nothing while disabled)."""
        return frozenset() if self.disabled else PERMISSIONS.get(self.role, frozenset())

    def can(self, permission: str) -> bool:
        """True if the user's role grants ``permission``; an unknown name is a bug
        (ValueError), never a silent "no"."""
        if permission not in ALL_PERMISSIONS:
            raise ValueError(f"unknown permission {permission!r}")
        return permission in self.permissions

    def require(self, permission: str) -> None:
        if not self.can(permission):
            raise PermissionDenied(self.name, self.role, permission)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "created_at": self.created_at.isoformat(),
            "disabled": self.disabled,
            "file_drop": self.file_drop,
            "permissions": sorted(self.permissions),
        }


@dataclass(frozen=True)
class TokenInfo:
    id: str
    user: str
    label: str
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user": self.user,
            "label": self.label,
            "created_at": self.created_at.isoformat(),
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
            "revoked": self.revoked,
        }


def _user(row: Any) -> User:
    return User(row.name, row.role, row.created_at, bool(row.disabled), bool(row.file_drop))


def _token(row: Any) -> TokenInfo:
    return TokenInfo(
        row.id, row.user, row.label, row.created_at, row.last_used_at, bool(row.revoked)
    )


# -- passwords -----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r, dklen=length
    )


def hash_password(password: str) -> str:
    """``scrypt$16384$8$1$<salt b64>$<hash b64>`` with a fresh random salt."""
    salt = os.urandom(_SALT_BYTES)
    digest = _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _HASH_BYTES)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        values = int(n), int(r), int(p), base64.b64decode(salt), base64.b64decode(digest)
    except (ValueError, TypeError):
        return None
    if scheme != "scrypt" or not (1 < values[0] <= _MAX_N and 0 < values[1] <= 32):
        return None
    if not (0 < values[2] <= 16 and values[3] and len(values[4]) >= 16):
        return None
    return values


def verify_password(password: str, encoded: str) -> bool:
    """True if ``password`` matches the stored hash (constant-time compare)."""
    parsed = _parse(encoded)
    if parsed is None:
        # Same work as a real check, so a broken row is not faster than a wrong password.
        _scrypt(password, b"\0" * _SALT_BYTES, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _HASH_BYTES)
        return False
    n, r, p, salt, digest = parsed
    return hmac.compare_digest(_scrypt(password, salt, n, r, p, len(digest)), digest)


def _needs_rehash(encoded: str) -> bool:
    parsed = _parse(encoded)
    return parsed is None or parsed[:3] != (_SCRYPT_N, _SCRYPT_R, _SCRYPT_P)


# Verified against for unknown users: well-formed, current parameters, matches nothing.
# Made without hashing, so the first unknown name costs exactly one scrypt, like all others.
_DUMMY_HASH = (
    f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}$"
    f"{_b64(os.urandom(_SALT_BYTES))}${_b64(os.urandom(_HASH_BYTES))}"
)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# -- the store -----------------------------------------------------------------------------


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UserError(
            f"user name {str(name)[:70]!r} is not allowed: use 1 to 64 lowercase letters, digits, "
            "'_', '.' or '-', starting with a letter, digit or '_'"
        )
    return name


def check_role(role: Any) -> str:
    if role not in ROLES:
        raise UserError(f"role {role!r} does not exist; roles are {', '.join(ROLES)}")
    return role


def check_password(password: Any, name: str | None = None) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password too short: it needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UserError(f"password too long: at most {MAX_PASSWORD_LENGTH} characters")
    if name is not None and password.lower() == name.lower():
        raise UserError("password must not be the user name")
    return password


class UserStore:
    """Users and their API tokens in the SQL store (SQLite, PostgreSQL or MariaDB)."""

    def __init__(self, store: SqlRunStore, clock: Clock | None = None) -> None:
        self.store = store
        self.clock = clock or SystemClock()

    # -- users ---------------------------------------------------------------------------

    def add(self, name: str, password: str, role: str, file_drop: bool = False) -> User:
        check_name(name)
        check_role(role)
        check_password(password, name)
        now = self.clock.now()
        values = {
            "name": name,
            "password_hash": hash_password(password),
            "role": role,
            "created_at": now,
            "updated_at": now,
            "disabled": False,
            "file_drop": file_drop,
        }
        try:
            self.store.transaction(lambda conn: conn.execute(sa.insert(users).values(values)))
        except IntegrityError as exc:
            raise UserExists(name) from exc
        return User(name, role, now, False, file_drop)

    def _row(self, conn: Connection, name: str, *, lock: bool = False) -> Any:
        stmt = sa.select(users).where(users.c.name == name)
        row = conn.execute(stmt.with_for_update() if lock else stmt).first()
        if row is None:
            raise UserNotFound(name)
        return row

    def get(self, name: str) -> User:
        return _user(self.store.transaction(lambda conn: self._row(conn, name), write=False))

    def list(self) -> list[User]:
        rows = self.store.transaction(
            lambda conn: conn.execute(sa.select(users).order_by(users.c.name)).all(), write=False
        )
        return [_user(r) for r in rows]

    def count(self) -> int:
        return int(
            self.store.transaction(
                lambda conn: conn.execute(sa.select(sa.func.count()).select_from(users)).scalar(),
                write=False,
            )
        )

    def set_password(self, name: str, password: str) -> None:
        check_password(password, name)
        encoded = hash_password(password)

        def work(conn: Connection) -> None:
            self._row(conn, name)
            conn.execute(
                sa.update(users)
                .where(users.c.name == name)
                .values(password_hash=encoded, updated_at=self.clock.now())
            )

        self.store.transaction(work)

    def set_role(self, name: str, role: str) -> User:
        check_role(role)

        def work(conn: Connection) -> Any:
            row = self._locked(conn, name)
            if row.role == "admin" and role != "admin":
                self._keep_an_admin(conn, name, f"make {name} {role}")
            conn.execute(
                sa.update(users)
                .where(users.c.name == name)
                .values(role=role, updated_at=self.clock.now())
            )
            return self._row(conn, name)

        return _user(self.store.transaction(work))

    def set_disabled(self, name: str, disabled: bool = True) -> User:
        """Disable (or enable again) a user: a disabled user can neither log in nor use
        a token, and has no permissions."""

        def work(conn: Connection) -> Any:
            row = self._locked(conn, name)
            if disabled and row.role == "admin":
                self._keep_an_admin(conn, name, f"disable {name}")
            conn.execute(
                sa.update(users)
                .where(users.c.name == name)
                .values(disabled=disabled, updated_at=self.clock.now())
            )
            return self._row(conn, name)

        return _user(self.store.transaction(work))

    def set_file_drop(self, name: str, allowed: bool = True) -> User:
        """Allow (or forbid) a user to log in to the FTPS and WebDAV file-drop servers."""

        def work(conn: Connection) -> Any:
            self._locked(conn, name)
            conn.execute(
                sa.update(users)
                .where(users.c.name == name)
                .values(file_drop=allowed, updated_at=self.clock.now())
            )
            return self._row(conn, name)

        return _user(self.store.transaction(work))

    def remove(self, name: str) -> None:
        """Delete a user and their API tokens; never the last enabled admin."""

        def work(conn: Connection) -> None:
            row = self._locked(conn, name)
            if row.role == "admin":
                self._keep_an_admin(conn, name, f"remove {name}")
            conn.execute(
                sa.update(api_tokens).where(api_tokens.c.user == name).values(revoked=True)
            )
            conn.execute(sa.delete(api_tokens).where(api_tokens.c.user == name))
            conn.execute(sa.delete(users).where(users.c.name == name))

        self.store.transaction(work)

    def _locked(self, conn: Connection, name: str) -> Any:
        """Lock every admin row (in name order), then the user's row, and return it.

        Every change that could leave no enabled admin goes through here, always in this
        order, so two sessions demoting or removing two admins at once wait for each
        other instead of both succeeding (SQLite serialises writers anyway).
        """
        conn.execute(
            sa.select(users.c.name)
            .where(users.c.role == "admin")
            .order_by(users.c.name)
            .with_for_update()
        ).all()
        return self._row(conn, name, lock=True)

    @staticmethod
    def _keep_an_admin(conn: Connection, name: str, action: str) -> None:
        """Refuse ``action`` unless another enabled admin remains (rows locked by _locked)."""
        others = conn.execute(
            sa.select(sa.func.count())
            .select_from(users)
            .where(users.c.role == "admin", users.c.name != name, ~users.c.disabled)
        ).scalar()
        if not others:
            raise UserError(f"cannot {action}: it is the last enabled admin")

    # -- logging in ----------------------------------------------------------------------

    def authenticate(self, name: str, password: str) -> User:
        """The user with this name and password, or AuthError (the same message after the
        same work for an unknown name and a wrong password)."""
        key = name.strip().lower() if isinstance(name, str) else ""
        given = password if isinstance(password, str) else ""
        row = None
        if _NAME.fullmatch(key):
            row = self.store.transaction(
                lambda conn: conn.execute(sa.select(users).where(users.c.name == key)).first(),
                write=False,
            )
        if row is None:
            verify_password(given, _DUMMY_HASH)
            raise AuthError(_AUTH_FAILED)
        if not verify_password(given, row.password_hash):
            raise AuthError(_AUTH_FAILED)
        if row.disabled:
            raise AuthError(f"user {row.name} is disabled")
        if _needs_rehash(row.password_hash):
            encoded = hash_password(given)
            self.store.transaction(
                lambda conn: conn.execute(
                    sa.update(users)
                    .where(users.c.name == row.name, users.c.password_hash == row.password_hash)
                    .values(password_hash=encoded)
                )
            )
        return _user(row)

    def authenticate_drop(self, name: str, password: str) -> User:
        """Like ``authenticate``, for the file-drop servers: only users allowed to drop."""
        user = self.authenticate(name, password)
        if not user.file_drop:
            raise AuthError(f"user {user.name} may not use the file-drop servers")
        return user

    def ensure_admin(self, data_dir: Path) -> str | None:
        """On first start (no users at all): create ``admin`` with a random password,
        write it to ``data_dir/initial-admin-password`` (mode 0600) and return it, for the
        caller to print once. Otherwise None. Safe when several servers start at once:
        only the one whose insert wins writes the file."""
        if self.count():
            return None
        password = secrets.token_urlsafe(18)
        try:
            self.add("admin", password, "admin")
        except UserExists:
            return None
        path = Path(data_dir) / INITIAL_PASSWORD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # left from an earlier database: it is stale now
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (password + "\n").encode("ascii"))
        finally:
            os.close(fd)
        return password

    # -- API tokens ----------------------------------------------------------------------

    def create_token(self, name: str, label: str = "") -> tuple[TokenInfo, str]:
        """A new API token for the user: its info and the token itself, which is never
        stored (only its sha256) and cannot be shown again."""
        if not isinstance(label, str) or len(label) > MAX_LABEL_LENGTH:
            raise UserError(f"token label: at most {MAX_LABEL_LENGTH} characters")
        if any(ord(c) < 32 or ord(c) == 127 for c in label):
            raise UserError("token label: no control characters")
        now = self.clock.now()
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        info = TokenInfo(secrets.token_hex(6), name, label, now, None, False)

        def work(conn: Connection) -> None:
            if self._row(conn, name).disabled:
                raise UserError(f"user {name} is disabled")
            conn.execute(
                sa.insert(api_tokens).values(
                    id=info.id,
                    user=name,
                    token_hash=_token_hash(token),
                    label=label,
                    created_at=now,
                    last_used_at=None,
                    revoked=False,
                )
            )

        self.store.transaction(work)
        return info, token

    def user_for_token(self, token: str) -> User:
        """The user an API token belongs to, or AuthError (unknown, revoked, or its user is
        disabled). Records the use, at most once a minute per token."""
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            raise AuthError(_TOKEN_FAILED)
        stmt = (
            sa.select(api_tokens.c.id, api_tokens.c.last_used_at, users)
            .join(users, users.c.name == api_tokens.c.user)
            .where(api_tokens.c.token_hash == _token_hash(token), ~api_tokens.c.revoked)
        )
        row = self.store.transaction(lambda conn: conn.execute(stmt).first(), write=False)
        if row is None or row.disabled:
            raise AuthError(_TOKEN_FAILED)
        now = self.clock.now()
        if row.last_used_at is None or now - row.last_used_at >= TOKEN_TOUCH_INTERVAL:
            self.store.transaction(
                lambda conn: conn.execute(
                    sa.update(api_tokens).where(api_tokens.c.id == row.id).values(last_used_at=now)
                )
            )
        return _user(row)

    def list_tokens(self, name: str | None = None) -> list[TokenInfo]:
        def work(conn: Connection) -> list[Any]:
            stmt = sa.select(api_tokens).order_by(api_tokens.c.created_at, api_tokens.c.id)
            if name is not None:
                self._row(conn, name)
                stmt = stmt.where(api_tokens.c.user == name)
            return list(conn.execute(stmt).all())

        return [_token(r) for r in self.store.transaction(work, write=False)]

    def revoke_token(self, token_id: str) -> None:
        """Revoke a token for good (revoking it again is fine)."""

        def work(conn: Connection) -> None:
            where = api_tokens.c.id == token_id
            if conn.execute(sa.select(api_tokens.c.id).where(where)).first() is None:
                raise TokenNotFound(token_id)
            conn.execute(sa.update(api_tokens).where(where).values(revoked=True))

        self.store.transaction(work)
