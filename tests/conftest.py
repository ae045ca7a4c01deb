import json
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"

# a 3D D-LKA net small enough for fast tests: stages 8³/4³/2³/1³ with 8..64 channels
TINY_3D = dict(img_size=(16, 32, 32), patch_size=(2, 4, 4), feature_size=4, depths=(1, 1, 1, 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def reference_manifest(name: str) -> dict[str, list[int]]:
    """The authors' state-dict keys and shapes for preset ``name``."""
    return json.loads((DATA / f"{name}_state_dict.json").read_text())
