"""What the documentation points at exists: every test file and test it cites, every script it
tells a reader to run, and every pytest command it prints selects tests (a renamed test must
not leave a guarantee pointing at nothing)."""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Code whose docstrings and help texts cite tests and scripts too (CHANGELOG is history: not checked).
CODE = [*sorted((ROOT / "ilgnet_cli").rglob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py")),
        *sorted((ROOT / "scripts").glob("*.py"))]
TEST_REF = re.compile(r"tests/(test_\w+\.py)(?:::(\w+))?")
SCRIPT_REF = re.compile(r"\b((?:benchmarks|scripts)/\w+\.py)\b")
PYTEST_CMD = re.compile(r"`([^`]*python -m pytest[^`]*)`")


def _refs(pattern: re.Pattern[str]) -> list[tuple[str, tuple[str, ...]]]:
    found = []
    for path in DOCS + CODE:
        for m in pattern.finditer(path.read_text(encoding="utf-8")):
            found.append((f"{path.relative_to(ROOT)}", m.groups()))
    return found


def _test_names(file: Path) -> set[str]:
    tree = ast.parse(file.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)}


def test_every_cited_test_exists():
    refs = _refs(TEST_REF)
    assert len(refs) >= 10  # the guarantees map alone cites dozens
    missing = []
    for where, (file, name) in refs:
        path = ROOT / "tests" / file
        if not path.is_file() or (name and name not in _test_names(path)):
            missing.append(f"{where}: tests/{file}{'::' + name if name else ''}")
    assert missing == []


def test_every_cited_script_exists():
    missing = [f"{where}: {script}" for where, (script,) in _refs(SCRIPT_REF) if not (ROOT / script).is_file()]
    assert missing == []


def _pytest_commands() -> list[tuple[str, str]]:
    commands = []
    for path in DOCS:
        for m in PYTEST_CMD.finditer(path.read_text(encoding="utf-8")):
            cmd = m.group(1)
            commands.extend((f"{path.relative_to(ROOT)}", part.strip()) for part in cmd.split("&&")
                            if "pytest" in part)
    return commands


@pytest.mark.parametrize(("where", "command"), _pytest_commands())
def test_documented_pytest_commands_select_tests(where, command):
    words = shlex.split(command)
    args = words[words.index("pytest") + 1:]
    run = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    collected = re.search(r"(\d+)(?:/\d+)? tests? collected|(\d+) selected", run.stdout)
    assert run.returncode == 0 and collected, f"{where}: `{command}` selects nothing\n{run.stdout[-800:]}"
