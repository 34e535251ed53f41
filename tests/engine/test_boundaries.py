"""Import boundaries: between the packages (DESIGN.md, "Layout") and between the rooms
inside engine/ and designer/, as each room's ``__init__`` docstring states them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).parents[2]
FORBIDDEN = {
    "engine": {"nodes", "servers", "designer"},
    "nodes": {"servers", "designer"},
    "servers": {"nodes", "designer"},
}

# What may stand at the top of a package beside its rooms; anything else goes in a room.
TOP_LEVEL = {
    "engine": {"__init__", "errors", "spec", "testing", "config", "clock", "service"},
    "designer": {"__init__"},
}


def names(text: str) -> set[str]:
    """The dotted names in a rule's text: ``"engine.run, engine.queue."``."""
    return set(re.findall(r"[a-z_][\w.]*[a-z_]", text))


# room -> what no file of it may import: the "May not import:" paragraph of its __init__
ROOM_RULES = {
    "engine.store": names(
        "engine.flows, engine.run, engine.queue, engine.batch, engine.access, engine.service, "
        "engine.testing, engine.spec, engine.config, engine.clock"
    ),
    "engine.access": names(
        "engine.flows, engine.run, engine.queue, engine.batch, engine.service, "
        "engine.testing, engine.spec, engine.config"
    ),
    "engine.flows": names(
        "engine.run, engine.queue, engine.batch, engine.access, engine.service, "
        "engine.testing, engine.config"
    ),
    "engine.run": names(
        "engine.queue, engine.batch, engine.access, engine.service, engine.testing, "
        "engine.config, engine.clock"
    ),
    "engine.queue": names(
        "engine.flows, engine.batch, engine.access, engine.service, engine.testing, "
        "engine.spec, engine.config"
    ),
    "engine.batch": names("engine.access, engine.testing, engine.spec"),
    "designer.web": names("designer.cli, designer.demo"),
    "designer.cli": names("nodes, flask, flask_socketio"),
    "designer.demo": names("designer.web, designer.cli, engine, nodes, servers"),
}
# (room, other room) -> the only modules of the other room that the room may import
ONLY = {
    ("engine.run", "engine.store"): {"engine.store.interface"},
    ("engine.queue", "engine.run"): {"engine.run.events"},
}
_ROOMS = {room for room in ROOM_RULES if room.startswith("engine.")}
# the modules beside engine's rooms (engine/__init__.py): the ground floor imports no room;
# the service layer stands over every room but the batch server
TOP_RULES = {
    **{
        f"engine.{name}": {*_ROOMS, "engine.service"}
        for name in ("errors", "spec", "testing", "config", "clock")
    },
    "engine.service": {"engine.batch", "engine.testing"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, module: str | None = None) -> set[str]:
    """Dotted names a file imports, however it spells the import: ``from a import b``
    gives ``a`` and ``a.b`` (b may be a module); relative imports are resolved against
    ``module``, the file's own dotted name (found from its path when not given)."""
    tree = ast.parse(path.read_text("utf-8"), str(path))
    if module is None:
        module = module_name(path) if path.is_relative_to(ROOT) else path.stem
    package = module
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base:
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", ""))
            in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def imported_packages(path: Path) -> set[str]:
    """Top-level package names a file imports, however it spells the import."""
    return {name.split(".")[0] for name in imported_modules(path) if name}


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imported_packages(path) & FORBIDDEN[package]:
            bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


def rooms(package: str) -> list[str]:
    """The sub-packages of a package: its folders that hold Python code."""
    return sorted(
        f"{package}.{folder.name}"
        for folder in (ROOT / package).iterdir()
        if folder.is_dir() and folder.name != "__pycache__" and any(folder.rglob("*.py"))
    )


def files_of(unit: str) -> list[Path]:
    """The files of a room (its folder) or of a top-level module."""
    path = ROOT.joinpath(*unit.split("."))
    return sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


def breaches(unit: str, imported: set[str], forbidden: set[str]) -> list[str]:
    """What of ``imported`` (names imported by a file of ``unit``) breaks its rules."""
    bad = []
    for name in sorted(imported):
        for other in sorted(forbidden):
            if within(name, other):
                bad.append(f"{name} ({unit} may not import {other})")
        for (room, other), allowed in ONLY.items():
            narrow = room == unit and within(name, other) and name != other
            if narrow and not any(within(name, ok) for ok in allowed):
                only = ", ".join(sorted(allowed))
                bad.append(f"{name} ({unit} may take from {other} only {only})")
    return bad


def rule_violations(unit: str, forbidden: set[str]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {breach}"
        for path in files_of(unit)
        for breach in breaches(unit, imported_modules(path), forbidden)
    ]


def stated_rule(room: str) -> set[str] | None:
    """The names of the "May not import:" paragraph of a room's ``__init__`` docstring."""
    init = ROOT.joinpath(*room.split("."), "__init__.py")
    doc = ast.get_docstring(ast.parse(init.read_text("utf-8"))) if init.exists() else None
    match = re.search(r"^May not import:(.*?)(?:\n\s*\n|\Z)", doc or "", re.M | re.S)
    return names(match.group(1)) if match else None


def unit_of(name: str, package: str) -> str | None:
    """The room or top-level module of ``package`` that a dotted name lies in."""
    parts = name.split(".")
    if parts[0] != package or len(parts) < 2:
        return None
    return ".".join(parts[:2])


def room_graph(package: str) -> nx.DiGraph:
    graph = nx.DiGraph()
    units = rooms(package) + [
        f"{package}.{path.stem}"
        for path in (ROOT / package).glob("*.py")
        if path.stem != "__init__"
    ]
    for unit in units:
        graph.add_node(unit)
        for path in files_of(unit):
            for name in imported_modules(path):
                other = unit_of(name, package)
                if other and other != unit and other in units:
                    graph.add_edge(unit, other, where=str(path.relative_to(ROOT)))
    return graph


def test_engine_imports_no_nodes_servers_or_designer():
    assert (ROOT / "engine" / "run" / "executor.py").exists()
    assert violations("engine") == []


def test_nodes_and_servers_import_only_engine():
    assert violations("nodes") == []
    assert violations("servers") == []


@pytest.mark.parametrize("package", sorted(TOP_LEVEL))
def test_new_modules_go_into_a_room_not_the_top(package: str):
    top = {path.stem for path in (ROOT / package).glob("*.py")}
    assert top - TOP_LEVEL[package] == set(), f"put these into a room of {package}/"


@pytest.mark.parametrize("package", ["engine", "designer"])
def test_every_room_says_what_it_may_not_import(package: str):
    assert rooms(package), f"{package}/ has no rooms"
    for room in rooms(package):
        assert room in ROOM_RULES, f"{room}: a new room needs its rule here and in its __init__"
        stated = stated_rule(room)
        assert stated is not None, (
            f"{room.replace('.', '/')}/__init__.py needs a docstring saying what the room is "
            "for, with a paragraph 'May not import: ...'"
        )
        assert stated == ROOM_RULES[room], f"{room}: its docstring and ROOM_RULES differ"


@pytest.mark.parametrize("room", sorted(ROOM_RULES))
def test_rooms_keep_their_rules(room: str):
    assert rule_violations(room, ROOM_RULES[room]) == []


@pytest.mark.parametrize("module", sorted(TOP_RULES))
def test_the_modules_beside_the_rooms_keep_their_floor(module: str):
    assert rule_violations(module, TOP_RULES[module]) == []


@pytest.mark.parametrize("package", ["engine", "designer"])
def test_no_import_circle_between_rooms(package: str):
    graph = room_graph(package)
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return
    steps = [f"{a} -> {b} ({graph.edges[a, b]['where']})" for a, b in cycle]
    pytest.fail("import circle between rooms: " + "; ".join(steps))


def test_the_store_interface_never_imports_its_implementations():
    imported = imported_modules(ROOT / "engine" / "store" / "interface.py")
    for implementation in ("engine.store.sql", "engine.store.memory", "engine.store.factory"):
        assert not any(within(name, implementation) for name in imported), implementation


def test_the_check_itself_catches_every_spelling(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import nodes.sql\nfrom designer import cli\nimport importlib\n"
        "importlib.import_module('servers.ftps')\n"
    )
    assert imported_packages(bad) >= {"nodes", "designer", "servers"}


def test_the_room_check_resolves_relative_imports(tmp_path: Path):
    probe = tmp_path / "probe.py"
    probe.write_text("from ..run import events\nfrom . import sql\nfrom .memory import X\n")
    found = imported_modules(probe, "engine.store.probe")
    assert {"engine.run.events", "engine.store.sql", "engine.store.memory"} <= found
    assert breaches("engine.store", found, {"engine.run"}) == [
        "engine.run (engine.store may not import engine.run)",
        "engine.run.events (engine.store may not import engine.run)",
    ]
    assert breaches("engine.queue", {"engine.run.executor"}, set()) == [
        "engine.run.executor (engine.queue may take from engine.run only engine.run.events)"
    ]
