"""The layering of the project's packages, as data, and the scan that checks it.

Invariant: a module imports only modules of its own layer or of a layer below it. ``secagg`` and ``privacy``
never import each other nor ``training``; ``secagg`` never imports torch. Inside ``training`` the layers run,
bottom to top: shared errors and ledger locations, the workload the clients run, the sans-I/O engine with the
aggregation rules, the run-file config, the in-process driver, our gRPC services, the Flower driver, the CLI.
Every import counts, including those under ``if TYPE_CHECKING`` and inside functions.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TRAINING_LAYERS", "FORBIDDEN", "violations"]

# Bottom to top; a module belongs to the layer of its longest matching prefix.
TRAINING_LAYERS: tuple[tuple[str, ...], ...] = (
    ("training.errors", "training.ledgers", "training"),
    ("training.workload",),
    ("training.engine",),
    ("training.config", "training.deployment"),
    ("training.inprocess",),
    ("training.services",),
    ("training.flower",),
    ("training.cli",),
)

FORBIDDEN: dict[str, set[str]] = {
    "secagg": {"privacy", "training", "torch"},
    "privacy": {"secagg", "training"},
}


def _rank(module: str) -> int | None:
    best: tuple[int, int] | None = None
    for rank, prefixes in enumerate(TRAINING_LAYERS):
        for p in prefixes:
            if module == p or module.startswith(p + "."):
                if best is None or len(p) > best[0]:
                    best = (len(p), rank)
    return None if best is None else best[1]


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) per imported module; ``from training import cli`` imports ``training.cli``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom) and node.level:
            yield node.lineno, "." * node.level + (node.module or "")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                child = f"{node.module}.{a.name}"
                yield node.lineno, child if _rank(child) != _rank(node.module) else node.module


def violations(root: Path) -> Iterator[str]:
    """Every import under ``root`` that breaks the layering, as ``path:line: reason``."""
    for pkg, banned in FORBIDDEN.items():
        for path in sorted((root / pkg).rglob("*.py")):
            for line, name in _imports(path):
                if name.split(".")[0] in banned:
                    yield f"{path.relative_to(root)}:{line}: {pkg} must not import {name}"
    for path in sorted((root / "training").rglob("*.py")):
        here = _module_name(root, path)
        mine = _rank(here)
        for line, name in _imports(path):
            if name.startswith("."):
                yield f"{path.relative_to(root)}:{line}: relative import {name} (name the layer)"
                continue
            theirs = _rank(name)
            if mine is not None and theirs is not None and theirs > mine:
                yield (f"{path.relative_to(root)}:{line}: {here} (layer {mine}) imports {name} "
                       f"(layer {theirs}, above it)")
