"""The package's layers, checked on its source: nothing points up, peers do not import each other,
and prediction has one Dataset and one DataLoader (training has the other pair).

Layers, lowest first (docs/architecture.md): runtime <- model <- data <- predict <- photos | ava
<- training <- cli. ``errors`` and ``_version`` import nothing of the package; the package root
(the API facade) and ``__main__`` may use anything and nothing uses them. Imports inside functions
count: a lazy import that points up is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ilgnet_cli"
RANK = {"errors": 0, "_version": 0, "runtime": 1, "model": 2, "data": 3, "predict": 4, "photos": 5, "ava": 5,
        "training": 6, "cli": 7, "__main__": 8, "<root>": 8}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<root>"


def _modules() -> list[tuple[str, Path, ast.Module]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        out.append((name, path, ast.parse(path.read_text(encoding="utf-8"))))
    return out


def _imports(tree: ast.Module) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(tree):  # every import, at module level or inside a function
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [(node.module, node.lineno)]
            found += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
    return [(name, line) for name, line in found if name == "ilgnet_cli" or name.startswith("ilgnet_cli.")]


def test_every_part_has_a_layer():
    parts = {_part(name) for name, _, _ in _modules()}
    assert parts <= set(RANK), f"parts without a layer: {sorted(parts - set(RANK))}"


def test_no_import_points_up_or_across():
    wrong = []
    for name, path, tree in _modules():
        src = _part(name)
        for target, line in _imports(tree):
            dst = _part(target) if target != "ilgnet_cli" else "<root>"
            if dst == src or dst not in RANK:  # ilgnet_cli.photos.x names a submodule of a part
                continue
            if RANK[dst] >= RANK[src] and not (src in ("<root>", "__main__") and dst != src):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({src}) imports {target} ({dst})")
    assert not wrong, "imports that point up or across:\n" + "\n".join(wrong)


def test_no_cycle_between_parts():
    edges: dict[str, set[str]] = {}
    for name, _, tree in _modules():
        for target, _ in _imports(tree):
            dst = _part(target) if target != "ilgnet_cli" else "<root>"
            if dst != _part(name) and dst in RANK:
                edges.setdefault(_part(name), set()).add(dst)
    seen: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for nxt in edges.get(node, ()):
            assert seen.get(nxt) != 1, f"import cycle: {' -> '.join([*stack, node, nxt])}"
            if nxt not in seen:
                visit(nxt, [*stack, node])
        seen[node] = 2

    for node in list(edges):
        if node not in seen:
            visit(node, [])


def _calls_and_classes() -> tuple[list[str], list[str]]:
    loaders, datasets = [], []
    for name, _, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                if called == "DataLoader":
                    loaders.append(f"{name}:{node.lineno}")
            if isinstance(node, ast.ClassDef):
                bases = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
                         for b in node.bases}
                if bases & {"Dataset", "IterableDataset"}:
                    datasets.append(f"{name}.{node.name}")
    return loaders, datasets


def test_one_dataloader_and_one_dataset_for_prediction_one_pair_for_training():
    loaders, datasets = _calls_and_classes()
    assert len(loaders) <= 2, loaders
    assert len(datasets) <= 2, datasets
    assert {d.rsplit(".", 1)[0] for d in datasets} <= {"ilgnet_cli.predict.predictor", "ilgnet_cli.training.train"}


def test_cli_modules_import_no_torch_at_load_time():
    """`ilgnet --help` must not pay for importing torch (1.8 s on 2 cores)."""
    import subprocess
    import sys

    code = ("import sys, ilgnet_cli.cli; heavy = [m for m in ('torch', 'numpy', 'PIL') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "torch" not in out.stdout.split(","), out.stdout
