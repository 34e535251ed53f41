"""The WebDAV file-drop server, driven by real clients: curl, requests, raw sockets, litmus.

Every test starts a ``WebDavServer`` on an ephemeral port over a temporary data directory.
The drop user ``drop`` sees ``DATA/drop/drop/`` as ``/``; files planted beside and above
that folder must stay unread and unchanged whatever the client sends.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import re
import socket
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from engine.errors import FlowmillError
from servers.drops import DropEvent, DropQueue, sha256_of
from servers.tls import certificate
from servers.webdav import WebDavServer
from tests.conftest import DEADLINE, require_program

USER, PASSWORD = "drop", "secret pw 123"
AUTH = (USER, PASSWORD)
PLANTED = b"planted outside the drop folder\n"
MB = 1 << 20


def only_drop(user: str, password: str) -> bool:
    return (user, password) == AUTH


@dataclass
class Dav:
    server: WebDavServer
    drops: DropQueue
    data_dir: Path

    @property
    def root(self) -> Path:
        return self.data_dir.resolve() / "drop" / USER

    @property
    def url(self) -> str:
        host, port = self.server.address
        return f"http://{host}:{port}"

    def events(self, wait: float = 0.0) -> list[DropEvent]:
        if wait:
            first = self.drops.wait(wait)
            return ([first] if first else []) + self.drops.take()
        return self.drops.take()


def start_server(
    tmp_path: Path,
    *,
    authenticate: Callable[[str, str], bool] = only_drop,
    capacity: int = 10_000,
    **kwargs: object,
) -> Dav:
    data_dir = tmp_path / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    drops = DropQueue(capacity=capacity)
    server = WebDavServer(
        data_dir=data_dir, authenticate=authenticate, drops=drops, port=0, **kwargs
    )
    server.start()
    return Dav(server, drops, data_dir)


@pytest.fixture
def dav(tmp_path: Path) -> Iterator[Dav]:
    running = start_server(tmp_path)
    running.root.mkdir(parents=True, exist_ok=True)
    yield running
    running.server.stop()


def basic(user: str = USER, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def raw_request(
    dav: Dav, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[int, bytes]:
    """Send ``path`` exactly as written (no client-side normalisation)."""
    conn = http.client.HTTPConnection(*dav.server.address, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Authorization": basic(), **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    command = [require_program("curl"), "-sS", "--max-time", "60", "-o", "/dev/null"]
    command += ["-w", "%{http_code}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".flowmill-upload-*")]


def wait_until(condition: Callable[[], bool], seconds: float = DEADLINE) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


# --- uploads fire one event with the exact bytes ----------------------------------------------


def test_curl_upload_fires_one_event_with_the_exact_bytes(dav: Dav, tmp_path: Path):
    payload = os.urandom(3 * MB + 17)  # > 1 MB: curl asks "Expect: 100-continue"
    source = tmp_path / "orders.csv"
    source.write_bytes(payload)

    done = curl("-u", f"{USER}:{PASSWORD}", "-T", str(source), f"{dav.url}/orders.csv")

    assert done.stdout == "201", done.stderr
    [event] = dav.events(wait=DEADLINE)
    assert (event.name, event.user, event.source, event.size) == (
        "orders.csv",
        USER,
        "webdav",
        len(payload),
    )
    assert event.sha256 == sha(payload) == sha256_of(Path(event.path))
    assert Path(event.path) == dav.root / "orders.csv"
    assert leftovers(dav.root) == []


def test_curl_chunked_upload_is_stored_whole(dav: Dav):
    payload = os.urandom(2 * MB + 5)
    # from stdin curl does not know the size and sends Transfer-Encoding: chunked
    done = subprocess.run(
        [require_program("curl"), "-sS", "-o", "/dev/null", "-w", "%{http_code}",
         "-u", f"{USER}:{PASSWORD}",
         "-T", "-", f"{dav.url}/chunked.bin", "-v"],
        input=payload, capture_output=True, timeout=60, check=False,
    )  # fmt: skip

    assert done.stdout == b"201", done.stderr
    assert b"Transfer-Encoding: chunked" in done.stderr
    [event] = dav.events(wait=DEADLINE)
    assert (event.name, event.size, event.sha256) == ("chunked.bin", len(payload), sha(payload))
    assert (dav.root / "chunked.bin").read_bytes() == payload


def test_requests_plain_and_chunked_uploads_fire_one_event_each(dav: Dav):
    plain = os.urandom(MB + 3)
    pieces = [os.urandom(100_000) for _ in range(7)]

    first = requests.put(f"{dav.url}/in/plain.bin", data=plain, auth=AUTH, timeout=30)
    assert first.status_code == 409  # no folder "in" yet
    assert requests.request("MKCOL", f"{dav.url}/in", auth=AUTH, timeout=30).status_code == 201
    first = requests.put(f"{dav.url}/in/plain.bin", data=plain, auth=AUTH, timeout=30)
    second = requests.put(f"{dav.url}/in/chunked.bin", data=iter(pieces), auth=AUTH, timeout=30)

    assert (first.status_code, second.status_code) == (201, 201)
    events = {e.name: e for e in dav.events(wait=DEADLINE)}
    assert sorted(events) == ["in/chunked.bin", "in/plain.bin"]
    assert events["in/plain.bin"].sha256 == sha(plain)
    assert events["in/chunked.bin"].sha256 == sha(b"".join(pieces))
    assert events["in/chunked.bin"].size == 700_000
    again = requests.put(f"{dav.url}/in/plain.bin", data=b"v2", auth=AUTH, timeout=30)
    assert again.status_code == 204  # replaced: one more event, with the new bytes
    [event] = dav.events(wait=DEADLINE)
    assert (event.name, event.sha256) == ("in/plain.bin", sha(b"v2"))


def test_unicode_names_arrive_as_written(dav: Dav):
    url = f"{dav.url}/Bestellung%20M%C3%A4rz%20%231.csv"
    assert requests.put(url, data=b"a;b\n", auth=AUTH, timeout=30).status_code == 201
    [event] = dav.events(wait=DEADLINE)
    assert event.name == "Bestellung März #1.csv"
    assert requests.get(url, auth=AUTH, timeout=30).content == b"a;b\n"


# --- nothing leaves the user's folder ------------------------------------------------------

ESCAPES = [
    "/../planted.txt",
    "/%2e%2e/planted.txt",
    "/%2E%2E/planted.txt",
    "/..%2fplanted.txt",
    "/%2e%2e%2fplanted.txt",
    "/%252e%252e/planted.txt",
    "/%25252e%25252e%25252fplanted.txt",
    "/sub/..%2f..%2fplanted.txt",
    "/..%5cplanted.txt",
    "/%2e%2e/%2e%2e/secret.txt",
    "/%2e%2e/drop/../planted.txt",
]


def plant(dav: Dav) -> dict[Path, tuple[bytes, int]]:
    """Files beside and above the user's folder; returns their content and mtime."""
    (dav.root / "sub").mkdir(exist_ok=True)
    (dav.root / "mine.txt").write_bytes(b"mine\n")
    planted = [dav.root.parent / "planted.txt", dav.data_dir.resolve() / "secret.txt"]
    for path in planted:
        path.write_bytes(PLANTED)
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in planted}


