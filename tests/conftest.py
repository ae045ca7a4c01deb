"""Session fixtures: the demo dataset, a tiny bundle and the demo model, each made once per test session.
Shared helpers and the tiny network settings live in ``utils``."""

import os
import shutil
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from utils import ROOT, run, save_tiny_model

# the fewest epochs of the shipped train.json (validation every 10) after which the demo model finds the
# liver of the held-out demo cases: Dice 0.665 with 1 thread and 0.666 with 2 (0.73 after 20 epochs)
DEMO_EPOCHS = 10


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory):
    """The synthetic demo dataset, generated once per test session."""
    from dlka_monai.data import generate_demo_dataset

    out = tmp_path_factory.mktemp("demo")
    generate_demo_dataset(out)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A bundle folder: this repo's configs as they are, and a tiny model (random weights, with its plan)."""
    root = tmp_path_factory.mktemp("bundle")
    shutil.copytree(ROOT / "configs", root / "configs")
    save_tiny_model(root / "models" / "model.pt")
    return root


class DemoModel(NamedTuple):
    """The demo model of the README's set-up command: ``model`` (``<bundle root>/models/model.pt``) and
    ``data_dir`` (the demo dataset it was trained on, ``<bundle root>/data/demo``)."""

    model: Path
    data_dir: Path

    @property
    def bundle_root(self) -> Path:
        return self.model.parents[1]


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory, demo_dataset) -> DemoModel:
    """The README's training command, once per session: the shipped configs/train.json with only
    ``--max_epochs`` lowered (DEMO_EPOCHS), its bundle root holding the session's demo dataset where
    train.json looks for it. Its console output is in ``<bundle root>/train_output.txt``. Do not write
    into ``models/``: other tests read it."""
    root = tmp_path_factory.mktemp("demo_model")
    (root / "data").mkdir()
    os.symlink(demo_dataset, root / "data" / "demo", target_is_directory=True)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(ROOT / "configs" / "train.json")]
    proc = run([*cmd, "--bundle_root", str(root), "--max_epochs", str(DEMO_EPOCHS)], cwd=root, timeout=3000)
    (root / "train_output.txt").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    return DemoModel(root / "models" / "model.pt", root / "data" / "demo")
