"""The FTPS file-drop server against real clients: Python's ftplib and curl.

Each test starts an ``FtpsServer`` on an ephemeral port with a temporary data folder and
one drop user (``drop`` / ``secret pw 123``), then acts as an FTPS client would.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from engine.errors import FlowmillError
from servers.drops import DropEvent, DropQueue, drop_home
from servers.ftps import UPLOAD_PREFIX, FtpsServer
from tests.conftest import DEADLINE, require_program

USER, PASSWORD = "drop", "secret pw 123"


def drop_user_only(user: str, password: str) -> bool:
    return (user, password) == (USER, PASSWORD)


@dataclass
class Site:
    server: FtpsServer
    drops: DropQueue
    data_dir: Path

    @property
    def home(self) -> Path:
        return drop_home(self.data_dir, USER)

    @property
    def cert(self) -> Path:
        return self.data_dir / "tls" / "cert.pem"

    def client(self, user: str = USER, password: str = PASSWORD) -> ftplib.FTP_TLS:
        """Logged in over TLS, data channel protected, binary mode."""
        ftp = self.connect()
        ftp.login(user, password)
        ftp.prot_p()
        ftp.voidcmd("TYPE I")
        return ftp

    def connect(self) -> ftplib.FTP_TLS:
        """Control channel secured with AUTH TLS; not logged in."""
        ftp = ftplib.FTP_TLS(context=ssl.create_default_context(cafile=self.cert), timeout=10)
        ftp.connect(*self.server.address)
        ftp.auth()
        return ftp

    def leftovers(self) -> list[Path]:
        return [p for p in self.data_dir.rglob(f"{UPLOAD_PREFIX}*")]


@pytest.fixture
def ftps_site(tmp_path: Path) -> Iterator[Callable[..., Site]]:
    started: list[FtpsServer] = []

    def start(capacity: int = 100, **options: object) -> Site:
        drops = DropQueue(capacity)
        data_dir = tmp_path / "data"
        options.setdefault("authenticate", drop_user_only)
        server = FtpsServer(
            data_dir=data_dir, drops=drops, port=0, login_failure_delay=0.1, **options
        )
        server.start()
        started.append(server)
        return Site(server, drops, data_dir)

    yield start
    for server in started:
        server.stop()


def upload(ftp: ftplib.FTP_TLS, name: str, data: bytes) -> str:
    return ftp.storbinary(f"STOR {name}", io.BytesIO(data))


def wait_until(condition: Callable[[], object], seconds: float = DEADLINE) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"", p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


# -- uploads fire events -----------------------------------------------------------------


def test_upload_with_ftplib_fires_one_event_with_the_final_file(ftps_site):
    site = ftps_site()
    data = b"sku;qty\nA-1;3\n"
    with site.client() as ftp:
        ftp.mkd("in")
        assert upload(ftp, "in/orders.csv", data).startswith("226")

    event = site.drops.wait(DEADLINE)
    assert isinstance(event, DropEvent)
    final = site.home / "in" / "orders.csv"
    assert (event.path, event.name, event.size, event.user, event.source) == (
        str(final),
        "in/orders.csv",
        len(data),
        USER,
        "ftps",
    )
    assert event.sha256 == hashlib.sha256(data).hexdigest()
    assert final.read_bytes() == data
    assert site.drops.take() == []
    assert site.leftovers() == []
    status = site.server.describe()
    assert status["uploads_received"] == 1
    assert (status["host"], status["port"]) == site.server.address


def test_upload_with_curl_ssl_reqd_fires_one_event(ftps_site, tmp_path):
    site = ftps_site()
    (site.home / "in").mkdir()
    report = tmp_path / "report.csv"
    report.write_bytes(b"id,total\n1,9.50\n" * 1000)
    host, port = site.server.address
    done = subprocess.run(
        [require_program("curl"), "--silent", "--show-error", "--ssl-reqd",
         "--cacert", str(site.cert),
         "--user", f"{USER}:{PASSWORD}", "-T", str(report), f"ftp://{host}:{port}/in/"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    event = site.drops.wait(DEADLINE)
    assert event is not None and event.name == "in/report.csv"
    assert event.size == report.stat().st_size
    assert event.sha256 == hashlib.sha256(report.read_bytes()).hexdigest()
    assert (site.home / "in" / "report.csv").read_bytes() == report.read_bytes()
    assert site.drops.take() == [] and site.leftovers() == []


def test_upload_in_progress_is_invisible_until_it_completes(ftps_site):
    site = ftps_site()
    with site.client() as ftp, site.client() as watcher:
        conn = ftp.transfercmd("STOR big.bin")
        conn.sendall(b"a" * 200_000)
        wait_until(lambda: any(p.stat().st_size > 0 for p in site.leftovers()))

        assert site.drops.take() == []
        assert not (site.home / "big.bin").exists()
        assert watcher.nlst() == []  # the temporary name is hidden from listings
        temp = site.leftovers()[0].name
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            watcher.retrbinary(f"RETR {temp}", lambda _: None)
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            watcher.delete(temp)

        conn.sendall(b"b" * 100)
        conn.unwrap()
        conn.close()
        assert ftp.voidresp().startswith("226")

    event = site.drops.wait(DEADLINE)
    assert event is not None and (event.name, event.size) == ("big.bin", 200_100)
    assert site.leftovers() == []


# -- aborted uploads fire nothing -----------------------------------------------------------


def test_upload_aborted_half_way_with_abor_fires_nothing(ftps_site):
    site = ftps_site()
    with site.client() as ftp:
        conn = ftp.transfercmd("STOR orders.csv")
        conn.sendall(b"x" * 100_000)
        wait_until(lambda: any(p.stat().st_size > 0 for p in site.leftovers()))
        ftp.sock.sendall(b"ABOR\r\n")
        assert ftp.getmultiline().startswith("426")
        assert ftp.getmultiline().startswith("226")
        conn.close()
        wait_until(lambda: site.leftovers() == [])
        assert ftp.voidcmd("NOOP").startswith("200")  # the session is still usable

    assert site.drops.take() == []
    assert not (site.home / "orders.csv").exists()
    assert site.server.describe()["uploads_incomplete"] == 1


def test_data_connection_cut_without_tls_close_fires_nothing(ftps_site):
    site = ftps_site()
    with site.client() as ftp:
        conn = ftp.transfercmd("STOR orders.csv")
        conn.sendall(b"x" * 100_000)
        # end the TCP stream as a crashed client or a cut cable would: no close_notify
        socket.socket(fileno=conn.detach()).close()
        with pytest.raises(ftplib.error_temp, match=r"^426"):
            ftp.voidresp()

    assert site.drops.take() == []
    assert not (site.home / "orders.csv").exists()
    assert site.leftovers() == []


def test_data_connection_reset_fires_nothing(ftps_site):
    site = ftps_site()
    with site.client() as ftp:
        conn = ftp.transfercmd("STOR orders.csv")
        conn.sendall(b"x" * 100_000)
        raw = socket.socket(fileno=conn.detach())
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()  # RST
        with pytest.raises(ftplib.error_temp, match=r"^426"):
            ftp.voidresp()

    assert site.drops.take() == []
    assert not (site.home / "orders.csv").exists()
    assert site.leftovers() == []


def test_client_disconnecting_mid_upload_leaves_nothing(ftps_site):
    site = ftps_site()
    ftp = site.client()
    conn = ftp.transfercmd("STOR orders.csv")
    conn.sendall(b"x" * 50_000)
    wait_until(lambda: any(p.stat().st_size > 0 for p in site.leftovers()))
    socket.socket(fileno=ftp.sock.detach()).close()
    socket.socket(fileno=conn.detach()).close()

    wait_until(lambda: site.leftovers() == [])
    assert site.drops.take() == []
    assert not (site.home / "orders.csv").exists()


# -- busy: a full queue answers 421 ---------------------------------------------------------


def test_full_drop_queue_answers_421_and_keeps_no_file(ftps_site):
    site = ftps_site(capacity=1)
    with site.client() as ftp:
        upload(ftp, "first.csv", b"1")
        with pytest.raises(ftplib.error_temp, match=r"^421"):
            upload(ftp, "second.csv", b"2")
        with pytest.raises((EOFError, OSError)):  # 421: the server closed the session
            ftp.voidcmd("NOOP")

    assert [e.name for e in site.drops.take()] == ["first.csv"]
    assert not (site.home / "second.csv").exists()
    assert site.leftovers() == []
    assert site.server.describe()["uploads_refused_busy"] == 1

    with site.client() as ftp:  # room again: the retry is accepted
        upload(ftp, "second.csv", b"2")
    assert [e.name for e in site.drops.take()] == ["second.csv"]


def test_burst_of_1000_uploads_each_fires_once_or_gets_421(ftps_site):
    site = ftps_site(capacity=100)
    outcome: dict[str, str] = {}
    events: list[DropEvent] = []
    refused = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def consume() -> None:  # a slow batch server: drains only after 100 more refusals
        drained_at = 0
        while not stop.is_set():
            time.sleep(0.02)
            with lock:
                due = refused[0] >= drained_at + 100
                drained_at = refused[0] if due else drained_at
            if due:
                events.extend(site.drops.take(1000))

    def client(worker: int) -> None:
        ftp = site.client()
        for i in range(250):
            name = f"w{worker}-{i:03}.csv"
            try:
                outcome[name] = upload(ftp, name, f"{worker},{i}\n".encode())[:3]
            except ftplib.error_temp as err:
                outcome[name] = str(err)[:3]
                with lock:
                    refused[0] += 1
                ftp.close()
                ftp = site.client()
        ftp.quit()

    for i in range(40):  # warm up before measuring memory
        with site.client() as ftp:
            upload(ftp, f"warm-{i}.csv", b"w")
    site.drops.take(1000)
    process = psutil.Process()
    rss_before = process.memory_info().rss

    consumer = threading.Thread(target=consume)
    consumer.start()
    workers = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=240)
    stop.set()
    consumer.join()
    events.extend(site.drops.take(1000))
    rss_growth = process.memory_info().rss - rss_before

    assert len(outcome) == 1000
    assert set(outcome.values()) == {"226", "421"}
    accepted = {name for name, code in outcome.items() if code == "226"}
    assert len(accepted) >= 100 and refused[0] >= 100
    names = [e.name for e in events]
    assert len(names) == len(set(names))  # exactly one event per accepted upload
    assert set(names) == accepted
    on_disk = {p.name for p in site.home.iterdir()} - {f"warm-{i}.csv" for i in range(40)}
    assert on_disk == accepted  # a refused upload leaves no file
    assert site.leftovers() == []
    status = site.server.describe()
    assert status["uploads_received"] == 40 + len(accepted)
    assert status["uploads_refused_busy"] == 1000 - len(accepted)
    assert rss_growth < 30 * 2**20, f"RSS grew by {rss_growth / 2**20:.1f} MiB"


def test_stop_discards_uploads_in_progress_and_closes_the_port(ftps_site):
    site = ftps_site()
    ftp = site.client()
    conn = ftp.transfercmd("STOR orders.csv")
    conn.sendall(b"x" * 50_000)
    wait_until(lambda: any(p.stat().st_size > 0 for p in site.leftovers()))

    site.server.stop()

    assert site.leftovers() == []
    assert site.drops.take() == []
    assert not (site.home / "orders.csv").exists()
    assert site.server.describe()["running"] is False
    with pytest.raises(OSError):
        socket.create_connection(site.server.address, timeout=2).close()
    conn.close()
    ftp.sock.close()


# -- refusals: TLS, login, paths, data connections ---------------------------------------------


def test_plain_text_user_before_auth_tls_is_refused(ftps_site):
    site = ftps_site()
    with ftplib.FTP(timeout=10) as ftp:
        ftp.connect(*site.server.address)
        with pytest.raises(ftplib.error_perm, match=r"^550 SSL/TLS required"):
            ftp.login(USER, PASSWORD)


def test_clear_data_channel_is_refused(ftps_site):
    site = ftps_site()
    with site.client() as ftp:
        ftp.prot_c()
        with pytest.raises(ftplib.error_perm, match=r"^550 SSL/TLS required on the data"):
            upload(ftp, "clear.csv", b"x")
    assert site.drops.take() == []


def test_anonymous_login_is_refused(ftps_site):
    calls = []

    def authenticate(user: str, password: str) -> bool:
        calls.append(user)
        return True  # even a store that would say yes

    site = ftps_site(authenticate=authenticate)
    for name in ("anonymous", "ftp"):
        with site.connect() as ftp, pytest.raises(ftplib.error_perm, match=r"^530"):
            ftp.login(name, "guest@example.com")
    assert calls == []


def test_wrong_password_is_refused_after_the_failure_delay(ftps_site):
    site = ftps_site()
    with site.connect() as ftp:
        started = time.monotonic()
        with pytest.raises(ftplib.error_perm, match=r"^530 Authentication failed"):
            ftp.login(USER, "wrong")
        assert time.monotonic() - started >= 0.1
        ftp.login(USER, PASSWORD)  # the session may try again


def test_authenticate_raising_counts_as_refusal(ftps_site):
    def authenticate(user: str, password: str) -> bool:
        raise RuntimeError("user store unreachable")

    site = ftps_site(authenticate=authenticate)
    with site.connect() as ftp, pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.login(USER, PASSWORD)


def test_slow_login_does_not_stall_other_sessions(ftps_site):
    entered, release = threading.Event(), threading.Event()

    def authenticate(user: str, password: str) -> bool:
        if user == "slow":
            entered.set()
            release.wait(DEADLINE)  # a password hash and a database round trip, exaggerated
        return drop_user_only(user, password)

    site = ftps_site(authenticate=authenticate)
    slow = site.connect()
    slow.sendcmd("USER slow")
    slow.putcmd(f"PASS {PASSWORD}")
    assert entered.wait(DEADLINE)
    try:
        with site.client() as ftp:
            started = time.monotonic()
            upload(ftp, "a.csv", b"x")
            assert time.monotonic() - started < DEADLINE / 2  # not after the slow login
    finally:
        release.set()
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        slow.getresp()
    slow.close()


def test_user_without_drop_flag_is_refused(ftps_site):
    # the wiring passes only drop users; a truthy non-True answer is no yes either
    site = ftps_site(authenticate=lambda u, p: "admin" if u == "admin" else u == USER)
    with site.connect() as ftp, pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.login("admin", PASSWORD)


def test_user_names_that_are_not_folder_names_are_refused(ftps_site):
    site = ftps_site(authenticate=lambda u, p: True)
    for name in ("..", ".", "a/b", "x\\y"):
        with site.connect() as ftp, pytest.raises(ftplib.error_perm, match=r"^530"):
            ftp.login(name, PASSWORD)
    assert not (site.data_dir / "drop" / "a").exists()


def test_login_name_is_matched_case_insensitively_like_the_user_store(ftps_site):
    site = ftps_site(authenticate=lambda u, p: (u.strip().lower(), p) == (USER, PASSWORD))
    with site.client(user="DROP") as ftp:
        upload(ftp, "x.csv", b"x")
    event = site.drops.wait(DEADLINE)
    assert event is not None and event.user == USER
    assert event.path == str(site.home / "x.csv")


def test_retr_of_a_parent_path_stays_in_the_home(ftps_site):
    site = ftps_site()
    secret = site.home.parent / "x"
    secret.write_text("not yours")
    received: list[bytes] = []
    with site.client() as ftp:
        for path in ("../x", "/../x", "../../drop/x", "..%2fx"):
            with pytest.raises(ftplib.error_perm, match=r"^550"):
                ftp.retrbinary(f"RETR {path}", received.append)
    assert received == []
    assert secret.read_text() == "not yours"


def test_cwd_above_the_root_stays_at_the_root(ftps_site):
    site = ftps_site()
    (site.data_dir / "drop" / "someone-else").mkdir(parents=True)
    (site.home / "mine.csv").write_text("x")
    process_cwd = os.getcwd()
    with site.client() as ftp:
        ftp.cwd("/..")
        assert ftp.pwd() == "/"
        ftp.cwd("../../..")
        assert ftp.pwd() == "/"
        assert ftp.nlst() == ["mine.csv"]
        ftp.mkd("sub")
        ftp.cwd("sub")
        assert ftp.pwd() == "/sub"
        assert os.getcwd() == process_cwd  # CWD never moves the server process


def test_symlink_out_of_the_home_is_not_followed(ftps_site):
    site = ftps_site()
    outside = site.data_dir / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (site.home / "elsewhere").symlink_to(outside, target_is_directory=True)
    (site.home / "secret.txt").symlink_to(outside / "secret.txt")
    before = snapshot(outside)

    with site.client() as ftp:
        for command in (
            lambda: ftp.retrbinary("RETR secret.txt", lambda _: None),
            lambda: ftp.retrbinary("RETR elsewhere/secret.txt", lambda _: None),
            lambda: ftp.cwd("elsewhere"),
            lambda: ftp.nlst("elsewhere"),
            lambda: upload(ftp, "elsewhere/planted.txt", b"x"),
            lambda: upload(ftp, "secret.txt", b"overwritten"),
            lambda: ftp.mkd("elsewhere/new"),
            lambda: ftp.delete("secret.txt"),
            lambda: ftp.rename("secret.txt", "mine.txt"),
            lambda: ftp.rename("elsewhere", "mine"),
        ):
            with pytest.raises(ftplib.error_perm, match=r"^550"):
                command()

    assert snapshot(outside) == before
    assert site.drops.take() == []
    assert site.leftovers() == []


def test_port_to_a_foreign_address_is_refused(ftps_site):
    site = ftps_site()
    with site.client() as ftp:
        with pytest.raises(ftplib.error_perm, match=r"^501 Rejected data connection to foreign"):
            ftp.sendcmd("PORT 10,0,0,1,200,10")
        with pytest.raises(ftplib.error_perm, match=r"^501 Rejected data connection to foreign"):
            ftp.sendcmd("EPRT |1|192.0.2.7|5000|")
        assert ftp.voidcmd("NOOP").startswith("200")


def test_resume_append_and_unique_store_are_refused(ftps_site):
    site = ftps_site()
    (site.home / "a.csv").write_text("1\n")
    with site.client() as ftp:
        ftp.sendcmd("REST 2")
        with pytest.raises(ftplib.error_perm, match=r"^554"):
            upload(ftp, "a.csv", b"2\n")
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            ftp.storbinary("APPE a.csv", io.BytesIO(b"2\n"))
        with pytest.raises(ftplib.error_perm, match=r"^500"):
            ftp.sendcmd("STOU")
        with pytest.raises(ftplib.error_perm, match=r"^500"):
            ftp.sendcmd("SITE CHMOD 777 a.csv")
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            upload(ftp, f"{UPLOAD_PREFIX}mine", b"x")
    assert (site.home / "a.csv").read_text() == "1\n"
    assert site.drops.take() == []


def test_listing_an_empty_folder_works_every_time(ftps_site):
    # pyftpdlib alone ends an empty listing before the client's TLS handshake
    site = ftps_site()
    with site.client() as ftp:
        for _ in range(100):
            assert ftp.nlst() == []
            assert list(ftp.mlsd()) == []
        assert ftp.voidcmd("NOOP").startswith("200")


def test_download_delete_and_rename_work_in_the_home(ftps_site):
    site = ftps_site()
    with site.client() as ftp:
        upload(ftp, "a.csv", b"abc")
        got: list[bytes] = []
        ftp.retrbinary("RETR a.csv", got.append)
        assert b"".join(got) == b"abc"
        ftp.rename("a.csv", "b.csv")
        ftp.delete("b.csv")
        ftp.mkd("sub")
        ftp.rmd("sub")
    assert [e.name for e in site.drops.take()] == ["a.csv"]  # renames fire nothing
    assert list(site.home.iterdir()) == []


# -- configuration ---------------------------------------------------------------------------


def test_passive_ports_come_from_the_configured_range(ftps_site):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        low = min(probe.getsockname()[1], 60000)
    ports = range(low, low + 20)
    site = ftps_site(passive_ports=ports)
    with site.client() as ftp:
        for _ in range(3):
            _host, port = ftp.makepasv()
            assert port in ports
        upload(ftp, "a.csv", b"x")
    assert site.drops.wait(DEADLINE) is not None


def test_connections_per_address_are_limited(ftps_site):
    site = ftps_site(max_cons_per_ip=2)
    with site.client() as first, site.client():
        assert site.server.describe()["connections"] == 2
        third = socket.create_connection(site.server.address, timeout=10)
        with third:
            assert third.recv(200).startswith(b"421")
        assert first.voidcmd("NOOP").startswith("200")


def test_start_names_the_address_it_cannot_bind(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = FtpsServer(
            data_dir=tmp_path, authenticate=drop_user_only, drops=DropQueue(), port=port
        )
        with pytest.raises(FlowmillError, match=f"127.0.0.1:{port}"):
            server.start()
    server.stop()  # nothing started: a no-op


def test_address_comes_from_the_environment_or_defaults(tmp_path, monkeypatch):
    def server() -> FtpsServer:
        return FtpsServer(data_dir=tmp_path, authenticate=drop_user_only, drops=DropQueue())

    monkeypatch.delenv("FLOWMILL_FTPS_HOST", raising=False)
    monkeypatch.delenv("FLOWMILL_FTPS_PORT", raising=False)
    assert server().address == ("127.0.0.1", 2121)
    monkeypatch.setenv("FLOWMILL_FTPS_HOST", "0.0.0.0")
    monkeypatch.setenv("FLOWMILL_FTPS_PORT", "2990")
    assert server().address == ("0.0.0.0", 2990)
    monkeypatch.setenv("FLOWMILL_FTPS_PORT", "ftp")
    with pytest.raises(FlowmillError, match="FLOWMILL_FTPS_PORT"):
        server()


def test_self_signed_certificate_is_made_on_first_start_and_reused(ftps_site):
    site = ftps_site()
    first = site.cert.read_bytes()
    site.server.stop()
    again = FtpsServer(
        data_dir=site.data_dir, authenticate=drop_user_only, drops=site.drops, port=0
    )
    again.start()
    try:
        assert site.cert.read_bytes() == first
        with Site(again, site.drops, site.data_dir).client() as ftp:
            upload(ftp, "a.csv", b"x")
    finally:
        again.stop()
    assert site.drops.wait(DEADLINE) is not None


def test_stale_temporaries_from_a_crash_are_removed_on_start(tmp_path):
    home = tmp_path / "drop" / USER
    home.mkdir(parents=True)
    stale, fresh = home / f"{UPLOAD_PREFIX}old", home / f"{UPLOAD_PREFIX}new"
    stale.write_text("half")
    fresh.write_text("live")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    server = FtpsServer(data_dir=tmp_path, authenticate=drop_user_only, drops=DropQueue(), port=0)
    server.start()
    server.stop()
    assert not stale.exists() and fresh.exists()


def test_passive_ports_come_from_the_environment(ftps_site, monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        low = min(probe.getsockname()[1], 60000)
    monkeypatch.setenv("FLOWMILL_FTPS_PASSIVE_PORTS", f"{low}-{low + 9}")
    site = ftps_site()
    with site.client() as ftp:
        _host, port = ftp.makepasv()
        assert low <= port <= low + 9
    monkeypatch.setenv("FLOWMILL_FTPS_PASSIVE_PORTS", "lots")
    with pytest.raises(FlowmillError, match="FLOWMILL_FTPS_PASSIVE_PORTS"):
        ftps_site()
