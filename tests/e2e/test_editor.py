"""The flow editor in a real browser: build a flow by dragging and wiring, see validation
on the canvas, save, run, watch the nodes live, inspect the records, and see another
user's save; a viewer only looks."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

CSV_ROWS = [
    ("A-100", 2, 1.50),
    ("B-200", 3, 2.25),
    ("C-300", 1, 10.00),
    ("D-400", 5, 0.40),
]


def write_orders_csv(folder: Path) -> Path:
    path = folder / "orders.csv"
    lines = ["sku,qty,price", *(f"{sku},{qty},{price}" for sku, qty, price in CSV_ROWS)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def open_editor(page: Page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector('.palette-item[data-type="file.read"]')
    expect(page.locator("#editor")).not_to_have_class(re.compile("is-loading"))


def drop_node(page: Page, node_type: str, x: int, y: int) -> str:
    """Drag a palette item onto the canvas at (x, y) of the canvas; the new node's id."""
    before = set(
        page.eval_on_selector_all(".drawflow-node", "els => els.map(e => e.dataset.nodeId)")
    )
    page.drag_and_drop(
        f'.palette-item[data-type="{node_type}"]', "#canvas", target_position={"x": x, "y": y}
    )
    page.wait_for_function(
        "n => document.querySelectorAll('.drawflow-node').length === n", arg=len(before) + 1
    )
    after = page.eval_on_selector_all(".drawflow-node", "els => els.map(e => e.dataset.nodeId)")
    (new,) = set(after) - before
    assert re.fullmatch(rf"{node_type.split('.')[-1].replace('_', '-')}-[0-9a-f]{{4}}", new), new
    return new


def node(page: Page, node_id: str) -> Any:
    return page.locator(f'.drawflow-node[data-node-id="{node_id}"]')


def wire(
    page: Page, source: str, target: str, source_port: str = "out", target_port: str = "in"
) -> None:
    """Drag from an output port to an input port, as a person does."""
    edges = page.locator("#canvas .connection").count()
    start = node(page, source).locator(f'.output[data-port="{source_port}"]').bounding_box()
    end = node(page, target).locator(f'.input[data-port="{target_port}"]').bounding_box()
    assert start and end
    page.mouse.move(start["x"] + start["width"] / 2, start["y"] + start["height"] / 2)
    page.mouse.down()
    page.mouse.move(end["x"] + end["width"] / 2, end["y"] + end["height"] / 2, steps=12)
    page.mouse.up()
    expect(page.locator("#canvas .connection")).to_have_count(edges + 1)


def select(page: Page, node_id: str) -> None:
    node(page, node_id).locator(".fm-card-name").click()
    expect(page.locator("#config-panel")).to_have_attribute("data-node", node_id)


def deselect(page: Page) -> None:
    box = page.locator("#canvas").bounding_box()
    assert box
    page.mouse.click(box["x"] + box["width"] - 30, box["y"] + 30)
    expect(page.locator("#config-panel")).to_have_attribute("data-node", "")


def add_map_entry(page: Page, field: str, key: str, value: str) -> None:
    editor = page.locator(f'#config-panel [data-field="{field}"]')
    editor.locator("button.fm-add").click()
    row = editor.locator(".fm-map-row").last
    row.locator(".fm-key").fill(key)
    value_box = row.locator(".fm-val")
    if value_box.evaluate("e => e.tagName") == "SELECT":
        value_box.select_option(value)
    else:
        value_box.fill(value)


def wait_valid(page: Page) -> None:
    expect(page.locator("#validity")).to_have_class(re.compile(r"\bvalid\b"))


