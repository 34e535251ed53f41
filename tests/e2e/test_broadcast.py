"""A flow's notify.broadcast message appears on every open page as a notice."""

from __future__ import annotations

from typing import Any

TELL = {"message": "Umsätze aktualisiert: bitte neu laden", "level": "ok"}


def test_a_broadcast_shows_on_an_open_dashboard(server: Any, login_as: Any) -> None:
    page = login_as("viewer")
    page.wait_for_selector("#live-state.on")
    editor = server.api("editor")
    flow = {
        "format": "flowmill/1",
        "id": "tell-everyone",
        "nodes": [
            {"id": "start", "type": "trigger.manual", "config": {}},
            {"id": "tell", "type": "notify.broadcast", "config": TELL},
        ],
        "edges": [{"source": "start", "source_port": "out", "target": "tell", "target_port": "in"}],
    }
    assert editor.post(f"{server.url}/api/flows", json={"flow": flow}).status_code == 201
    assert editor.post(f"{server.url}/api/flows/tell-everyone/run", json={}).status_code == 201
    notice = page.wait_for_selector(".toast.broadcast.ok")
    assert "Umsätze aktualisiert" in notice.inner_text()
    assert not page.errors
