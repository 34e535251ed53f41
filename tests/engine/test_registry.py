"""Node discovery through the ``flowmill.nodes`` entry points, as a plugin author sees it."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from engine.errors import DuplicateNodeType, NodeTypeError, UnknownNodeType
from engine.flows.registry import Registry

BUILTINS = {
    "transform.aggregate": "nodes.shaping",
    "transform.sort": "nodes.shaping",
    "transform.join": "nodes.shaping",
    "route.switch": "nodes.shaping",
    "http.request": "nodes.http",
    "http.download": "nodes.http",
    "trigger.manual": "nodes.triggers",
    "trigger.schedule": "nodes.schedule",
    "trigger.file_drop": "nodes.file_drop",
    "file.read": "nodes.files",
    "file.write": "nodes.files",
    "transform.map": "nodes.transform",
    "transform.filter": "nodes.transform",
    "transform.select": "nodes.transform",
    "sql.read": "nodes.sql",
    "sql.write": "nodes.sql",
    "sql.execute": "nodes.sql",
    "util.delay": "nodes.util",
    "pdf.render": "nodes.pdf",
    "mail.send": "nodes.mail",
    "notify.broadcast": "nodes.notify",
    "trigger.mail": "nodes.imap",
    "trigger.tcp": "nodes.tcp",
    "mqtt.publish": "nodes.mqtt",
    "trigger.mqtt": "nodes.mqtt",
    "mongo.find": "nodes.mongo",
    "mongo.write": "nodes.mongo",
    "mongo.aggregate": "nodes.mongo",
    "trigger.mongo_change": "nodes.mongo",
    "shop.push": "nodes.shop",
    "trigger.sql_change": "nodes.sqlchange",
    "trigger.webhook": "nodes.webhook",
}

PLUGIN = """
from engine.spec import NodeSpec

def hello(ctx, config, inputs):
    return {"out": iter([[{"greeting": "Grüß Gott " + config["name"]}]])}

NODES = (
    NodeSpec(type="{type}", title="Hello", category="demo", outputs=("out",), run=hello,
             config_schema={"type": "object", "properties": {"name": {"type": "string"}}}),
)
"""


def install_plugin(root: Path, module: str, node_type: str, monkeypatch: pytest.MonkeyPatch):
    """A distribution on sys.path with a flowmill.nodes entry point, as pip would leave it."""
    (root / f"{module}.py").write_text(PLUGIN.replace("{type}", node_type), "utf-8")
    info = root / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[flowmill.nodes]\n{module} = {module}\n")
    monkeypatch.syspath_prepend(str(root))


def test_builtin_nodes_are_found_through_entry_points():
    registry = Registry.discover()
    for node_type, module in BUILTINS.items():
        assert node_type in registry
        assert registry.module_of(node_type) == module


def test_a_plugin_needs_no_change_to_flowmill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    install_plugin(tmp_path, "flowmill_hello", "demo.hello", monkeypatch)
    registry = Registry.discover()
    spec = registry.get("demo.hello")
    assert registry.module_of("demo.hello") == "flowmill_hello"
    out = list(spec.run(None, {"name": "Müller"}, {})["out"])  # type: ignore[arg-type]
    assert out == [[{"greeting": "Grüß Gott Müller"}]]


def test_duplicate_type_names_both_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    install_plugin(tmp_path, "flowmill_clash", "file.read", monkeypatch)
    with pytest.raises(DuplicateNodeType) as info:
        Registry.discover()
    message = str(info.value)
    assert "'file.read'" in message
    assert "nodes.files" in message and "flowmill_clash" in message


def test_module_without_nodes_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "empty_plugin.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(NodeTypeError, match="empty_plugin defines no NODES"):
        Registry.from_modules(["empty_plugin"])


def test_broken_plugin_import_names_the_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "broken_plugin.py").write_text(textwrap.dedent("import does_not_exist\n"))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(NodeTypeError, match="cannot import node module broken_plugin"):
        Registry.from_modules(["broken_plugin"])


def test_unknown_type_lookup():
    with pytest.raises(UnknownNodeType, match=r"'no\.such'"):
        Registry.discover().get("no.such")


def test_catalog_is_json_with_ports_schemas_and_common_keys():
    catalog = Registry.discover().catalog()
    assert [c["type"] for c in catalog] == sorted(BUILTINS)
    text = json.dumps(catalog)  # every part of it is JSON
    assert "config_schema" in text
    for entry in catalog:
        props = entry["config_schema"]["properties"]
        assert {"on_error", "retries", "retry_delay", "timeout"} <= set(props)
        assert entry["outputs"][-1] == "error"
        assert entry["title"] and entry["description"] and entry["category"]
    manual = next(c for c in catalog if c["type"] == "trigger.manual")
    assert manual["trigger"] is True and manual["inputs"] == []
