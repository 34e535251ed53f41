"""Users, roles, passwords and API tokens on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import base64
import hashlib
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine.access import users as users_module
from engine.access.users import (
    ALL_PERMISSIONS,
    PERMISSIONS,
    ROLES,
    AuthError,
    PermissionDenied,
    TokenNotFound,
    User,
    UserError,
    UserExists,
    UserNotFound,
    UserStore,
    hash_password,
    verify_password,
)
from engine.clock import FakeClock
from engine.errors import FlowmillError
from engine.service import Flowmill
from engine.store.factory import open_store
from engine.store.sql import SqlRunStore
from engine.store.tables import api_tokens, users

PW = "correct horse battery"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sql(db_url: str, data_dir: Path) -> Iterator[SqlRunStore]:
    store = open_store(db_url, data_dir)
    assert isinstance(store, SqlRunStore)
    yield store
    store.close()


@pytest.fixture
def us(sql: SqlRunStore, clock: FakeClock) -> UserStore:
    return UserStore(sql, clock)


def raw(sql: SqlRunStore, table: sa.Table) -> list[sa.Row]:
    with sql.engine.connect() as conn:
        return list(conn.execute(sa.select(table)).all())


# -- roles -----------------------------------------------------------------------------


def test_roles_and_permissions_matrix():
    viewer = {"flows.read", "jobs.read", "schedules.read", "status.read", "connections.read"}
    operator = viewer | {"jobs.run", "jobs.steer"}
    editor = operator | {"flows.write", "schedules.write"}
    assert ROLES == ("admin", "editor", "operator", "viewer")
    assert set(PERMISSIONS) == set(ROLES)
    assert PERMISSIONS["viewer"] == viewer
    assert PERMISSIONS["operator"] == operator
    assert PERMISSIONS["editor"] == editor
    assert PERMISSIONS["admin"] == set(ALL_PERMISSIONS)
    assert {"users.manage", "connections.write"} <= PERMISSIONS["admin"] - editor
    with pytest.raises(TypeError):
        PERMISSIONS["viewer"] = frozenset(ALL_PERMISSIONS)  # type: ignore[index]


@pytest.mark.parametrize("role", ROLES)
def test_can_and_require_follow_the_matrix(role: str, clock: FakeClock):
    user = User("ann", role, clock.now())
    for permission in ALL_PERMISSIONS:
        allowed = permission in PERMISSIONS[role]
        assert user.can(permission) is allowed
        if allowed:
            user.require(permission)
        else:
            with pytest.raises(PermissionDenied):
                user.require(permission)


def test_permission_denied_names_user_role_and_permission(clock: FakeClock):
    ann = User("ann", "viewer", clock.now())
    with pytest.raises(PermissionDenied) as caught:
        ann.require("jobs.steer")
    assert str(caught.value) == "user ann (viewer) may not jobs.steer"
    assert (caught.value.user, caught.value.role, caught.value.permission) == (
        "ann",
        "viewer",
        "jobs.steer",
    )
    assert isinstance(caught.value, FlowmillError)
    with pytest.raises(ValueError, match=r"unknown permission 'jobs\.stear'"):
        ann.can("jobs.stear")  # a typo in a check is a bug, never a silent "no"
    disabled = User("bob", "admin", clock.now(), disabled=True)
    assert not disabled.can("flows.read")
    assert disabled.to_dict()["permissions"] == []


# -- users -----------------------------------------------------------------------------


def test_add_get_list_and_to_dict(us: UserStore, clock: FakeClock):
    ann = us.add("ann", PW, "editor")
    assert ann == User("ann", "editor", clock.now(), False)
    us.add("bob.b-1_x", PW, "viewer")
    assert us.get("ann") == ann
    assert [u.name for u in us.list()] == ["ann", "bob.b-1_x"]
    assert us.count() == 2
    d = ann.to_dict()
    assert d == {
        "name": "ann",
        "role": "editor",
        "created_at": clock.now().isoformat(),
        "disabled": False,
        "file_drop": False,
        "permissions": sorted(PERMISSIONS["editor"]),
    }
    assert "scrypt" not in repr(d) and PW not in repr(d)
    with pytest.raises(UserNotFound, match="user 'carl' does not exist"):
        us.get("carl")


def test_duplicate_bad_name_bad_role_and_short_password(us: UserStore):
    us.add("ann", PW, "viewer")
    with pytest.raises(UserExists, match="user 'ann' already exists"):
        us.add("ann", PW, "admin")
    for name in ("Ann", "", "a" * 65, "ann smith", "ann\n", "../x", "änn", "ann:x"):
        with pytest.raises(UserError, match="lowercase letters"):
            us.add(name, PW, "viewer")
    us.add("a" * 64, PW, "viewer")
    with pytest.raises(UserError, match="role 'root' does not exist; roles are admin, editor"):
        us.add("carl", PW, "root")
    with pytest.raises(UserError, match="at least 10 characters"):
        us.add("carl", "123456789", "viewer")
    with pytest.raises(UserError, match="must not be the user name"):
        us.add("carlcarlcarl", "CarlCarlCarl", "viewer")
    with pytest.raises(UserError, match="at least 10 characters"):
        us.set_password("ann", "short")
    with pytest.raises(UserNotFound):
        us.set_password("nobody", PW)
    assert [u.name for u in us.list()] == ["a" * 64, "ann"]


def test_authenticate_accepts_the_password_and_refuses_alike_otherwise(
    us: UserStore, monkeypatch: pytest.MonkeyPatch
):
    us.add("ann", PW, "operator")
    assert us.authenticate("ann", PW).role == "operator"
    assert us.authenticate(" Ann ", PW).name == "ann"  # login forms: case and spaces

    calls = []
    real = users_module._scrypt
    monkeypatch.setattr(
        users_module,
        "_scrypt",
        lambda *a: calls.append(1) or real(*a),  # type: ignore[func-returns-value]
    )
    messages = []
    for name, password in (("ann", PW + "x"), ("nobody", PW), ("", ""), ("Bad Name!", PW)):
        calls.clear()
        with pytest.raises(AuthError) as caught:
            us.authenticate(name, password)
        messages.append(str(caught.value))
        assert len(calls) == 1, "same work (one scrypt) for unknown names and wrong passwords"
    assert set(messages) == {"wrong user name or password"}


def test_disabled_user_cannot_log_in_or_use_a_token(us: UserStore):
    us.add("root", PW, "admin")
    us.add("ann", PW, "editor")
    _, token = us.create_token("ann")
    assert us.set_disabled("ann").disabled
    with pytest.raises(AuthError):
        us.authenticate("ann", PW)
    with pytest.raises(AuthError):
        us.user_for_token(token)
    with pytest.raises(UserError, match="disabled"):
        us.create_token("ann")
    assert not us.set_disabled("ann", False).disabled
    assert us.authenticate("ann", PW).name == "ann"
    assert us.user_for_token(token).name == "ann"


def test_hashes_are_salted_scrypt_and_never_the_password(us: UserStore, sql: SqlRunStore):
    us.add("ann", PW, "viewer")
    us.add("bob", PW, "viewer")
    stored = {r.name: r.password_hash for r in raw(sql, users)}
    for value in stored.values():
        assert value.startswith("scrypt$16384$8$1$")
        assert PW not in value
        assert len(value.split("$")) == 6
    assert stored["ann"] != stored["bob"]
    assert verify_password(PW, stored["ann"]) and not verify_password(PW + "!", stored["ann"])
    assert hash_password(PW) != hash_password(PW)
    assert not verify_password(PW, "garbage") and not verify_password(PW, "scrypt$1$1$1$$")

    us.set_password("ann", "another long one")
    with pytest.raises(AuthError):
        us.authenticate("ann", PW)
    assert us.authenticate("ann", "another long one").name == "ann"
    assert {r.name: r.password_hash for r in raw(sql, users)}["ann"] != stored["ann"]


def test_a_hash_with_old_parameters_is_upgraded_on_login(us: UserStore, sql: SqlRunStore):
    us.add("ann", PW, "viewer")
    salt = b"0123456789abcdef"
    old = hashlib.scrypt(PW.encode(), salt=salt, n=2**12, r=8, p=1, dklen=32)
    weak = f"scrypt$4096$8$1${base64.b64encode(salt).decode()}${base64.b64encode(old).decode()}"
    sql.transaction(
        lambda conn: conn.execute(
            sa.update(users).where(users.c.name == "ann").values(password_hash=weak)
        )
    )
    assert us.authenticate("ann", PW).name == "ann"
    [row] = raw(sql, users)
    assert row.password_hash.startswith("scrypt$16384$8$1$")
    assert us.authenticate("ann", PW).name == "ann"


def test_set_role(us: UserStore):
    us.add("root", PW, "admin")
    us.add("ann", PW, "viewer")
    assert us.set_role("ann", "operator").role == "operator"
    assert us.get("ann").can("jobs.steer")
    with pytest.raises(UserError, match="role 'god' does not exist"):
        us.set_role("ann", "god")
    with pytest.raises(UserNotFound):
        us.set_role("nobody", "viewer")


def test_the_last_enabled_admin_stays(us: UserStore):
    us.add("root", PW, "admin")
    us.add("ann", PW, "viewer")
    for attempt in (
        lambda: us.remove("root"),
        lambda: us.set_role("root", "editor"),
        lambda: us.set_disabled("root"),
    ):
        with pytest.raises(UserError, match="last enabled admin"):
            attempt()
    us.add("eve", PW, "admin")
    us.set_disabled("eve")
    with pytest.raises(UserError, match="cannot remove root: it is the last enabled admin"):
        us.remove("root")  # a disabled admin does not count
    us.set_disabled("eve", False)
    us.remove("root")
    assert [(u.name, u.role) for u in us.list()] == [("ann", "viewer"), ("eve", "admin")]
    us.remove("ann")
    with pytest.raises(UserNotFound):
        us.remove("ann")
    assert us.count() == 1


def test_two_admins_removed_at_once_leave_one(us: UserStore):
    us.add("a1", PW, "admin")
    us.add("a2", PW, "admin")
    barrier = threading.Barrier(2)
    outcome: dict[str, str] = {}

    def remove(name: str) -> None:
        barrier.wait()
        try:
            us.remove(name)
            outcome[name] = "removed"
        except UserError:
            outcome[name] = "refused"

    threads = [threading.Thread(target=remove, args=(n,)) for n in ("a1", "a2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcome.values()) == ["refused", "removed"]
    assert [u.role for u in us.list()] == ["admin"]


# -- API tokens --------------------------------------------------------------------------


def test_tokens_are_shown_once_and_stored_as_sha256(us: UserStore, sql: SqlRunStore, clock):
    us.add("ann", PW, "operator")
    info, token = us.create_token("ann", "nightly script")
    assert token.startswith("fmt_") and len(token) > 40
    assert (info.user, info.label, info.revoked, info.last_used_at) == (
        "ann",
        "nightly script",
        False,
        None,
    )
    [row] = raw(sql, api_tokens)
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert all(token not in str(value) for value in row)
    assert info.to_dict() == {
        "id": info.id,
        "user": "ann",
        "label": "nightly script",
        "created_at": clock.now().isoformat(),
        "last_used_at": None,
        "revoked": False,
    }
    assert us.list_tokens() == [info] == us.list_tokens("ann")
    assert token not in repr(us.list_tokens())
    _, other = us.create_token("ann")
    assert other != token
    with pytest.raises(UserNotFound):
        us.create_token("nobody")
    with pytest.raises(UserNotFound):
        us.list_tokens("nobody")
    with pytest.raises(UserError, match="control characters"):
        us.create_token("ann", "a\nb")


def test_token_use_is_recorded_at_most_once_a_minute(us: UserStore, clock: FakeClock):
    us.add("ann", PW, "operator")
    _, token = us.create_token("ann")
    first = clock.now()
    assert us.user_for_token(token) == us.get("ann")
    clock.advance(30)
    us.user_for_token(token)
    [seen] = us.list_tokens("ann")
    assert seen.last_used_at == first
    clock.advance(31)
    us.user_for_token(token)
    [seen] = us.list_tokens("ann")
    assert seen.last_used_at == clock.now()


def test_revoked_unknown_and_malformed_tokens_are_refused(us: UserStore, clock: FakeClock):
    us.add("ann", PW, "operator")
    info, token = us.create_token("ann")
    clock.advance(1)
    _, kept = us.create_token("ann")
    us.revoke_token(info.id)
    us.revoke_token(info.id)  # again: fine
    messages = set()
    for bad in (token, "fmt_" + "A" * 43, token[:-1], "", "Bearer " + kept, None, "x" * 10_000):
        with pytest.raises(AuthError) as caught:
            us.user_for_token(bad)  # type: ignore[arg-type]
        messages.add(str(caught.value))
    assert messages == {"invalid or revoked API token"}
    assert us.user_for_token(kept).name == "ann"
    assert [t.revoked for t in us.list_tokens()] == [True, False]  # oldest first
    with pytest.raises(TokenNotFound):
        us.revoke_token("nope")


def test_removing_a_user_ends_their_tokens(us: UserStore, sql: SqlRunStore):
    us.add("root", PW, "admin")
    us.add("ann", PW, "operator")
    _, token = us.create_token("ann")
    _, root_token = us.create_token("root")
    us.remove("ann")
    with pytest.raises(AuthError):
        us.user_for_token(token)
    assert [r.user for r in raw(sql, api_tokens)] == ["root"]
    us.add("ann", PW, "admin")  # the same name again gets nothing of the old user's
    with pytest.raises(AuthError):
        us.user_for_token(token)
    assert us.user_for_token(root_token).name == "root"


# -- first start -------------------------------------------------------------------------


def test_ensure_admin_creates_one_admin_once(us: UserStore, tmp_path: Path):
    data = tmp_path / "fresh"
    data.mkdir()
    password = us.ensure_admin(data)
    assert password and len(password) >= 20
    path = data / "initial-admin-password"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == password + "\n"
    admin = us.authenticate("admin", password)
    assert (admin.name, admin.role) == ("admin", "admin")
    assert us.ensure_admin(data) is None
    assert path.read_text() == password + "\n"
    assert us.count() == 1


def test_ensure_admin_does_nothing_when_users_exist(us: UserStore, tmp_path: Path):
    us.add("ann", PW, "admin")
    assert us.ensure_admin(tmp_path) is None
    assert not (tmp_path / "initial-admin-password").exists()


def test_ensure_admin_replaces_a_stale_password_file(us: UserStore, tmp_path: Path):
    stale = tmp_path / "initial-admin-password"
    stale.write_text("from an older database\n")
    stale.chmod(0o644)
    password = us.ensure_admin(tmp_path)
    assert stale.read_text() == f"{password}\n"
    assert stat.S_IMODE(stale.stat().st_mode) == 0o600


def test_service_layer_exposes_the_user_store(data_dir: Path):
    with Flowmill.open(data_dir) as app:
        assert app.users is app.users
        password = app.ensure_admin()
        assert password is not None
        assert app.ensure_admin() is None
        assert app.users.authenticate("admin", password).can("users.manage")


def test_migration_0003_goes_down_and_up_again(sql: SqlRunStore):
    from alembic import command

    from engine.store.sql import alembic_config, upgrade

    with sql.engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0002")
    assert not {"users", "api_tokens"} & set(sa.inspect(sql.engine).get_table_names())
    upgrade(sql.engine)
    assert UserStore(sql).add("ann", PW, "admin").name == "ann"


def test_only_drop_users_log_in_to_the_file_servers(us: UserStore) -> None:
    us.add("scanner", "scanner password 1", "operator", file_drop=True)
    us.add("clerk", "clerk password 123", "operator")
    assert us.authenticate_drop("scanner", "scanner password 1").file_drop
    with pytest.raises(AuthError, match="may not use the file-drop servers"):
        us.authenticate_drop("clerk", "clerk password 123")
    with pytest.raises(AuthError):
        us.authenticate_drop("scanner", "wrong password 123")
    us.set_file_drop("clerk")
    assert us.authenticate_drop("clerk", "clerk password 123").name == "clerk"
    us.set_file_drop("scanner", False)
    with pytest.raises(AuthError):
        us.authenticate_drop("scanner", "scanner password 1")


@pytest.mark.parametrize("name", [".", "..", ".hidden", "-x"])
def test_names_that_could_be_special_folders_are_refused(us: UserStore, name: str) -> None:
    with pytest.raises(UserError, match="not allowed"):
        us.add(name, "a long password 1", "operator", file_drop=True)
