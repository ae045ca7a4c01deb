"""Training recipes as data: each record against the authors' tables (tests/data/authors_recipes.md, a copy of
../shared/reference/authors_recipes.md), the shipped configs resolved on a Synapse-layout dataset, the
docs table, and the pieces the recipes are built from (class-balanced crops, clipping, epoch length)."""

import math
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents

from utils import DATA, ROOT

from dlka_monai.training import GradientClipping, crop_sampler, get_recipe, list_recipes
from dlka_monai.training.recipe import ITEMS, recipe_table
from dlka_monai.training.recipes import MORE_DA

CONFIGS = ROOT / "configs"

# --- the authors' tables -------------------------------------------------------------------------------


def _authors_tables() -> dict[str, dict[str, str]]:
    """Section title -> {item: authors' text} of the markdown tables."""
    tables, section = {}, None
    for line in (DATA / "authors_recipes.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].split(" (")[0].strip()
            tables[section] = {}
        elif section and line.startswith("| ") and not line.startswith("| item") and not line.startswith("|---"):
            item, text = [c.strip() for c in line.strip("|").split("|", 1)]
            tables[section][item] = text.strip(" |")
    return tables


_NUM = re.compile(r"(?<![\w.])([-−±]?\d+(?:\.\d+)?(?:e-?\d+)?)(?:\s*/\s*(\d+))?(\s*%)?")


def _numbers(text: str) -> list[float]:
    """Every number in ``text``: fractions (4/7), ± ranges (both signs), percentages (also as fractions)."""
    out = []
    for value, denominator, percent in _NUM.findall(text.replace("−", "-")):
        sign = value.startswith("±")
        x = float(value.lstrip("±"))
        x = x / float(denominator) if denominator else x
        out += [x, -x] if sign else [x]
        if percent:
            out.append(x / 100)
    return out


def _recipe_numbers(value, skip=("axes", "mirror_axes")) -> list[float]:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [n for k, v in value.items() if k not in skip for n in _recipe_numbers(v, skip)]
    return [n for v in value for n in _recipe_numbers(v, skip)]


def _assert_in_text(numbers, text, what):
    found = _numbers(text)
    missing = [n for n in numbers if not any(math.isclose(n, f, rel_tol=5e-3, abs_tol=1e-9) for f in found)]
    assert not missing, f"{what}: {missing} not in the authors' text {text!r}"


AUTHORS = _authors_tables()

# (recipe, recipe item or a function of the recipe, section, item of the authors' table)
NUMERIC_ITEMS = [
    ("dlka3d_synapse_authors", lambda r: [r.iterations_per_epoch, r.epochs], "3D Synapse", "length"),
    ("dlka3d_synapse_authors", lambda r: [r.batch_size], "3D Synapse", "patch / batch"),
    ("dlka3d_synapse_authors", "sampling", "3D Synapse", "foreground oversampling"),
    ("dlka3d_synapse_authors", "optimizer", "3D Synapse", "optimizer"),
    ("dlka3d_synapse_authors", "schedule", "3D Synapse", "schedule"),
    ("dlka3d_synapse_authors", "grad_clip", "3D Synapse", "gradient clipping"),
    ("dlka3d_synapse_authors", "deep_supervision", "3D Synapse", "deep supervision"),
    ("dlka3d_synapse_authors", "augmentation", "3D Synapse", "augmentation (\"moreDA\")"),
    ("dlka3d_synapse_authors", "normalization", "3D Synapse", "intensity"),
    ("dlka3d_synapse_authors", lambda r: [r.inference["overlap"], r.inference["sigma_scale"]], "3D Synapse", "inference"),
    ("dlka3d_pancreas_authors", lambda r: [r.epochs * r.iterations_per_epoch], "3D NIH Pancreas", "length"),
    ("dlka3d_pancreas_authors", lambda r: [r.batch_size], "3D NIH Pancreas", "sampling"),
    ("dlka3d_pancreas_authors", "optimizer", "3D NIH Pancreas", "optimizer"),
    ("dlka3d_pancreas_authors", "schedule", "3D NIH Pancreas", "optimizer"),
    ("dlka3d_pancreas_authors", lambda r: [r.inference["overlap"]], "3D NIH Pancreas", "inference"),
    ("dlka2d_synapse_authors", lambda r: [*_recipe_numbers(r.optimizer), r.epochs, r.schedule["power"]], "2D Synapse", "optimizer"),
    ("dlka2d_synapse_authors", lambda r: [r.loss["ce"], r.loss["dice"]], "2D Synapse", "loss"),
    ("dlka2d_synapse_authors", lambda r: [-125, 275, -1, 1], "2D Synapse", "data"),
    ("dlka2d_synapse_authors", lambda r: [r.augmentation[0]["count"][0], r.augmentation[0]["count"][1]], "2D Synapse", "augmentation"),
    ("dlka2d_skin_authors", lambda r: [*_recipe_numbers(r.optimizer), r.epochs, r.batch_size, r.augmentation[0]["prob"]], "Skin lesions", "optimizer"),
    ("dlka2d_skin_authors", lambda r: [r.inference["threshold"], r.inference["opening"], r.inference["size"]], "Skin lesions", "evaluation (`evaluate_skin.ipynb`)"),
]


@pytest.mark.parametrize("name, item, section, authors_item", NUMERIC_ITEMS, ids=lambda v: v if isinstance(v, str) else "f")
def test_authors_recipes_match_the_authors_tables(name, item, section, authors_item):
    recipe = get_recipe(name)
    value = item(recipe) if callable(item) else getattr(recipe, item)
    numbers = _recipe_numbers(value)
    assert numbers, "nothing to compare"
    _assert_in_text(numbers, AUTHORS[section][authors_item], f"{name}.{item if isinstance(item, str) else authors_item}")


def test_authors_recipes_words_match_the_tables():
    synapse, pancreas, skin = (AUTHORS[s] for s in ("3D Synapse", "3D NIH Pancreas", "Skin lesions"))
    r = get_recipe("dlka3d_synapse_authors")
    assert r.optimizer["nesterov"] and "Nesterov" in synapse["optimizer"]
    assert r.precision == "fp32" and "fp32" in synapse["precision"]
    assert r.schedule == {"name": "poly", "power": 0.9, "step": "epoch"} and "once an epoch" in synapse["schedule"]
    assert not r.loss["include_background"] and "background excluded from Dice" in synapse["loss"]
    assert r.loss["batch"] and "batch Dice" in synapse["loss"] and (r.loss["dice"], r.loss["ce"]) == (1.0, 1.0)
    assert r.sampling["scheme"] == "class_balanced" and "class-balanced" in synapse["foreground oversampling"]
    assert r.validation["select"] == "final" and "final checkpoint" in synapse["reported model"]
    assert r.inference["mirror_axes"] == [0, 1, 2] and "8 passes" in synapse["inference"]
    assert r.metrics["convention"] == "synapse_tables"
    # every moreDA family, with the inverted and the plain gamma
    families = [a["family"] for a in r.augmentation]
    for family, words in [("rotation", "rotation"), ("scaling", "scaling"), ("noise", "Gaussian noise"), ("blur", "Gaussian blur"),
                          ("brightness", "brightness"), ("contrast", "contrast"), ("low_resolution", "low resolution"),
                          ("gamma", "gamma"), ("mirror", "mirroring")]:
        assert family in families and words in synapse['augmentation ("moreDA")']
    assert sorted(a.get("inverted") for a in r.augmentation if a["family"] == "gamma") == [False, True]

    p = get_recipe("dlka3d_pancreas_authors")
    assert p.augmentation == () and "no augmentation" in pancreas["sampling"]
    assert p.sampling["scheme"] == "uniform" and "uniform random crop" in pancreas["sampling"]
    assert not p.optimizer["nesterov"] and "no Nesterov" in pancreas["optimizer"]
    assert p.loss["squared"] and not p.loss["include_background"] and "squared denominators" in pancreas["loss"]
    assert p.deep_supervision is None and "no deep supervision" in pancreas["loss"]
    assert p.inference["mirror_axes"] == [] and "no mirroring" in pancreas["inference"]

    s = get_recipe("dlka2d_skin_authors")
    assert s.schedule["name"] == "plateau" and s.schedule["mode"] == "min" and "ReduceLROnPlateau on the validation loss (mode min)" in skin["optimizer"]
    assert s.validation["monitor"] == "val_loss" and "best checkpoint by validation loss" in skin["optimizer"]
    assert s.inference["fill_holes"] and "hole filling" in skin["evaluation (`evaluate_skin.ipynb`)"]


def test_our_recipes_differ_from_the_authors_only_where_they_say_why():
    for name in list_recipes():
        ours = get_recipe(name)
        if ours.authors is None:
            continue
        theirs = get_recipe(ours.authors)
        differing = {item for item, _ in ITEMS if getattr(ours, item) != getattr(theirs, item)}
        assert differing == set(ours.differences), name
    # the presets' defaults keep the authors' training itself
    for preset in ("dlka3d_synapse", "dlka3d_pancreas", "dlka2d_synapse"):
        ours, theirs = get_recipe(preset), get_recipe(f"{preset}_authors")
        for item in ("epochs", "iterations_per_epoch", "batch_size", "optimizer", "schedule", "grad_clip", "precision", "loss", "deep_supervision", "normalization"):
            assert getattr(ours, item) == getattr(theirs, item), (preset, item)


def test_docs_table_is_the_generated_one():
    from dlka_monai.training.recipe_table import END, START

    docs = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    assert START in docs and END in docs
    assert docs.split(START)[1].split(END)[0].strip() == recipe_table().strip(), (
        "docs/README.md's recipe table is stale: python -m dlka_monai.training.recipe_table --update docs/README.md"
    )


# --- the shipped configs, resolved on a Synapse-layout dataset --------------------------------------------


@pytest.fixture
def btcv(tmp_path) -> Path:
    """A BTCV download of tiny volumes: the datalist reads the paths and checks the labels."""
    training = tmp_path / "BTCV" / "RawData" / "Training"
    for sub in ("img", "label"):
        (training / sub).mkdir(parents=True)
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    for case in range(1, 41):
        nib.save(image, training / "img" / f"img{case:04d}.nii.gz")
        nib.save(image, training / "label" / f"label{case:04d}.nii.gz")
    return tmp_path / "BTCV"


def _parser(tmp_path, *overlays, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), *(str(CONFIGS / o) for o in overlays)])
    parser.update({"bundle_root": str(tmp_path), **overrides})
    if not {"train_2d.json", "skin.json"} & set(overlays):  # a small 3D net: the recipe is under test, not the net
        parser.update({"network_def#feature_size": 4, "network_def#depths": [1, 1, 1, 1]})
    return parser


