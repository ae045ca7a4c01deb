"""Inference and evaluation follow the recipe a model was trained with (its plan's ``recipe``)."""

import pytest
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer

from utils import ROOT, save_tiny_model
from dlka_monai.inference import FlipTTAInferer
from dlka_monai.plan import network_plan, recipe_inference
from dlka_monai.training.recipe import get_recipe
from dlka_monai.weights import save_model


def _parsed(model, *ids):
    parser = ConfigParser()
    parser.read_config([ROOT / "configs" / "inference.json", ROOT / "configs" / "evaluate.json"])
    parser.update({"bundle_root": str(ROOT), "ckpt_path": str(model), "device": "$torch.device('cpu')", "precision": "fp32"})
    return [parser.get_parsed_content(i) for i in ids]


@pytest.mark.parametrize(
    "recipe, overlap, mode, mirror, convention",
    [
        (None, 0.5, "gaussian", None, "default"),
        ("dlka3d_synapse", 0.5, "gaussian", None, "default"),
        ("dlka3d_synapse_authors", 0.5, "gaussian", (0, 1, 2), "synapse_tables"),
        ("dlka3d_pancreas_authors", 1 - 16 / 96, "constant", None, "default"),
        ("demo", 0.25, "gaussian", None, "default"),
    ],
)
def test_inference_json_infers_and_scores_as_the_models_recipe(tmp_path, recipe, overlap, mode, mirror, convention):
    net = save_tiny_model(tmp_path / "untouched.pt")
    plan = network_plan(net, {"preset": "dlka3d_synapse"} | ({"recipe": get_recipe(recipe).to_dict()} if recipe else {}))
    if recipe is None:
        plan.pop("recipe", None)
    save_model(tmp_path / "model.pt", net, plan)
    inferer, tta_inferer, metric_convention = _parsed(tmp_path / "model.pt", "window_inferer", "tta_inferer", "metric_convention")
    assert isinstance(inferer, SlidingWindowInferer)
    assert inferer.overlap == pytest.approx(overlap) and inferer.mode == mode
    if mirror is None:
        assert tta_inferer is inferer
    else:
        assert isinstance(tta_inferer, FlipTTAInferer) and tta_inferer.spatial_axes == mirror
    assert metric_convention == convention == recipe_inference(plan)["metric_convention"]


@pytest.mark.parametrize("recipe, written", [("demo", "demo"), ("$__import__('os').system('touch PWNED')", None)])
def test_a_packed_model_retrains_with_its_own_recipe(tmp_path, recipe, written):
    import json

    from dlka_monai.bundle import pack_bundle

    net = save_tiny_model(tmp_path / "untouched.pt")
    plan = network_plan(net, {"preset": "dlka3d_synapse", "recipe": {**get_recipe("demo").to_dict(), "name": recipe}})
    save_model(tmp_path / "model.pt", net, plan)
    bundle, _ = pack_bundle(None, tmp_path / "dist" / "bundle", tmp_path / "model.pt", make_zip=False)
    train = json.loads((bundle / "configs" / "train.json").read_text(encoding="utf-8"))
    assert train.get("recipe_name") == written