def outside_tree(dav: Dav) -> set[str]:
    return {
        str(p.relative_to(dav.data_dir))
        for p in dav.data_dir.rglob("*")
        if not p.resolve().is_relative_to(dav.root)
    }


def assert_untouched(dav: Dav, planted: dict[Path, tuple[bytes, int]], tree: set[str]) -> None:
    for path, (content, mtime) in planted.items():
        assert path.read_bytes() == content, path
        assert path.stat().st_mtime_ns == mtime, path
    assert outside_tree(dav) == tree
    assert sorted(p.name for p in dav.root.iterdir()) == ["mine.txt", "sub"]
    assert dav.events() == []


@pytest.mark.parametrize("path", ESCAPES)
@pytest.mark.parametrize(
    "method",
    ["GET", "HEAD", "PUT", "DELETE", "MKCOL", "PROPFIND", "PROPPATCH", "LOCK", "COPY", "MOVE"],
)
def test_escaping_paths_are_refused_for_every_method(dav: Dav, method: str, path: str):
    planted = plant(dav)
    tree = outside_tree(dav)
    headers, body = {}, b""
    if method == "PUT":
        body = b"overwritten through the server\n"
    elif method in ("COPY", "MOVE"):
        headers["Destination"] = f"{dav.url}/stolen.txt"
    elif method == "LOCK":
        body = (
            b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
            b"</D:lockscope><D:locktype><D:write/></D:locktype></D:lockinfo>"
        )
    elif method == "PROPPATCH":
        body = (
            b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:"><D:set><D:prop>'
            b'<x xmlns="urn:x">1</x></D:prop></D:set></D:propertyupdate>'
        )

    status, content = raw_request(dav, method, path, headers, body)

    assert status in (403, 404), (method, path, status)
    assert PLANTED not in content
    assert_untouched(dav, planted, tree)


