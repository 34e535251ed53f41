"""``notify.broadcast``: a message for every live client, records pass through."""

from __future__ import annotations

from pathlib import Path

from engine.run.events import CustomEvent
from engine.service import Flowmill
from engine.testing import run_node
from nodes.notify import BROADCAST, check_broadcast


def test_one_message_per_run_with_the_count_and_records_pass_through() -> None:
    records = [{"id": i} for i in range(3)]
    result = run_node(BROADCAST, {"message": "{count} sales loaded"}, {"in": records})
    assert result.outputs["out"] == records
    assert result.events == [("broadcast", {"message": "3 sales loaded", "level": "info"})]


def test_per_record_messages_fill_fields_plainly_and_are_capped() -> None:
    records = [{"name": "Müller", "attr": "{x.__class__}"}] + [{"name": str(i)} for i in range(150)]
    config = {"message": "{name} {attr}", "per_record": True, "level": "ok"}
    result = run_node(BROADCAST, config, {"in": records})
    assert len(result.events) == 100
    assert result.events[0] == ("broadcast", {"message": "Müller {x.__class__}", "level": "ok"})
    assert check_broadcast({"message": "{name.__class__}"})[0].field == "message"
    assert check_broadcast({"message": "{count} ok"}) == []


def test_the_event_is_published_on_the_bus_for_the_live_feed(data_dir: Path) -> None:
    flow = {
        "format": "flowmill/1",
        "id": "tell",
        "nodes": [
            {"id": "start", "type": "trigger.manual", "config": {}},
            {"id": "tell", "type": "notify.broadcast", "config": {"message": "refresh please"}},
        ],
        "edges": [{"source": "start", "source_port": "out", "target": "tell", "target_port": "in"}],
    }
    seen: list[CustomEvent] = []
    with Flowmill.open(data_dir) as app:
        app.bus.subscribe(CustomEvent, seen.append)
        assert app.run_flow(flow).state == "succeeded"
    assert [(e.name, e.data["message"]) for e in seen] == [("broadcast", "refresh please")]
