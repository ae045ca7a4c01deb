import json
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"

# a 3D D-LKA net small enough for fast tests: stages 8³/4³/2³/1³ with 8..64 channels
TINY_3D = dict(img_size=(16, 32, 32), patch_size=(2, 4, 4), feature_size=4, depths=(1, 1, 1, 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def reference_manifest(name: str) -> dict[str, list[int]]:
    """The authors' state-dict keys and shapes for preset ``name``."""
    return json.loads((DATA / f"{name}_state_dict.json").read_text())


# the demo-sized tiny net of the test bundle
TINY_BUNDLE_NET = dict(feature_size=4, depths=[1, 1, 1, 1])
TINY_BUNDLE_IMG_SIZE, TINY_BUNDLE_PIXDIM = [32, 64, 64], [3.0, 2.5, 2.5]
# train.json overrides: the tiny net and a cheap validation, so a few demo epochs take seconds
TINY_TRAIN_ARGS = ["--network_def#feature_size", "4", "--network_def#depths", "[1,1,1,1]", "--validate#inferer#overlap", "0.25"]


def save_tiny_model(path, preset="dlka3d_synapse", **network):
    """A model file of a tiny net of ``preset`` with its plan (the demo's patch and spacing for the 3D
    presets); returns the network."""
    from dlka_monai.plan import make_plan, network_plan
    from dlka_monai.networks import create_network
    from dlka_monai.weights import save_model

    torch.manual_seed(0)
    args = {**TINY_BUNDLE_NET, "img_size": TINY_BUNDLE_IMG_SIZE} if preset.startswith("dlka3d") else {}
    net = create_network(preset, **{**args, **network})
    plan = network_plan(net, make_plan(preset), pixdim=TINY_BUNDLE_PIXDIM) if preset.startswith("dlka3d") else network_plan(net)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_model(path, net, plan)
    return net


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