@pytest.mark.parametrize(
    "destination",
    [
        "{url}/%2e%2e/planted.txt",
        "/%2e%2e/planted.txt",
        "{url}/..%2fplanted.txt",
        "/%252e%252e/planted.txt",
        "{url}/sub/%2e%2e/%2e%2e/%2e%2e/secret.txt",
        "/../planted.txt",
    ],
)
@pytest.mark.parametrize("method", ["COPY", "MOVE"])
def test_copy_and_move_cannot_write_outside_the_root(dav: Dav, method: str, destination: str):
    planted = plant(dav)
    tree = outside_tree(dav)

    status, _ = raw_request(
        dav, method, "/mine.txt", {"Destination": destination.format(url=dav.url), "Overwrite": "T"}
    )

    assert status in (403, 404), (method, destination, status)
    assert (dav.root / "mine.txt").read_bytes() == b"mine\n"
    assert_untouched(dav, planted, tree)


@pytest.mark.parametrize(
    "path", ["/%2e%2e/planted.txt", "/..%2fplanted.txt", "/%252e%252e/planted.txt"]
)
def test_curl_path_as_is_cannot_read_or_write_outside(dav: Dav, path: str):
    planted = plant(dav)
    tree = outside_tree(dav)
    auth = ["-u", f"{USER}:{PASSWORD}", "--path-as-is"]

    got = curl(*auth, f"{dav.url}{path}")
    put = curl(*auth, "-X", "PUT", "--data-binary", "evil", f"{dav.url}{path}")
    gone = curl(*auth, "-X", "DELETE", f"{dav.url}{path}")

    assert (got.stdout, put.stdout, gone.stdout) == ("403", "403", "403")
    assert_untouched(dav, planted, tree)


def test_a_symlink_out_of_the_root_is_not_followed(dav: Dav):
    planted = plant(dav)
    tree = outside_tree(dav)
    (dav.root / "sub" / "link").symlink_to(dav.root.parent)

    got = requests.get(f"{dav.url}/sub/link/planted.txt", auth=AUTH, timeout=30)
    put = requests.put(f"{dav.url}/sub/link/planted.txt", data=b"x", auth=AUTH, timeout=30)

    assert (got.status_code, put.status_code) == (403, 403)
    assert PLANTED not in got.content
    (dav.root / "sub" / "link").unlink()
    assert_untouched(dav, planted, tree)


def test_the_root_itself_cannot_be_deleted_or_moved(dav: Dav):
    (dav.root / "keep.txt").write_bytes(b"keep")
    gone = requests.delete(f"{dav.url}/", auth=AUTH, timeout=30)
    moved = requests.request(
        "MOVE", f"{dav.url}/", headers={"Destination": "/x"}, auth=AUTH, timeout=30
    )
    assert (gone.status_code, moved.status_code) == (403, 403)
    assert (dav.root / "keep.txt").read_bytes() == b"keep"


# --- authentication -------------------------------------------------------------------------