def _handler(parser, target):
    handlers = parser.get("train#handlers")
    index = next(i for i, h in enumerate(handlers) if isinstance(h, dict) and h.get("_target_", "").endswith(target))
    return parser.get_parsed_content(f"train#handlers#{index}")


def _types(transforms):
    return [type(t).__name__ for t in transforms]


def test_train_json_on_synapse_has_the_authors_training(tmp_path, btcv):
    parser = _parser(tmp_path, dataset_dir=str(btcv))
    recipe = parser.get_parsed_content("recipe")
    assert recipe.name == "dlka3d_synapse"
    assert parser.get_parsed_content("epoch_length") == 250 and parser.get_parsed_content("max_epochs") == 1000
    assert parser.get_parsed_content("train#dataloader#batch_size") == 2
    opt = parser.get_parsed_content("optimizer")
    assert isinstance(opt, torch.optim.SGD)
    assert {k: opt.defaults[k] for k in ("lr", "momentum", "nesterov", "weight_decay")} == {"lr": 0.01, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5}
    sched = parser.get_parsed_content("lr_scheduler")
    assert isinstance(sched, torch.optim.lr_scheduler.PolynomialLR) and (sched.total_iters, sched.power) == (1000, 0.9)
    assert _handler(parser, "LrScheduleHandler").epoch_level
    assert _handler(parser, "GradientClipping").max_norm == 12.0
    assert parser.get_parsed_content("amp") is False
    loss = parser.get_parsed_content("loss")
    assert type(loss).__name__ == "DeepSupervisionLoss"
    np.testing.assert_allclose(loss.weights, [4 / 7, 2 / 7, 1 / 7])
    assert loss.loss.dice.include_background is False and loss.loss.dice.batch and loss.loss.lambda_ce == loss.loss.lambda_dice == 1.0
    plan = parser.get_parsed_content("plan")
    assert plan["normalization"] == {"scheme": "ct", "clip": [-958.0, 326.0], "mean": 82.95, "std": 136.95}
    assert plan["pixdim"] == [3.0, 0.758, 0.758] and plan["network"]["img_size"] == [64, 128, 128]
    # the moreDA families as MONAI transforms, after the class-balanced crop
    random = parser.get_parsed_content("train#random_transforms")
    assert _types(random) == [
        "RandCropByLabelClassesd", "RandRotated", "RandAffined", "RandGaussianNoised", "RandGaussianSmoothd",
        "RandScaleIntensityd", "RandScaleIntensityFixedMeand", "RandSimulateLowResolutiond", "RandAdjustContrastd",
        "RandAdjustContrastd", "RandFlipd", "RandFlipd", "RandFlipd",
    ]
    crop = random[0]
    np.testing.assert_allclose(crop.cropper.ratios, [0.67] + [0.33 / 13] * 13)
    rotate, scale = random[1], random[2]
    assert rotate.prob == 0.2 and rotate.rand_rotate.range_x == pytest.approx((-math.pi / 6, math.pi / 6))
    assert scale.prob == 0.2
    np.testing.assert_allclose(scale.rand_affine.rand_affine_grid.scale_range, [(-0.3, 0.4)] * 3)
    gammas = random[8:10]
    assert [(g.prob, g.adjuster.invert_image, g.adjuster.gamma) for g in gammas] == [(0.1, True, (0.7, 1.5)), (0.3, False, (0.7, 1.5))]
    assert [f.prob for f in random[10:]] == [0.5] * 3
    # the model file records the recipe
    assert parser.get("model_plan")["recipe"] == "$@recipe.to_dict()"


