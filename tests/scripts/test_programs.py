"""Every program a test runs is installed by scripts/services.sh, so that on a fresh machine
the suite runs whole: no test may call a program that the test command does not install."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import PROGRAMS

ROOT = Path(__file__).resolve().parents[2]
RUNNERS = {"run", "Popen", "check_output", "check_call", "call"}
ALWAYS_THERE = {"bash"}  # Debian's essential packages: on every machine


def programs_called(path: Path) -> set[str]:
    """Programs named by a literal in ``subprocess.*([NAME, ...])``, ``shutil.which(NAME)``
    or ``require_program(NAME)`` in one file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name = getattr(node.func, "attr", getattr(node.func, "id", ""))
        first = node.args[0]
        if name in RUNNERS and isinstance(first, ast.List) and first.elts:
            first = first.elts[0]
        elif name not in {"which", "require_program"}:
            continue
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            found.add(Path(first.value).name)
    return found


def test_every_program_a_test_runs_is_listed():
    called = {
        name: path.relative_to(ROOT)
        for path in sorted((ROOT / "tests").rglob("*.py"))
        for name in programs_called(path)
    }
    called.pop("secantusd-py", None)  # a test dependency from PyPI, in the venv
    unlisted = {name: str(where) for name, where in called.items() if name not in PROGRAMS}
    assert unlisted == {}, "add them to PROGRAMS in tests/conftest.py and to services.sh"


def test_services_sh_installs_the_package_of_every_program():
    services = (ROOT / "scripts" / "services.sh").read_text("utf-8")
    installed = set()
    for line in re.findall(r"apt_install ([^|&;\n]+)", services):
        installed.update(line.split())
    missing = sorted(set(PROGRAMS.values()) - installed - ALWAYS_THERE)
    assert missing == []


def test_the_audit_sees_every_spelling(tmp_path: Path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import shutil, subprocess\n"
        "subprocess.run(['curl', '-sS'])\n"
        "subprocess.Popen(['/usr/sbin/dovecot', '-F'])\n"
        "shutil.which('litmus')\n"
        "require_program('pdftotext')\n"
    )
    assert programs_called(sample) == {"curl", "dovecot", "litmus", "pdftotext"}