METHODS = ["OPTIONS", "GET", "HEAD", "PUT", "DELETE", "MKCOL", "COPY", "MOVE", "PROPFIND",
           "PROPPATCH", "LOCK", "UNLOCK", "POST"]  # fmt: skip


@pytest.mark.parametrize("credentials", [None, (USER, "wrong"), ("nobody", PASSWORD)])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_needs_credentials(dav: Dav, method: str, credentials):
    (dav.root / "mine.txt").write_bytes(b"mine\n")
    headers = {"Destination": f"{dav.url}/copy.txt", "Lock-Token": "<opaquelocktoken:x-y>"}

    response = requests.request(
        method, f"{dav.url}/mine.txt", data=b"body", headers=headers, auth=credentials, timeout=30
    )

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert sorted(p.name for p in dav.root.iterdir()) == ["mine.txt"]
    assert (dav.root / "mine.txt").read_bytes() == b"mine\n"
    assert dav.events() == []


def test_curl_with_a_wrong_password_gets_401_before_sending_the_body(dav: Dav, tmp_path: Path):
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(3 * MB))  # curl waits for "100 Continue" that never comes

    done = curl("-u", f"{USER}:wrong", "-T", str(source), f"{dav.url}/big.bin")

    assert done.stdout == "401", done.stderr
    assert list(dav.root.iterdir()) == []
    assert dav.events() == []


def test_two_servers_in_one_process_keep_their_own_folders_and_queues(tmp_path: Path):
    first = start_server(tmp_path / "one")
    second = start_server(tmp_path / "two")
    try:
        requests.put(f"{first.url}/a.csv", data=b"1", auth=AUTH, timeout=30)
        requests.put(f"{second.url}/b.csv", data=b"2", auth=AUTH, timeout=30)
    finally:
        first.server.stop()
        second.server.stop()
    assert [e.name for e in first.drops.take()] == ["a.csv"]
    assert [e.name for e in second.drops.take()] == ["b.csv"]
    assert [p.name for p in first.root.iterdir()] == ["a.csv"]
    assert [p.name for p in second.root.iterdir()] == ["b.csv"]


def test_a_failing_authenticate_callable_is_a_refusal(tmp_path: Path):
    def broken(user: str, password: str) -> bool:
        raise RuntimeError("user store is down")

    running = start_server(tmp_path, authenticate=broken)
    try:
        response = requests.get(f"{running.url}/", auth=AUTH, timeout=30)
    finally:
        running.server.stop()
    assert response.status_code == 401


@pytest.mark.parametrize("user", ["..", "../drop", "a/b", ".", "a\\b", "x" * 65])
def test_a_user_name_that_is_not_a_folder_name_is_refused(tmp_path: Path, user: str):
    running = start_server(tmp_path, authenticate=lambda u, p: True)
    try:
        response = requests.put(f"{running.url}/x.txt", data=b"x", auth=(user, "pw"), timeout=30)
    finally:
        running.server.stop()
    assert response.status_code == 401
    assert not list(tmp_path.rglob("x.txt"))


def test_the_folder_is_the_login_name_as_the_user_store_spells_it(tmp_path: Path):
    running = start_server(tmp_path, authenticate=lambda u, p: u.strip().lower() == USER)
    try:
        response = requests.put(f"{running.url}/x.txt", data=b"x", auth=(" Drop", "pw"), timeout=30)
    finally:
        running.server.stop()
    assert response.status_code == 201
    assert (running.root / "x.txt").read_bytes() == b"x"
    assert [(e.user, e.name) for e in running.drops.take()] == [(USER, "x.txt")]