def test_editor_builds_wires_validates_saves_runs_and_inspects_a_flow(
    login_as: Any, server: Any, screenshots: Path, tmp_path: Path
) -> None:
    csv = write_orders_csv(server.data_dir)
    db = tmp_path / "orders.db"
    page = login_as("editor")
    open_editor(page, f"{server.url}/editor")

    # build: manual trigger → file.read → transform.map → sql.write, all dragged from the palette
    manual = drop_node(page, "trigger.manual", 110, 160)
    read = drop_node(page, "file.read", 390, 160)
    mapper = drop_node(page, "transform.map", 390, 400)
    write = drop_node(page, "sql.write", 680, 400)
    wire(page, manual, read)
    wire(page, read, mapper)
    wire(page, mapper, write)

    # a new transform.map has no fields yet: marked on the node and listed
    expect(node(page, mapper)).to_have_class(re.compile("has-issues"))
    expect(page.locator("#issues")).to_contain_text("'fields' is a required property")

    # the flow: id, name and the run parameter the manual trigger hands to file.read
    deselect(page)
    page.fill("#flow-id", "e2e-orders")
    page.fill("#flow-name", "Orders to SQLite")
    page.click("#config-panel [data-field=params] button.fm-add")
    page.locator(".fm-param-row .fm-param-name").fill("path")
    page.locator(".fm-param-row .fm-param-value").fill(str(csv))

    select(page, read)
    add_map_entry(page, "types", "qty", "int")
    add_map_entry(page, "types", "price", "float")
    page.fill("#node-name", "Orders CSV")
    expect(node(page, read).locator(".fm-card-name")).to_have_text("Orders CSV")

    select(page, mapper)
    add_map_entry(page, "fields", "total", "round(qty * price, 2)")
    select(page, write)
    expect(page.locator('#config-panel [data-field="url"]')).to_be_visible()
    page.fill('#config-panel [name="cfg.url"]', f"sqlite:///{db}")
    page.fill('#config-panel [name="cfg.table"]', "orders")
    page.check('#config-panel [name="cfg.create_table"]')
    wait_valid(page)
    expect(page.locator(".drawflow-node.has-issues")).to_have_count(0)
    page.screenshot(path=str(screenshots / "editor-built.png"))

    # a wire back from sql.write to file.read closes a cycle: every node on it is marked
    wire(page, write, read)
    expect(page.locator(".drawflow-node.in-cycle")).to_have_count(3)
    for node_id in (read, mapper, write):
        expect(node(page, node_id)).to_have_class(re.compile("in-cycle"))
        expect(node(page, node_id).locator(".fm-card-issue")).to_contain_text("cycle:")
    expect(node(page, manual)).not_to_have_class(re.compile("in-cycle"))
    expect(page.locator("#issues")).to_contain_text(f"cycle: {read} → {mapper} → {write} → {read}")
    expect(page.locator("#canvas .connection.fm-edge-cycle")).to_have_count(3)
    page.screenshot(path=str(screenshots / "editor-cycle.png"))

    # undo takes the wire away again (the canvas has the focus, as after a click)
    deselect(page)
    page.keyboard.press("Control+z")
    expect(page.locator("#canvas .connection")).to_have_count(3)
    expect(page.locator(".drawflow-node.in-cycle")).to_have_count(0)
    wait_valid(page)

    # save: a new flow is created and the URL names it
    expect(page.locator("#dirty-indicator")).to_be_visible()
    expect(page.locator("#btn-run")).to_be_disabled()  # unsaved: save first
    page.click("#btn-save")
    page.wait_for_url(f"{server.url}/editor/e2e-orders")
    expect(page.locator("#dirty-indicator")).to_be_hidden()
    saved = server.api("editor").get(f"{server.url}/api/flows/e2e-orders").json()["flow"]
    assert {n["id"]: n["type"] for n in saved["nodes"]} == {
        manual: "trigger.manual",
        read: "file.read",
        mapper: "transform.map",
        write: "sql.write",
    }
    assert sorted(
        (e["source"], e["source_port"], e["target"], e["target_port"]) for e in saved["edges"]
    ) == sorted(
        [(manual, "out", read, "in"), (read, "out", mapper, "in"), (mapper, "out", write, "in")]
    )
    assert saved["nodes"][[n["id"] for n in saved["nodes"]].index(mapper)]["config"] == {
        "fields": {"total": "round(qty * price, 2)"}
    }
    assert all(set(n["ui"]) == {"x", "y"} for n in saved["nodes"])

    # export of a saved flow is the server's canonical file
    with page.expect_download() as download:
        page.click("#btn-export")
    exported = tmp_path / "exported.flow.json"
    download.value.save_as(exported)
    canonical = server.api("editor").get(f"{server.url}/api/flows/e2e-orders/export")
    assert exported.read_bytes() == canonical.content

    # someone else has the same flow open
    other = login_as("admin")
    open_editor(other, f"{server.url}/editor/e2e-orders")
    expect(other.locator(f'.drawflow-node[data-node-id="{write}"]')).to_be_visible()

    # run now: the params dialog is prefilled from the flow's params
    page.click("#btn-run")
    expect(page.locator("#run-dialog")).to_be_visible()
    expect(page.locator('#run-params [data-param="path"]')).to_have_value(str(csv))
    page.click("#run-start")
    expect(page.locator("#run-state")).to_have_attribute("data-state", "succeeded")
    for node_id in (manual, read, mapper, write):
        expect(node(page, node_id)).to_have_class(re.compile("state-succeeded"))
    rows = len(CSV_ROWS)
    expect(node(page, read).locator(".node-counts")).to_have_attribute("data-out", str(rows))
    expect(node(page, mapper).locator(".node-counts")).to_have_text(f"in {rows} · out {rows}")
    expect(node(page, write).locator(".node-counts")).to_have_attribute("data-in", str(rows))
    expect(node(page, manual).locator(".node-counts")).to_have_text("out 1")
    page.screenshot(path=str(screenshots / "editor-run.png"))

    # the inspector: the selected node's first output records and the run's log
    select(page, mapper)
    sample = page.locator("#inspector-sample table.fm-sample")
    expect(sample.locator("tbody tr")).to_have_count(rows)
    expect(sample.locator("thead")).to_contain_text("total")
    expect(sample.locator("tbody tr").first).to_contain_text("A-100")
    expect(sample.locator("tbody tr").nth(1)).to_contain_text("6.75")
    page.screenshot(path=str(screenshots / "editor-inspector.png"))
    select(page, write)
    page.click("#tab-log")
    expect(page.locator("#inspector-log")).to_contain_text(f"table orders: {rows} inserted")
    deselect(page)
    expect(page.locator("#inspector-log")).to_contain_text("job succeeded")

    with sqlite3.connect(db) as con:
        got = con.execute("SELECT sku, qty, price, total FROM orders ORDER BY sku").fetchall()
    assert got == [(sku, qty, price, round(qty * price, 2)) for sku, qty, price in CSV_ROWS]

    # the editor saves again: the other user's editor offers a reload, ours does not
    page.fill("#flow-name", "Orders to SQLite (v2)")
    page.click("#btn-save")
    expect(page.locator("#dirty-indicator")).to_be_hidden()
    notice = other.locator("#flow-saved-notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("saved by editor")
    other.screenshot(path=str(screenshots / "editor-saved-notice.png"))
    page.wait_for_timeout(1000)  # the save's live event has reached our page by now
    expect(page.locator("#flow-saved-notice")).to_have_count(0)
    other.click("#flow-saved-reload")
    expect(other.locator("#flow-saved-notice")).to_have_count(0)
    expect(other.locator("#flow-title")).to_have_text("Orders to SQLite (v2)")

    assert not page.errors, page.errors
    assert not other.errors, other.errors


def test_editor_edits_with_keyboard_undo_copy_paste_delete_and_round_trips_a_file(
    login_as: Any, server: Any, screenshots: Path, tmp_path: Path
) -> None:
    page = login_as("editor")
    open_editor(page, f"{server.url}/editor")
    flt = drop_node(page, "transform.filter", 200, 200)
    select(page, flt)
    page.fill('#config-panel [name="cfg.condition"]', "qty > 0")
    expect(page.locator('#config-panel [name="cfg.condition"]')).to_have_class(re.compile("code"))
    expect(node(page, flt).locator(".fm-card-summary")).to_contain_text("qty > 0")

    # copy and paste: a new id, the same config, shifted
    node(page, flt).locator(".fm-card-name").click()
    page.keyboard.press("Control+c")
    page.keyboard.press("Control+v")
    expect(page.locator(".drawflow-node")).to_have_count(2)
    ids = page.eval_on_selector_all(".drawflow-node", "els => els.map(e => e.dataset.nodeId)")
    (copy,) = set(ids) - {flt}
    assert copy.startswith("filter-")
    original = node(page, flt).bounding_box()
    pasted = node(page, copy).bounding_box()
    assert original and pasted and pasted["x"] > original["x"] and pasted["y"] > original["y"]
    expect(page.locator("#config-panel")).to_have_attribute("data-node", copy)
    expect(page.locator('#config-panel [name="cfg.condition"]')).to_have_value("qty > 0")

    # move the copy out of the way (by its title bar), wire, then delete it with the Delete
    # key: its wire goes too
    title = node(page, copy).locator(".fm-card-head").bounding_box()
    assert title
    page.mouse.move(title["x"] + 60, title["y"] + 10)
    page.mouse.down()
    page.mouse.move(title["x"] + 260, title["y"] + 190, steps=10)
    page.mouse.up()
    moved = node(page, copy).bounding_box()
    assert moved and moved["x"] == pasted["x"] + 200 and moved["y"] == pasted["y"] + 180
    wire(page, flt, copy)
    node(page, copy).locator(".fm-card-name").click()
    page.keyboard.press("Delete")
    expect(page.locator(".drawflow-node")).to_have_count(1)
    expect(page.locator("#canvas .connection")).to_have_count(0)

    # undo brings node and wire back in one step, redo removes them again (toolbar too)
    page.keyboard.press("Control+z")
    expect(page.locator(".drawflow-node")).to_have_count(2)
    expect(page.locator("#canvas .connection")).to_have_count(1)
    page.keyboard.press("Control+Shift+z")
    expect(page.locator(".drawflow-node")).to_have_count(1)
    page.click("#btn-undo")
    expect(page.locator(".drawflow-node")).to_have_count(2)
    page.click("#btn-redo")
    expect(page.locator(".drawflow-node")).to_have_count(1)

    # zoom buttons
    page.click("#btn-zoom-in")
    expect(page.locator("#btn-zoom-reset")).to_have_text("110%")
    page.click("#btn-zoom-reset")
    expect(page.locator("#btn-zoom-reset")).to_have_text("100%")

    # export the unsaved canvas, import it again into a fresh editor
    deselect(page)
    page.fill("#flow-id", "e2e-roundtrip")
    with page.expect_download() as download:
        page.click("#btn-export")
    exported = tmp_path / "e2e-roundtrip.flow.json"
    download.value.save_as(exported)
    assert download.value.suggested_filename == "e2e-roundtrip.flow.json"
    data = json.loads(exported.read_text(encoding="utf-8"))
    assert data["id"] == "e2e-roundtrip" and [n["id"] for n in data["nodes"]] == [flt]
    assert data["nodes"][0]["config"] == {"condition": "qty > 0"}

    page.once("dialog", lambda dialog: dialog.accept())  # discard the unsaved flow
    page.click("#btn-new")
    expect(page.locator(".drawflow-node")).to_have_count(0)
    page.set_input_files("#import-file", str(exported))
    expect(page.locator(f'.drawflow-node[data-node-id="{flt}"]')).to_be_visible()
    expect(page.locator("#flow-title")).to_have_text("e2e-roundtrip")
    expect(page.locator("#dirty-indicator")).to_be_visible()  # imported, not yet saved
    # a filter without input is reported as such, on its port
    expect(node(page, flt).locator('.input[data-port="in"]')).to_have_class(
        re.compile("port-missing")
    )

    # a file with a wire from a port the node type does not have: drawn, and reported
    broken = {
        "format": "flowmill/1",
        "id": "e2e-broken",
        "nodes": [
            {"id": "manual-aaaa", "type": "trigger.manual", "config": {}, "ui": {"x": 60, "y": 60}},
            {
                "id": "filter-bbbb",
                "type": "transform.filter",
                "config": {"condition": "qty >"},
                "ui": {"x": 360, "y": 60},
            },
        ],
        "edges": [
            {
                "source": "manual-aaaa",
                "source_port": "rows",
                "target": "filter-bbbb",
                "target_port": "in",
            }
        ],
    }
    path = tmp_path / "e2e-broken.flow.json"
    path.write_text(json.dumps(broken), encoding="utf-8")
    page.once("dialog", lambda dialog: dialog.accept())
    page.set_input_files("#import-file", str(path))
    expect(node(page, "manual-aaaa").locator('.output[data-port="rows"]')).to_have_class(
        re.compile("port-unknown")
    )
    expect(page.locator("#canvas .connection")).to_have_count(1)
    expect(page.locator("#issues")).to_contain_text("unknown output port 'rows'")
    expect(node(page, "filter-bbbb")).to_have_class(re.compile("has-issues"))
    expect(node(page, "filter-bbbb").locator(".fm-card-issue")).to_contain_text("syntax error")
    select(page, "filter-bbbb")  # the expression's problem sits under its field
    expect(page.locator('#config-panel [data-field="condition"] .fm-field-issue')).to_contain_text(
        "invalid syntax at position 1"
    )
    page.screenshot(path=str(screenshots / "editor-import-issues.png"))
    assert not page.errors, page.errors


def test_viewer_sees_the_editor_read_only(login_as: Any, server: Any, screenshots: Path) -> None:
    flow = {
        "format": "flowmill/1",
        "id": "e2e-readonly",
        "name": "Look, don't touch",
        "nodes": [
            {"id": "manual-0001", "type": "trigger.manual", "config": {}, "ui": {"x": 80, "y": 80}},
            {
                "id": "delay-0002",
                "type": "util.delay",
                "config": {"seconds": 0},
                "ui": {"x": 380, "y": 80},
            },
        ],
        "edges": [
            {
                "source": "manual-0001",
                "source_port": "out",
                "target": "delay-0002",
                "target_port": "in",
            }
        ],
    }
    reply = server.api("editor").post(f"{server.url}/api/flows", json={"flow": flow})
    assert reply.status_code == 201, reply.text
    page = login_as("viewer")
    open_editor(page, f"{server.url}/editor/e2e-readonly")
    expect(page.locator("#readonly-badge")).to_be_visible()
    expect(page.locator("#btn-save")).to_be_disabled()
    expect(page.locator("#btn-run")).to_be_disabled()  # a viewer may not run jobs
    expect(page.locator("#btn-import")).to_be_hidden()
    assert page.get_attribute('.palette-item[data-type="file.read"]', "draggable") is None

    # no drop, no moving, no wiring, no deleting
    page.drag_and_drop(
        '.palette-item[data-type="file.read"]', "#canvas", target_position={"x": 300, "y": 300}
    )
    expect(page.locator(".drawflow-node")).to_have_count(2)
    before = node(page, "delay-0002").bounding_box()
    assert before
    page.mouse.move(before["x"] + 100, before["y"] + 40)
    page.mouse.down()
    page.mouse.move(before["x"] + 260, before["y"] + 240, steps=8)
    page.mouse.up()
    assert node(page, "delay-0002").bounding_box() == before
    page.keyboard.press("Delete")
    expect(page.locator(".drawflow-node")).to_have_count(2)

    # selecting still shows the settings, but nothing can be changed
    select(page, "delay-0002")
    page.screenshot(path=str(screenshots / "editor-readonly.png"))
    seconds = page.locator('#config-panel [name="cfg.seconds"]')
    expect(seconds).to_have_value("0")
    expect(seconds).to_be_disabled()
    expect(page.locator("#node-name")).to_be_disabled()
    deselect(page)
    expect(page.locator("#flow-name")).to_be_disabled()
    expect(page.locator("#config-panel button.fm-add")).to_be_hidden()  # no "+ Add parameter"
    assert not page.errors, page.errors
