"""engine/ imports nothing from nodes/, servers/ or designer/ (DESIGN.md, "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]
FORBIDDEN = {
    "engine": {"nodes", "servers", "designer"},
    "nodes": {"servers", "designer"},
    "servers": {"nodes", "designer"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level package names a file imports, however it spells the import."""
    tree = ast.parse(path.read_text("utf-8"), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", ""))
            in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value.split(".")[0])
    return found


def violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imported_packages(path) & FORBIDDEN[package]:
            bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


def test_engine_imports_no_nodes_servers_or_designer():
    assert (ROOT / "engine" / "run" / "executor.py").exists()
    assert violations("engine") == []


def test_nodes_and_servers_import_only_engine():
    assert violations("nodes") == []
    assert violations("servers") == []


def test_the_check_itself_catches_every_spelling(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import nodes.sql\nfrom designer import cli\nimport importlib\n"
        "importlib.import_module('servers.ftps')\n"
    )
    assert imported_packages(bad) >= {"nodes", "designer", "servers"}