def test_users_see_only_their_own_folder_and_locks(tmp_path: Path):
    users = {"drop": PASSWORD, "partner": "other pw"}
    running = start_server(tmp_path, authenticate=lambda u, p: users.get(u) == p)
    try:
        lock = (
            b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
            b"</D:lockscope><D:locktype><D:write/></D:locktype></D:lockinfo>"
        )
        locked = requests.request("LOCK", f"{running.url}/x.txt", data=lock, auth=AUTH, timeout=30)
        theirs = requests.put(
            f"{running.url}/x.txt", data=b"partner's", auth=("partner", "other pw"), timeout=30
        )
        mine = requests.put(f"{running.url}/x.txt", data=b"drop's", auth=AUTH, timeout=30)
    finally:
        running.server.stop()
    assert (locked.status_code, theirs.status_code, mine.status_code) == (201, 201, 423)
    data = tmp_path / "data" / "drop"
    assert (data / "partner" / "x.txt").read_bytes() == b"partner's"
    assert (data / "drop" / "x.txt").read_bytes() == b""  # the empty lock-null resource
    assert [(e.user, e.name) for e in running.drops.take()] == [("partner", "x.txt")]


# --- only a finished upload fires --------------------------------------------------------------


def _open_upload(dav: Dav, name: str, headers: str) -> socket.socket:
    sock = socket.create_connection(dav.server.address, timeout=30)
    sock.sendall(
        f"PUT /{name} HTTP/1.1\r\nHost: x\r\nAuthorization: {basic()}\r\n{headers}\r\n".encode()
    )
    return sock


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_upload_aborted_halfway_fires_nothing_and_leaves_nothing(dav: Dav, chunked: bool):
    half = os.urandom(512 * 1024)
    if chunked:
        sock = _open_upload(dav, "half.bin", "Transfer-Encoding: chunked\r\n")
        sock.sendall(b"%x\r\n" % (2 * len(half)) + half)
    else:
        sock = _open_upload(dav, "half.bin", f"Content-Length: {2 * len(half)}\r\n")
        sock.sendall(half)

    # in progress: a temporary file nobody can see or reach, and no event
    assert wait_until(lambda: len(leftovers(dav.root)) == 1)
    listing = requests.request("PROPFIND", f"{dav.url}/", headers={"Depth": "1"}, auth=AUTH)
    assert ".flowmill-upload" not in listing.text
    temp = leftovers(dav.root)[0]
    assert requests.get(f"{dav.url}/{temp}", auth=AUTH, timeout=30).status_code == 404
    assert requests.get(f"{dav.url}/half.bin", auth=AUTH, timeout=30).status_code == 404
    assert dav.events() == []

    sock.close()

    assert wait_until(lambda: leftovers(dav.root) == [])
    assert not (dav.root / "half.bin").exists()
    assert dav.events(wait=0.5) == []
    assert dav.server.describe()["uploads_received"] == 0


def test_stopping_the_server_mid_upload_fires_nothing(dav: Dav):
    sock = _open_upload(dav, "cut.bin", f"Content-Length: {4 * MB}\r\n")
    sock.sendall(os.urandom(MB))
    assert wait_until(lambda: len(leftovers(dav.root)) == 1)

    dav.server.stop()

    assert wait_until(lambda: leftovers(dav.root) == [])
    sock.close()
    assert not (dav.root / "cut.bin").exists()
    assert dav.events(wait=0.3) == []


def test_a_garbled_chunked_body_fires_nothing(dav: Dav):
    sock = _open_upload(dav, "bad.bin", "Transfer-Encoding: chunked\r\n")
    sock.sendall(b"5\r\nhello\r\nzz-not-hex\r\n")
    sock.settimeout(10)
    answer = b""
    while chunk := sock.recv(1024):  # 400, then the server hangs up
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert wait_until(lambda: leftovers(dav.root) == [])
    assert not (dav.root / "bad.bin").exists()
    assert dav.events(wait=0.3) == []


def test_a_full_queue_answers_503_and_keeps_no_file(tmp_path: Path):
    running = start_server(tmp_path, capacity=1)
    try:
        first = requests.put(f"{running.url}/a.csv", data=b"a", auth=AUTH, timeout=30)
        second = requests.put(f"{running.url}/b.csv", data=b"b", auth=AUTH, timeout=30)
        stats = running.server.describe()
    finally:
        running.server.stop()
    assert (first.status_code, second.status_code) == (201, 503)
    assert second.headers["Retry-After"].isdigit()
    assert not (running.root / "b.csv").exists()
    assert [e.name for e in running.drops.take()] == ["a.csv"]
    assert (stats["uploads_received"], stats["uploads_refused_busy"]) == (1, 1)