def test_pancreas_json_has_the_authors_training(tmp_path, btcv):
    parser = _parser(tmp_path, "pancreas.json", dataset_dir=str(btcv))
    assert parser.get_parsed_content("recipe").name == "dlka3d_pancreas"
    assert parser.get_parsed_content("max_epochs") * parser.get_parsed_content("epoch_length") == 6000
    assert parser.get_parsed_content("train#dataloader#batch_size") == 1
    opt = parser.get_parsed_content("optimizer")
    assert {k: opt.defaults[k] for k in ("lr", "momentum", "nesterov", "weight_decay")} == {"lr": 0.01, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4}
    sched = parser.get_parsed_content("lr_scheduler")
    assert isinstance(sched, torch.optim.lr_scheduler.StepLR) and (sched.step_size, sched.gamma) == (2500, 0.1)
    assert not _handler(parser, "LrScheduleHandler").epoch_level
    loss = parser.get_parsed_content("loss")
    assert type(loss).__name__ == "DiceCELoss" and loss.dice.squared_pred and not loss.dice.include_background
    assert _types(parser.get_parsed_content("train#random_transforms")) == ["RandSpatialCropSamplesd"]
    inferer = parser.get_parsed_content("validate#inferer")
    assert inferer.overlap == pytest.approx(80 / 96) and inferer.mode == "constant"


