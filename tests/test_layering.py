"""The package layering holds (tests/layers.py), and the scan catches an import turned upward."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.layers import TRAINING_LAYERS, violations

ROOT = Path(__file__).resolve().parents[1]


def test_no_import_runs_up_a_layer():
    assert list(violations(ROOT)) == []


def test_every_training_folder_and_top_level_module_has_a_layer():
    named = {p for layer in TRAINING_LAYERS for p in layer}
    for path in sorted((ROOT / "training").iterdir()):
        if path.name.startswith("_") or path.name == "__pycache__":
            continue
        assert f"training.{path.stem}" in named, path.name
    top = [p.name for p in (ROOT / "training").glob("*.py") if p.name != "__init__.py"]
    assert len(top) <= 5, top


@pytest.mark.parametrize("module, line, upward", [
    ("training/engine/core.py", "from training.inprocess.federation import Federation", "training.inprocess"),
    ("training/workload/trainer.py", "import training.cli", "training.cli"),
    ("training/services/node.py", "from training.flower import client", "training.flower"),
    ("training/engine/rules/base.py", "from training import config", "training.config"),
    ("secagg/masking/client.py", "import torch", "torch"),
    ("privacy/ledger.py", "from secagg import encoding", "secagg"),
])
def test_an_import_turned_upward_is_reported(tmp_path, module, line, upward):
    for pkg in ("training", "secagg", "privacy"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / module
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text((target.read_text() if target.exists() else "") + f"\n{line}\n")
    found = list(violations(tmp_path))
    assert len(found) == 1 and found[0].startswith(module) and upward in found[0], found


def test_a_relative_import_is_reported(tmp_path):
    shutil.copytree(ROOT / "training", tmp_path / "training", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "training" / "engine" / "extra.py").write_text("from . import core\n")
    assert [v for v in violations(tmp_path) if "relative import" in v] != []
