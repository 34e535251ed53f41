"""``trigger.tcp``: real sockets against a real listener host, jobs in a real store."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from engine.batch.listeners import ListenContext, ListenerHost
from engine.batch.workers import run_job
from engine.errors import FlowValidationError
from engine.service import Flowmill
from nodes.tcp import check_tcp, unescape, unescape_text
from tests.conftest import DEADLINE

FLOW_ID, NODE_ID = "ticker", "tcp"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _flow(config: dict[str, Any], out: Path | None = None) -> dict[str, Any]:
    """Sales messages on TCP → (optionally) written to ``out`` as CSV."""
    nodes: list[dict[str, Any]] = [{"id": NODE_ID, "type": "trigger.tcp", "config": config}]
    edges = []
    if out is not None:
        nodes.append({"id": "write", "type": "file.write", "config": {"path": str(out)}})
        edges.append(
            {"source": NODE_ID, "source_port": "out", "target": "write", "target_port": "in"}
        )
    return {"format": "flowmill/1", "id": FLOW_ID, "nodes": nodes, "edges": edges}


class Ticker:
    """A listener host running one flow with a ``trigger.tcp`` node, and its log."""

    def __init__(self, app: Flowmill) -> None:
        self.app = app
        self.log: list[str] = []
        self.host = ListenerHost(app, echo=self.log.append)
        self.port = 0

    def start(self, out: Path | None = None, **config: Any) -> ListenContext:
        self.port = config.setdefault("port", free_port())
        self.app.save_flow(_flow(config, out))
        self.host.refresh()
        ctx = self.host.context(FLOW_ID, NODE_ID)
        assert ctx is not None
        assert ctx.ready.wait(DEADLINE), ctx.last_error
        return ctx

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return sock

    def send(self, *messages: bytes) -> None:
        with self.connect() as sock:
            sock.sendall(b"".join(messages))

    def records(self, n: int, timeout: float = DEADLINE) -> list[Any]:
        """The ``_trigger`` params of exactly ``n`` jobs, oldest first (waits for them)."""
        deadline = time.monotonic() + timeout
        while len(jobs := self.app.jobs.list(limit=n + 100)) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # a job too many would show up now
        jobs = sorted(self.app.jobs.list(limit=n + 100), key=lambda j: j.id)
        assert len(jobs) == n, f"{len(jobs)} jobs, expected {n}"
        return [job.params["_trigger"] for job in jobs]


@pytest.fixture
def app(data_dir: Path) -> Iterator[Flowmill]:
    service = Flowmill.open(data_dir)
    yield service
    service.close()


@pytest.fixture
def ticker(app: Flowmill) -> Iterator[Ticker]:
    ticker = Ticker(app)
    yield ticker
    ticker.host.stop()


def read_lines(sock: socket.socket, n: int, timeout: float = DEADLINE) -> list[str]:
    """The next ``n`` reply lines (fewer if the server closes the connection)."""
    sock.settimeout(timeout)
    data = b""
    while data.count(b"\n") < n:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode().splitlines()


def wait_for(condition: Callable[[], Any], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def listener_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"listen-{FLOW_ID}-")]


# -- framing, encoding, parsing ------------------------------------------------------------


def test_each_line_starts_one_job_with_the_message_sender_and_time(ticker: Ticker) -> None:
    ticker.start()
    with ticker.connect() as sock:
        sock.sendall(b"Filiale 12 Kasse 3 19.99\r\n\nFiliale 7 Kasse 1 5.00\n")
        peer = f"127.0.0.1:{sock.getsockname()[1]}"
    first, second = ticker.records(2)  # the blank line is no message
    assert first["message"] == "Filiale 12 Kasse 3 19.99"
    assert second["message"] == "Filiale 7 Kasse 1 5.00"
    assert first["_peer"] == second["_peer"] == peer
    assert datetime.fromisoformat(first["_received_at"]).utcoffset().total_seconds() == 0
    assert set(first) == {"message", "_peer", "_received_at"}


@pytest.mark.parametrize("length_bytes", [4, 2])
def test_length_prefixed_messages_may_hold_line_ends_and_arrive_in_pieces(
    ticker: Ticker, length_bytes: int
) -> None:
    ticker.start(framing="length-prefixed", length_bytes=length_bytes)
    fmt = ">I" if length_bytes == 4 else ">H"
    payloads = [b"one\nline two", b"x" * 70_000 if length_bytes == 4 else b"x" * 60_000, b"3"]
    stream = b"".join(struct.pack(fmt, len(p)) + p for p in payloads)
    with ticker.connect() as sock:
        for i in range(0, len(stream), 777):  # odd pieces: frames split anywhere
            sock.sendall(stream[i : i + 777])
    assert [r["message"] for r in ticker.records(3)] == [p.decode() for p in payloads]


def test_delimiter_framing_with_etx(ticker: Ticker) -> None:
    ticker.start(framing="delimiter", delimiter="\\x03")
    ticker.send(b"\x02A;1\x03", b"\x02B;2\nmore\x03", b"\x02C")  # the last one never ends…
    assert [r["message"] for r in ticker.records(3)] == ["\x02A;1", "\x02B;2\nmore", "\x02C"]
    # … but the sender closed the connection: what it sent last still counts


def test_cp1252_umlauts_and_an_undecodable_message_is_rejected_but_the_connection_stays(
    ticker: Ticker,
) -> None:
    ticker.start(encoding="cp1252", ack="line")
    with ticker.connect() as sock:
        sock.sendall("Müller;Größe 42;Maßband\n".encode("cp1252"))
        sock.sendall(b"bad \x81 byte\n")  # 0x81 is no cp1252 character
        sock.sendall("Bäcker\n".encode("cp1252"))
        replies = read_lines(sock, 3)
    assert replies == ["ACK", "NAK not valid cp1252 (byte 5)", "ACK"]
    assert [r["message"] for r in ticker.records(2)] == ["Müller;Größe 42;Maßband", "Bäcker"]
    assert any("rejected: not valid cp1252" in line for line in ticker.log)


def test_json_messages_become_records_and_bad_ones_get_a_nak_in_order(ticker: Ticker) -> None:
    ticker.start(parse="json", ack="line")
    with ticker.connect() as sock:
        sock.sendall(b'{"store": 12, "amount": 19.99}\n{"store": \n[1, 2]\n{"store": 7}\n')
        replies = read_lines(sock, 4)
    assert replies[0] == "ACK" and replies[3] == "ACK"
    assert replies[1].startswith("NAK not JSON (")
    assert replies[2] == "NAK not a JSON object (a list)"
    first, second = ticker.records(2)
    assert (first["store"], first["amount"], second["store"]) == (12, 19.99, 7)


def test_sales_fields_split_by_semicolon_run_end_to_end_into_a_file(
    ticker: Ticker, app: Flowmill, tmp_path: Path
) -> None:
    out = tmp_path / "sales.csv"
    fields = ["store", "register", "amount"]
    ticker.start(out=out, parse="fields", fields=fields, separator=";")
    ticker.send(b"12;3;19.99\n", b"7;1;5.00;\n", b"7;1\n")  # trailing ';' ok; 2 values: no
    records = ticker.records(2)
    assert [(r["store"], r["register"], r["amount"]) for r in records] == [
        ("12", "3", "19.99"),
        ("7", "1", "5.00"),
    ]
    assert any("rejected: 2 fields, expected 3" in line for line in ticker.log)
    outcomes = []
    while (job := app.jobs.claim("test-worker")) is not None:
        outcomes.append(run_job(app, job.id, "test-worker", 5.0, threading.Event()))
    assert outcomes == ["succeeded", "succeeded"]
    header, row = out.read_text().splitlines()  # the second job wrote the file again
    assert header.split(",")[:3] == fields and row.split(",")[:3] == ["7", "1", "5.00"]
    assert set(header.split(",")) == {*fields, "_peer", "_received_at"}


# -- batches, replies, limits --------------------------------------------------------------


def test_ten_messages_in_batches_of_five_are_two_jobs(ticker: Ticker) -> None:
    ticker.start(batch_size=5)
    ticker.send(*(f"sale {i}\n".encode() for i in range(10)))
    batches = ticker.records(2)
    assert [[r["message"] for r in b["$records"]] for b in batches] == [
        [f"sale {i}" for i in range(5)],
        [f"sale {i}" for i in range(5, 10)],
    ]


def test_a_batch_is_queued_after_its_seconds_however_few_it_holds(ticker: Ticker) -> None:
    ctx = ticker.start(batch_size=100, batch_seconds=0.5)
    with ticker.connect() as sock:
        sock.sendall(b"a\nb\nc\n")
        sent = time.monotonic()
        wait_for(lambda: ctx.fired == 1)
        waited = time.monotonic() - sent
    assert waited >= 0.4  # the batch waited its seconds for more, then went with three
    (batch,) = ticker.records(1)
    assert [r["message"] for r in batch["$records"]] == ["a", "b", "c"]


def test_the_ack_comes_once_the_job_is_queued(ticker: Ticker, app: Flowmill) -> None:
    ticker.start(ack="line", ack_text="OK\\r\\n")
    with ticker.connect() as sock:
        for i in range(5):
            sock.sendall(f"sale {i}\n".encode())
            assert read_lines(sock, 1) == ["OK"]
            assert len(app.jobs.list()) == i + 1  # queued before the reply went out


def test_an_oversized_message_closes_only_its_own_connection(ticker: Ticker) -> None:
    ticker.start(ack="line", max_message_bytes=100)
    with ticker.connect() as good, ticker.connect() as bad:
        good.sendall(b"before\n")
        assert read_lines(good, 1) == ["ACK"]
        bad.sendall(b"x" * 5000)  # no line end in sight: never buffered without bound
        assert read_lines(bad, 2) == ["NAK too long"]  # and then the end of the stream
        good.sendall(b"after\n")
        assert read_lines(good, 1) == ["ACK"]
    assert [r["message"] for r in ticker.records(2)] == ["before", "after"]
    assert any("longer than 100 bytes" in line and "closed" in line for line in ticker.log)


def test_a_length_prefix_beyond_the_limit_closes_the_connection_at_once(ticker: Ticker) -> None:
    ticker.start(framing="length-prefixed", max_message_bytes=1000)
    with ticker.connect() as sock:
        sock.sendall(struct.pack(">I", 2**31) + b"just the start")
        sock.settimeout(10)
        assert sock.recv(100) == b""  # closed without waiting for 2 GiB
    assert any("longer than 1000 bytes" in line for line in ticker.log)


def test_fifty_clients_sending_twenty_messages_each_make_exactly_1000_jobs(
    ticker: Ticker,
) -> None:
    ticker.start()
    start = threading.Barrier(50)

    def client(c: int) -> None:
        with ticker.connect() as sock:
            start.wait()
            for m in range(20):
                sock.sendall(f"client {c} message {m}\n".encode())

    threads = [threading.Thread(target=client, args=(c,)) for c in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    messages = [r["message"] for r in ticker.records(1000, timeout=120)]
    assert sorted(messages) == sorted(
        f"client {c} message {m}" for c in range(50) for m in range(20)
    )
    for c in (0, 49):  # each connection's messages are queued in the order they were sent
        mine = [m for m in messages if m.startswith(f"client {c} ")]
        assert mine == [f"client {c} message {m}" for m in range(20)]


class SlowDatabase:
    """``Flowmill.submit`` that waits until released: the queue of messages fills up."""

    def __init__(self, app: Flowmill, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release = threading.Event()
        self.calls = 0
        real = app.submit

        def submit(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            self.release.wait(30)
            return real(*args, **kwargs)

        monkeypatch.setattr(app, "submit", submit)


def test_a_full_queue_answers_nak_rather_than_losing_messages(
    ticker: Ticker, app: Flowmill, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = SlowDatabase(app, monkeypatch)
    ticker.start(ack="line", max_pending=3, when_full="nak")
    with ticker.connect() as sock:
        sock.sendall(b"".join(f"sale {i}\n".encode() for i in range(10)))
        wait_for(lambda: slow.calls == 1)
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):  # replies keep the order: none before the 1st
            sock.recv(100)
        slow.release.set()
        replies = read_lines(sock, 10)
    assert replies == ["ACK"] * 3 + ["NAK queue full"] * 7
    assert [r["message"] for r in ticker.records(3)] == ["sale 0", "sale 1", "sale 2"]


def test_a_full_queue_stops_reading_until_there_is_room(
    ticker: Ticker, app: Flowmill, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = SlowDatabase(app, monkeypatch)
    ctx = ticker.start(max_pending=2)
    ticker.send(*(f"sale {i}\n".encode() for i in range(10)))  # sent, and gone
    wait_for(lambda: any("not reading until there is room" in line for line in ticker.log))
    time.sleep(0.3)
    assert slow.calls == 1 and ctx.fired == 0
    slow.release.set()
    assert [r["message"] for r in ticker.records(10)] == [f"sale {i}" for i in range(10)]


def test_connections_beyond_the_limit_are_refused(ticker: Ticker) -> None:
    ticker.start(ack="line", max_connections=2)
    with ticker.connect() as one, ticker.connect() as two:
        one.sendall(b"a\n")
        two.sendall(b"b\n")
        assert read_lines(one, 1) == read_lines(two, 1) == ["ACK"]
        with ticker.connect() as three:
            assert read_lines(three, 2) == ["NAK too many connections"]
    assert any("already 2 connections" in line for line in ticker.log)


# -- starting and stopping -----------------------------------------------------------------


def test_stopping_queues_and_answers_what_it_took_frees_the_port_and_leaves_no_thread(
    ticker: Ticker, app: Flowmill, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = SlowDatabase(app, monkeypatch)
    ticker.start(ack="line")
    assert len(listener_threads()) == 2  # the listener and its job submitter
    with ticker.connect() as sock:
        sock.sendall(b"sale 1\nsale 2\nsale 3\n")
        wait_for(lambda: slow.calls == 1)  # taken, not yet queued
        stopping = threading.Thread(target=ticker.host.stop)
        stopping.start()
        time.sleep(0.3)
        slow.release.set()
        stopping.join(10)
        assert read_lines(sock, 4) == ["ACK"] * 3  # and then the server closed it
    assert listener_threads() == []
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", ticker.port))
        again.listen()
    assert [r["message"] for r in ticker.records(3)] == ["sale 1", "sale 2", "sale 3"]


def test_a_port_in_use_is_named_and_retried(ticker: Ticker, app: Flowmill) -> None:
    port = free_port()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    app.save_flow(_flow({"port": port}))
    ticker.port = port
    ticker.host.refresh()
    ctx = ticker.host.context(FLOW_ID, NODE_ID)
    assert ctx is not None
    wait_for(lambda: ctx.last_error is not None)
    assert f"cannot listen on 127.0.0.1:{port}" in ctx.last_error
    assert any(f"127.0.0.1:{port}" in line and "again in" in line for line in ticker.log)
    blocker.close()
    assert ctx.ready.wait(DEADLINE)  # the host tried again after its back-off
    ticker.send(b"now it listens\n")
    assert ticker.records(1)[0]["message"] == "now it listens"


# -- config --------------------------------------------------------------------------------


def test_config_problems_are_named_before_the_flow_is_saved(app: Flowmill) -> None:
    def fields_of(**config: Any) -> list[str]:
        return [p.field for p in check_tcp({"port": 3700, **config})]

    assert fields_of() == []
    assert fields_of(port=700) == ["port"]
    assert fields_of(encoding="klingon") == ["encoding"]
    assert fields_of(framing="delimiter", delimiter="\\q") == ["delimiter"]
    assert fields_of(parse="fields") == ["fields"]
    assert fields_of(when_full="nak") == ["when_full"]  # without replies it would be silent
    assert fields_of(batch_size=50, max_pending=10) == ["batch_size"]
    with pytest.raises(FlowValidationError) as info:
        app.save_flow(_flow({"port": 80}))
    assert "privileged port" in str(info.value)


def test_escapes_in_delimiters_and_replies() -> None:
    assert unescape("\\x03") == b"\x03"
    assert unescape("ACK\\r\\n") == b"ACK\r\n"
    assert unescape("ü\\xff", "cp1252") == b"\xfc\xff"
    assert unescape_text("\\t") == "\t"
    assert json.dumps(unescape_text("a\\\\b")) == json.dumps("a\\b")
    with pytest.raises(ValueError, match="unknown escape"):
        unescape("\\x3")


def test_port_and_host_may_come_from_params(app: Flowmill) -> None:
    """``"port": "${port}"`` validates (the static check skips it) and the server listens on it."""
    assert check_tcp({"port": "${port}", "host": "${host}", "parse": "text"}) == []
    port = free_port()
    flow = _flow({"port": "${port}", "host": "${host}", "ack": "line"})
    flow["params"] = {
        "port": {"type": "integer", "default": port},
        "host": {"type": "string", "default": "127.0.0.1"},
    }
    assert app.validate(flow) == []
    app.save_flow(flow)
    host = ListenerHost(app)
    try:
        host.refresh()
        ctx = host.context(FLOW_ID, NODE_ID)
        assert ctx is not None and ctx.ready.wait(DEADLINE), ctx and ctx.last_error
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"hello\n")
            assert read_lines(sock, 1) == ["ACK"]
    finally:
        host.stop()
