"""Every node type in the palette: it can be dragged onto the canvas and its generated form
shows every config key, without a script error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from tests.e2e.test_editor import drop_node, open_editor, select

ISSUE_6 = {
    "mail.send", "trigger.mail", "pdf.render", "http.request", "http.download", "shop.push",
    "trigger.webhook", "trigger.tcp", "trigger.sql_change", "mongo.find", "mongo.write",
    "mongo.aggregate", "trigger.mongo_change", "mqtt.publish", "trigger.mqtt",
    "notify.broadcast", "transform.aggregate", "transform.sort", "transform.join",
    "route.switch",
}  # fmt: skip


def test_every_node_type_has_a_usable_form(login_as: Any, server: Any, screenshots: Path) -> None:
    page = login_as("editor")
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    open_editor(page, f"{server.url}/editor")
    catalog = server.api("editor").get(f"{server.url}/api/node-types").json()
    types = {spec["type"]: spec for spec in catalog}
    assert set(types) >= ISSUE_6  # all in the palette
    for node_type, spec in sorted(types.items()):
        expect(page.locator(f'.palette-item[data-type="{node_type}"]')).to_have_count(1)
        node_id = drop_node(page, node_type, 300, 200)
        select(page, node_id)
        panel = page.locator("#config-panel")
        for key in spec["config_schema"].get("properties", {}):
            expect(panel.locator(f'[data-field="{key}"]').first).to_be_attached()
        if node_type in ("trigger.webhook", "shop.push", "trigger.tcp"):
            page.screenshot(path=str(screenshots / f"form-{node_type}.png"), full_page=True)
        page.keyboard.press("Delete")
        expect(page.locator(f'.drawflow-node[data-node-id="{node_id}"]')).to_have_count(0)
    assert errors == []