def test_a_burst_of_1000_uploads_gives_one_event_or_a_clear_503_each(tmp_path: Path):
    running = start_server(tmp_path, capacity=600)
    process = psutil.Process()

    def upload(i: int) -> tuple[int, int, str | None]:
        with requests.Session() as session:
            response = session.put(
                f"{running.url}/burst-{i:04d}.txt", data=b"%d\n" % i, auth=AUTH, timeout=60
            )
        return i, response.status_code, response.headers.get("Retry-After")

    try:
        upload(-1)  # warm up: threads, imports, the user's folder
        running.drops.take()
        before = process.memory_info().rss
        with ThreadPoolExecutor(max_workers=24) as pool:
            results = list(pool.map(upload, range(1000)))
        after = process.memory_info().rss
        stats = running.server.describe()
    finally:
        running.server.stop()

    accepted = {i for i, code, _ in results if code == 201}
    busy = {i for i, code, retry in results if code == 503 and retry}
    assert len(accepted) + len(busy) == 1000, {code for _, code, _ in results}
    assert len(accepted) == 600 and len(busy) == 400  # the queue holds 600
    events = running.drops.take(limit=5000)
    assert sorted(e.name for e in events) == sorted(f"burst-{i:04d}.txt" for i in accepted)
    assert all(e.sha256 == sha(b"%d\n" % int(e.name[6:10])) for e in events)
    assert all(not (running.root / f"burst-{i:04d}.txt").exists() for i in busy)
    assert leftovers(running.root) == []
    assert stats["uploads_refused_busy"] == 400
    print(f"1000 uploads: RSS {(after - before) / MB:+.1f} MB")
    assert after - before < 50 * MB, f"RSS grew by {(after - before) / MB:.1f} MB"


class Repeated:
    """A file-like body of ``count`` copies of ``block``: requests sends Content-Length."""

    def __init__(self, block: bytes, count: int) -> None:
        self.block, self.left, self.size = block, count, len(block) * count

    def __len__(self) -> int:
        return self.size

    def read(self, size: int = -1) -> bytes:
        if not self.left:
            return b""
        self.left -= 1
        return self.block


@pytest.mark.timeout(300)
@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_a_gigabyte_upload_keeps_server_memory_flat(dav: Dav, framing: str):
    """Server in-process: the peak RSS of this process may grow by less than 100 MB.

    Select it alone with ``-k gigabyte``; each run takes a few seconds here.
    """
    block = os.urandom(MB)
    blocks = 1024
    expected = hashlib.sha256()
    for _ in range(blocks):
        expected.update(block)
    body = (block for _ in range(blocks)) if framing == "chunked" else Repeated(block, blocks)
    process = psutil.Process()
    before = process.memory_info().rss
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        response = requests.put(f"{dav.url}/big.bin", data=body, auth=AUTH, timeout=300)
    finally:
        stop.set()
        sampler.join()
    seconds = time.monotonic() - started

    assert response.status_code == 201
    assert ("Transfer-Encoding" in response.request.headers) == (framing == "chunked")
    [event] = dav.events(wait=DEADLINE)
    assert (event.size, event.sha256) == (blocks * MB, expected.hexdigest())
    grown = (peak[0] - before) / MB
    print(f"1 GiB upload ({framing}): {seconds:.1f} s, peak RSS +{grown:.1f} MB")
    assert grown < 100, f"peak RSS grew by {grown:.1f} MB"


# --- protocol details -----------------------------------------------------------------------


def test_propfind_answers_are_plain_xml_even_when_gzip_is_accepted(dav: Dav):
    for i in range(40):
        (dav.root / f"file-{i:02d}.csv").write_bytes(b"x" * i)

    response = requests.request(
        "PROPFIND",
        f"{dav.url}/",
        headers={"Depth": "1", "Accept-Encoding": "gzip"},
        auth=AUTH,
        timeout=30,
    )

    assert response.status_code == 207
    assert "Content-Encoding" not in response.headers
    assert int(response.headers["Content-Length"]) == len(response.content) > 1400
    tree = ET.fromstring(response.content)
    hrefs = [h.text for h in tree.iter("{DAV:}href")]
    assert hrefs[0] == "/" and len(hrefs) == 41 and "/file-07.csv" in hrefs