def test_train_2d_json_has_the_authors_training(tmp_path, btcv):
    parser = _parser(tmp_path, "train_2d.json", dataset_dir=str(btcv))
    assert parser.get_parsed_content("recipe").name == "dlka2d_synapse"
    assert parser.get_parsed_content("max_epochs") == 400 and parser.get_parsed_content("slices_per_batch") == 24
    opt = parser.get_parsed_content("optimizer")
    assert {k: opt.defaults[k] for k in ("lr", "momentum", "nesterov", "weight_decay")} == {"lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4}
    assert not _handler(parser, "LrScheduleHandler").epoch_level  # poly stepped every iteration
    loss = parser.get_parsed_content("loss")
    assert (loss.lambda_ce, loss.lambda_dice, loss.dice.squared_pred) == (0.4, 0.6, True)
    assert parser.get_parsed_content("plan")["normalization"] == {"scheme": "window", "a_min": -125.0, "a_max": 275.0, "b_min": -1.0, "b_max": 1.0}
    some_of = parser.get_parsed_content("slice_augmentation")
    assert _types(some_of) == ["SomeOf"] and (some_of[0].min_num_transforms, some_of[0].max_num_transforms) == (0, 4) and len(some_of[0].transforms) == 9


def test_skin_json_has_the_recipe(tmp_path):
    parser = _parser(tmp_path, "skin.json", dataset_dir=str(tmp_path))
    assert parser.get_parsed_content("recipe").name == "dlka2d_skin"
    assert parser.get_parsed_content("max_epochs") == 100 and parser.get_parsed_content("batch_size") == 4
    assert parser.get_parsed_content("dice_weight") == 0.0
    assert parser.get_parsed_content("skin_split_counts") is None


def test_demos_are_recipes(tmp_path):
    """No dataset: the demo recipes, with the settings the demos trained with before recipes existed."""
    parser = _parser(tmp_path)
    recipe = parser.get_parsed_content("recipe")
    assert recipe.name == "demo"
    plan = parser.get_parsed_content("plan")
    assert plan["network"]["img_size"] == [16, 32, 32] and plan["network"]["feature_size"] == 8
    assert plan["pixdim"] == [6.0, 4.0, 4.0] and plan["normalization"] == {"scheme": "window", "a_min": -175.0, "a_max": 250.0}
    opt = parser.get_parsed_content("optimizer")
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["lr"] == 0.003
    assert parser.get_parsed_content("max_epochs") == 100 and parser.get_parsed_content("val_interval") == 10
    assert parser.get_parsed_content("epoch_length") is None and parser.get_parsed_content("train#num_workers") == 0
    assert parser.get_parsed_content("validate#inferer").overlap == 0.25
    assert parser.get_parsed_content("train#random_transforms")[0].cropper.num_samples == 4
    np.testing.assert_allclose(parser.get_parsed_content("loss").weights, [1.0, 0.5, 0.25])
    pancreas = _parser(tmp_path, "pancreas.json")
    assert pancreas.get_parsed_content("recipe").name == "demo_pancreas"
    assert pancreas.get_parsed_content("plan")["normalization"] == {"scheme": "window", "a_min": -100.0, "a_max": 240.0}
    assert _parser(tmp_path, "train_2d.json").get_parsed_content("recipe").name == "demo_2d"
    assert _parser(tmp_path, "skin.json").get_parsed_content("skin_split_counts") == [16, 8, 8]
    for name in ("train.json", "train_2d.json", "pancreas.json", "skin.json", "multi_gpu_train.json"):
        assert "overlay.get" not in (CONFIGS / name).read_text() and "demo_overlay" not in (CONFIGS / name).read_text()


def test_a_named_recipe_replaces_the_default(tmp_path, btcv):
    parser = _parser(tmp_path, dataset_dir=str(btcv), recipe_name="dlka3d_synapse_authors")
    assert parser.get_parsed_content("val_fraction") == 0.0
    assert parser.get_parsed_content("recipe").validation["select"] == "final"


# --- the pieces ---------------------------------------------------------------------------------------


def test_class_balanced_crops_centre_a_third_on_foreground():
    label = torch.zeros(1, 24, 24, 24)
    label[0, 2:4, 2:4, 2:4] = 1  # one small organ in a corner, class 2 elsewhere
    label[0, 20:22, 20:22, 20:22] = 2
    sampler = crop_sampler("dlka3d_synapse", [4, 4, 4], num_classes=3)
    sampler.set_random_state(0)
    sampler.cropper.num_samples = 600
    crops = sampler({"image": torch.rand(1, 24, 24, 24), "label": label})
    with_fg = np.array([[bool((c["label"] == k).any()) for k in (1, 2)] for c in crops])
    assert abs(with_fg.any(1).mean() - 0.33) < 0.06
    assert abs(with_fg[:, 0].mean() - with_fg[:, 1].mean()) < 0.08  # each class equally often


def _engine(max_norm, epoch_length, scale=1e4):
    net = torch.nn.Conv3d(1, 2, 1)
    seen = []
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        epoch_length=epoch_length,
        train_data_loader=[{"image": torch.rand(1, 1, 4, 4, 4), "label": torch.ones(1, 1, 4, 4, 4)}] * 3,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.0),
        loss_function=lambda pred, target: scale * ((pred - target) ** 2).mean(),
        train_handlers=[GradientClipping(max_norm)],
    )
    trainer.add_event_handler(
        IterationEvents.BACKWARD_COMPLETED, lambda e: seen.append(float(torch.cat([p.grad.flatten() for p in net.parameters()]).norm()))
    )
    trainer.run()
    return trainer, seen


