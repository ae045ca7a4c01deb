"""A plan survives the trip through a model file and a plan file unchanged: what a saved model needs to be
used again (network arguments, spacing, orientation, normalisation, class names) comes back as written,
and the weights rebuild the same network."""

import json

import pytest
import torch

from dlka_monai.plan import make_plan, network_plan, read_plan_file, write_plan_file
from dlka_monai.weights import load_model, read_model, save_model
from utils import TINY_BUNDLE_IMG_SIZE, TINY_BUNDLE_NET


@pytest.mark.parametrize("preset", ["dlka3d_synapse", "dlka3d_pancreas"])
def test_model_file_and_plan_file_give_back_the_plan(preset, tmp_path):
    from dlka_monai.networks import create_network

    net = create_network(preset, img_size=TINY_BUNDLE_IMG_SIZE, **TINY_BUNDLE_NET)
    # every entry away from the preset's, so that one dropped or defaulted on the way shows
    plan = network_plan(
        net, make_plan(preset), pixdim=[3.5, 2.25, 1.75], axcodes="RAS",
        normalization={"scheme": "zscore"}, class_names={i: f"organ {i}" for i in range(net.out_channels)},
    )
    expected = json.loads(json.dumps(plan))  # as JSON types: what a file can give back
    save_model(tmp_path / "model.pt", net, plan)
    state, read = read_model(tmp_path / "model.pt")
    assert json.loads(json.dumps(read)) == expected
    assert read_plan_file(write_plan_file(read, tmp_path / "plan.json")) == expected

    loaded, loaded_plan = load_model(tmp_path / "model.pt")
    assert json.loads(json.dumps(loaded_plan)) == expected
    assert json.loads(json.dumps(loaded.network_args)) == json.loads(json.dumps(net.network_args))
    ours, theirs = net.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