def test_litmus_suites_pass(dav: Dav, tmp_path: Path):
    """Debian's litmus (installed by scripts/services.sh) against our server."""
    litmus = require_program("litmus")
    suites = ["basic", "copymove", "props", "locks", "http"]
    work = tmp_path / "litmus"
    work.mkdir()

    done = subprocess.run(
        [litmus, "--keep-going", f"{dav.url}/", USER, PASSWORD],
        cwd=work, env={**os.environ, "TESTS": " ".join(suites)},
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip

    summaries = dict(re.findall(r"summary for `(\w+)': of \d+ tests run: (.*)", done.stdout))
    assert sorted(summaries) == sorted(suites), done.stdout[-3000:]
    for suite, summary in summaries.items():
        assert re.search(r" 0 failed\. 100\.0%", summary), f"{suite}: {summary}\n{done.stdout}"
    assert "WARNING" not in done.stdout, done.stdout
    assert done.returncode == 0
    print("litmus:", summaries)


def test_https_when_a_certificate_is_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cert, key = certificate(tmp_path / "pki")
    monkeypatch.setenv("FLOWMILL_TLS_CERT", str(cert))
    monkeypatch.setenv("FLOWMILL_TLS_KEY", str(key))
    running = start_server(tmp_path)  # tls=None: HTTPS because a certificate is set
    host, port = running.server.address
    try:
        response = requests.put(
            f"https://{host}:{port}/secure.csv",
            data=b"tls",
            auth=AUTH,
            verify=str(cert),
            timeout=30,
        )
        with pytest.raises(requests.ConnectionError):  # no plain HTTP on the HTTPS port
            requests.get(f"http://{host}:{port}/", auth=AUTH, timeout=30)
        described = running.server.describe()
    finally:
        running.server.stop()
    assert response.status_code == 201
    assert described["tls"] is True
    assert [e.name for e in running.drops.take()] == ["secure.csv"]


def test_address_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("FLOWMILL_WEBDAV_HOST", raising=False)
    monkeypatch.delenv("FLOWMILL_WEBDAV_PORT", raising=False)
    monkeypatch.delenv("FLOWMILL_TLS_CERT", raising=False)
    kwargs = {"data_dir": tmp_path, "authenticate": only_drop, "drops": DropQueue()}
    default = WebDavServer(**kwargs)
    assert (default.address, default.tls) == (("127.0.0.1", 8821), False)

    monkeypatch.setenv("FLOWMILL_WEBDAV_HOST", "0.0.0.0")
    monkeypatch.setenv("FLOWMILL_WEBDAV_PORT", "18821")
    assert WebDavServer(**kwargs).address == ("0.0.0.0", 18821)

    monkeypatch.setenv("FLOWMILL_WEBDAV_PORT", "webdav")
    with pytest.raises(FlowmillError, match="FLOWMILL_WEBDAV_PORT"):
        WebDavServer(**kwargs)


def test_a_busy_port_is_an_error_naming_the_address(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = WebDavServer(
            data_dir=tmp_path, authenticate=only_drop, drops=DropQueue(), port=port
        )
        with pytest.raises(FlowmillError, match=f"127.0.0.1:{port}"):
            server.start()


def test_describe_reports_address_and_counts(dav: Dav):
    requests.put(f"{dav.url}/one.txt", data=b"1", auth=AUTH, timeout=30)
    host, port = dav.server.address
    assert wait_until(lambda: dav.server.describe()["connections"] == 0)
    assert dav.server.describe() == {
        "host": host,
        "port": port,
        "tls": False,
        "running": True,
        "connections": 0,
        "uploads_received": 1,
        "uploads_refused_busy": 0,
    }
