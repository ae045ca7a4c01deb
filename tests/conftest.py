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


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory):
    """The synthetic demo dataset, generated once per test session."""
    from dlka_monai.data import generate_demo_dataset

    out = tmp_path_factory.mktemp("demo")
    generate_demo_dataset(out)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A bundle folder: this repo's configs with a tiny net, and random weights for it."""
    from dlka_monai.networks import create_network

    root = tmp_path_factory.mktemp("bundle")
    shutil.copytree(ROOT / "configs", root / "configs")
    config = json.loads((root / "configs" / "inference.json").read_text())
    config["network_def"].update(TINY_BUNDLE_NET)
    config.update(img_size=TINY_BUNDLE_IMG_SIZE, pixdim=TINY_BUNDLE_PIXDIM)
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    (root / "models").mkdir()
    torch.manual_seed(0)
    net = create_network("dlka3d_synapse", img_size=TINY_BUNDLE_IMG_SIZE, **TINY_BUNDLE_NET)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root
