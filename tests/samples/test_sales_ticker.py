"""Sample ``sales-ticker``: sales messages on a TCP port → sales table → broadcast.

A real listener host listens for the sample (on a free port instead of 3700); messages go
over real sockets; the queued jobs run like a worker runs them.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from designer.demo.data import articles, sales
from engine.batch.listeners import ListenerHost
from engine.run.events import CustomEvent
from tests.conftest import DEADLINE

from .conftest import SAMPLES, Demo

FLOW, NODE = "sales-ticker", "tcp"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ticker(demo: Demo) -> Iterator[int]:
    """The sample, enabled with its port param on a free port, listened for; the port."""
    flow = json.loads((SAMPLES / f"{FLOW}.flow.json").read_text(encoding="utf-8"))
    port = free_port()
    flow["params"]["port"]["default"] = port
    demo.app.save_flow(flow)
    host = ListenerHost(demo.app)
    host.refresh()
    ctx = host.context(FLOW, NODE)
    assert ctx is not None and ctx.ready.wait(DEADLINE), ctx and ctx.last_error
    yield port
    host.stop()


@pytest.fixture
def broadcasts(demo: Demo) -> Iterator[list[str]]:
    messages: list[str] = []

    def seen(event: CustomEvent) -> None:
        if event.name == "broadcast":
            messages.append(event.data["message"])

    unsubscribe = demo.app.bus.subscribe(CustomEvent, seen)
    yield messages
    unsubscribe()


def exchange(port: int, *lines: str) -> list[str]:
    """Send the lines on one connection; the reply lines (one per message)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall("".join(f"{line}\r\n" for line in lines).encode("utf-8"))
        data = b""
        while data.count(b"\n") < len(lines):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode("utf-8").splitlines()


def queued(demo: Demo, n: int) -> None:
    deadline = time.monotonic() + DEADLINE
    while len(demo.app.jobs.list(state="queued")) < n:
        assert time.monotonic() < deadline, "the messages were not queued"
        time.sleep(0.02)


def rows(demo: Demo) -> list[dict[str, Any]]:
    engine = sa.create_engine(demo.summary.erp_url)
    try:
        with engine.connect() as conn:
            result = conn.execute(sa.select(sales).order_by(sales.c.receipt_no, sales.c.line_no))
            return [dict(row._mapping) for row in result]
    finally:
        engine.dispose()


def article_name(demo: Demo, sku: str) -> str:
    engine = sa.create_engine(demo.summary.erp_url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                sa.select(articles.c.name).where(articles.c.sku == sku)
            ).scalar_one()
    finally:
        engine.dispose()


def test_messages_are_acknowledged_and_become_sales_lines_a_malformed_one_gets_nak(
    demo: Demo, ticker: int, broadcasts: list[str]
) -> None:
    replies = exchange(
        ticker,
        "26112101;1;21.11.2026;Filiale München;A0000005;3;12,50",
        "26112101;2;21.11.2026;Filiale München;A0000007;1",  # 6 fields: malformed
        "26112102;1;2026-11-21;Onlineshop;a0000009;2;7.05",
    )
    assert replies[0] == "ACK" and replies[2] == "ACK"
    assert replies[1].startswith("NAK ") and "field" in replies[1]
    queued(demo, 2)
    assert demo.run_queued() == ["succeeded", "succeeded"]

    assert rows(demo) == [
        {"receipt_no": 26112101, "line_no": 1, "sale_date": date(2026, 11, 21),
         "store": "Filiale München", "customer": "Barverkauf", "sku": "A0000005",
         "article": article_name(demo, "A0000005"), "qty": 3, "unit_price": Decimal("12.50"),
         "net": Decimal("37.50"), "gross": Decimal("44.63"), "status": "geliefert",
         "source": "ticker"},
        {"receipt_no": 26112102, "line_no": 1, "sale_date": date(2026, 11, 21),
         "store": "Onlineshop", "customer": "Barverkauf", "sku": "A0000009",
         "article": article_name(demo, "A0000009"), "qty": 2, "unit_price": Decimal("7.05"),
         "net": Decimal("14.10"), "gross": Decimal("16.78"), "status": "geliefert",
         "source": "ticker"},
    ]  # fmt: skip
    assert broadcasts == ["sales updated (1 ticker lines)"] * 2
    (job, _) = demo.app.jobs.list(flow_id=FLOW)
    assert job.params["_trigger"]["receipt"] in {"26112101", "26112102"}


def test_a_message_sent_again_updates_its_line_and_unreadable_values_write_nothing(
    demo: Demo, ticker: int, broadcasts: list[str]
) -> None:
    assert exchange(ticker, "700;1;01.12.2026;Filiale Augsburg;A0000002;4;2,00") == ["ACK"]
    queued(demo, 1)
    assert demo.run_queued() == ["succeeded"]
    # the merchandise system corrects the line, then sends two it cannot be right about
    replies = exchange(
        ticker,
        "700;1;01.12.2026;Filiale Augsburg;A0000002;5;2,00",
        "701;1;01.12.2026;Filiale Augsburg;A0000002;x;2,00",
        "702;1;31.02.2026;Filiale Augsburg;A0000002;1;2,00",
        "703;1;01.12.2026;Filiale Augsburg;ZZ-404;1;9,99",
    )
    assert replies == ["ACK"] * 4  # well-formed messages: queued, so acknowledged
    queued(demo, 4)
    assert demo.run_queued() == ["succeeded", "failed", "failed", "succeeded"]
    jobs = sorted(demo.app.jobs.list(flow_id=FLOW), key=lambda j: j.id)
    assert "'x'" in (jobs[2].error or "") and jobs[2].error_node == "map-line"
    assert "31.02.2026" in (jobs[3].error or "")
    got = {(r["receipt_no"], r["line_no"]): r for r in rows(demo)}
    assert sorted(got) == [(700, 1), (703, 1)]
    assert (got[(700, 1)]["qty"], got[(700, 1)]["net"]) == (5, Decimal("10.00"))
    assert got[(703, 1)]["article"] == "(unknown article)"
    assert broadcasts == ["sales updated (1 ticker lines)"] * 3
