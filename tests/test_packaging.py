"""What ``pip install .`` ships (pyproject.toml): every package of the source tree and the data
the paper's protocol needs offline. An editable install (as the tests run) hides a package left
out of the list; a wheel does not (runtime/, data/ and predict/ were missing once: 7ff4b2e)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in Python 3.11+")

ROOT = Path(__file__).resolve().parent.parent
# Files the package needs at run time besides its modules.
DATA = ["data/means/*.npz", "data/lists/*/*.txt.xz", "ava/manifests/*.json"]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def test_every_package_of_the_tree_is_listed():
    tree = ROOT / "ilgnet_cli"
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in tree.rglob("__init__.py")}
    # data folders (no __init__.py) must be listed too, or setuptools warns and may leave them out
    found |= {".".join(p.parent.relative_to(ROOT).parts) for pattern in DATA for p in tree.glob(pattern)}
    listed = set(_setuptools()["packages"])
    assert found - listed == set()


def test_the_protocols_data_is_declared():
    data = _setuptools()["package-data"]
    for package, patterns in data.items():
        folder = ROOT / "weights" if package == "ilgnet_cli._registry" else ROOT.joinpath(*package.split("."))
        for pattern in patterns:
            assert list(folder.glob(pattern)), (package, pattern)
    assert {"ilgnet_cli.data.means", "ilgnet_cli.data.lists.AVA1", "ilgnet_cli.data.lists.AVA2",
            "ilgnet_cli._registry", "ilgnet_cli.ava.manifests"} <= set(data)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel ``pip install .`` would install, built offline from a copy of the tree (so no
    build/ or egg-info lands in the checkout)."""
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools")
    src = tmp_path_factory.mktemp("src")
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("ilgnet_cli", "weights"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(out)], capture_output=True, text=True, timeout=300)
    if done.returncode and "No module named pip" in done.stderr:
        pytest.skip("pip is not installed")
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = out.glob("*.whl")
    with zipfile.ZipFile(built) as zf:
        yield zf


def test_the_wheel_holds_every_module_and_data_file(wheel):
    shipped = set(wheel.namelist())
    tree = ROOT / "ilgnet_cli"
    wanted = {p.relative_to(ROOT).as_posix() for p in tree.rglob("*.py") if "__pycache__" not in p.parts}
    wanted |= {p.relative_to(ROOT).as_posix() for pattern in DATA for p in tree.glob(pattern)}
    wanted.add("ilgnet_cli/_registry/registry.json")
    assert wanted - shipped == set()
    assert not [n for n in shipped if n.startswith("tests/") or "__pycache__" in n]


def test_the_wheel_installs_the_ilgnet_command(wheel):
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    assert "ilgnet = ilgnet_cli.cli:main" in text