def test_gradient_clipping_and_epochs_longer_than_the_data():
    trainer, seen = _engine(12.0, epoch_length=7)
    assert trainer.state.iteration == 14  # 7 iterations an epoch out of 3 items: the loader restarts
    assert len(seen) == 14 and max(seen) == pytest.approx(12.0, rel=1e-4)
    _, unclipped = _engine(None, epoch_length=None)
    assert min(unclipped) > 12.0


def test_moreda_transforms_run_on_a_patch():
    from dlka_monai.training import augmentation_transforms

    transforms = augmentation_transforms("dlka3d_synapse", [8, 16, 16])
    data = {"image": torch.randn(1, 8, 16, 16), "label": torch.randint(0, 3, (1, 8, 16, 16)).float()}
    for t in transforms:
        t.set_random_state(1)
        if hasattr(t, "prob"):
            t.prob = 1.0
        data = t(data)
    assert data["image"].shape == (1, 8, 16, 16) and torch.isfinite(data["image"]).all()
    assert set(torch.unique(data["label"]).tolist()) <= {0.0, 1.0, 2.0}
    assert len(MORE_DA) == 10


# --- converted authors' weights carry the authors' preprocessing -----------------------------------------


def test_converted_synapse_model_feeds_the_net_nnunet_ct_intensities(tmp_path):
    from utils import reference_manifest, save_tiny_model
    from dlka_monai.convert import convert_checkpoint, converted_plan
    from dlka_monai.networks.nets.dlka_net_3d import DLKANet3D
    from dlka_monai.segment import main as segment
    from dlka_monai.weights import safe_load

    gen = torch.Generator().manual_seed(0)
    authors = {k: torch.rand(s, generator=gen) * 0.01 for k, s in reference_manifest("dlka3d_synapse").items()}
    torch.save({"state_dict": authors, "epoch": 1000}, tmp_path / "model_final_checkpoint.model")
    convert_checkpoint(tmp_path / "model_final_checkpoint.model", tmp_path / "converted.pt", "dlka3d_synapse")
    plan = safe_load(tmp_path / "converted.pt")["plan"]
    assert plan["normalization"] == {"scheme": "ct", "clip": [-958.0, 326.0], "mean": 82.95, "std": 136.95}
    assert plan["pixdim"] == [3.0, 0.758, 0.758]
    assert plan["recipe"]["name"] == "dlka3d_synapse_authors" and plan["recipe"]["grad_clip"] == 12.0
    plan_2d = converted_plan("dlka2d_synapse")
    assert plan_2d["normalization"] == {"scheme": "window", "a_min": -125.0, "a_max": 275.0, "b_min": -1.0, "b_max": 1.0}
    assert plan_2d["recipe"]["optimizer"]["lr"] == 0.05

    # a tiny net with the converted model's preprocessing, through dlka-segment: what reaches the net
    from dlka_monai.plan import network_plan
    from dlka_monai.weights import save_model

    net = save_tiny_model(tmp_path / "unused.pt")
    tiny = {k: v for k, v in plan.items() if k not in ("network",)}
    save_model(tmp_path / "tiny.pt", net, network_plan(net, tiny))
    hu = np.full((40, 40, 12), -1000.0, np.float32)  # air around a body of water (0 HU) and bone (500 HU)
    hu[5:35, 5:35, 2:10] = 0.0
    hu[15:25, 15:25, 4:8] = 500.0
    nib.save(nib.Nifti1Image(hu, np.diag([0.758, 0.758, 3.0, 1.0])), tmp_path / "ct.nii.gz")
    fed = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: fed.append(args[0].detach().clone()) if isinstance(module, DLKANet3D) else None
    )
    try:
        assert segment(["-i", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "seg.nii.gz"), "--model", str(tmp_path / "tiny.pt"), "--device", "cpu"]) == 0
    finally:
        hook.remove()
    values = torch.cat([f.flatten() for f in fed])
    water, bone, floor = (0 - 82.95) / 136.95, (326 - 82.95) / 136.95, (-958 - 82.95) / 136.95
    assert values.min() >= floor - 1e-4 and values.max() <= bone + 1e-4
    assert torch.isclose(values, torch.tensor(water), atol=1e-4).any() and torch.isclose(values, torch.tensor(bone), atol=1e-4).any()
