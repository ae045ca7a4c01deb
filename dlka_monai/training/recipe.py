# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Training recipes as data: how a preset is trained, validated, inferred and scored, written once.

A :class:`Recipe` holds every item of a training recipe (length, batch and sampling; optimizer, schedule,
clipping, precision; loss and deep-supervision weights; augmentation with its ranges and probabilities;
the plan entries it changes, e.g. the normalisation; validation and checkpoint selection; inference and the
metric convention). Recipes are registered by name beside the presets (as nnU-Net's plans hold the
configurations); ``configs/train.json`` and its overlays read the one chosen by :func:`default_recipe`
with ``@recipe.<item>``, and a trained model's plan records it (:meth:`Recipe.to_dict`).

Each preset has its default recipe (registered under the preset's name) and the authors' recipe
(``<preset>_authors``, the facts of ``authors_recipes.md``); a default differs from the authors' only
where its ``differences`` say why. ``python -m dlka_monai.training.recipe_table --markdown`` prints the table
of docs/README.md.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = [
    "Recipe",
    "register_recipe",
    "get_recipe",
    "list_recipes",
    "default_recipe",
    "augmentation_transforms",
    "recipe_loss",
    "crop_sampler",
    "default_num_workers",
    "training_plan",
    "recipe_optimizer",
    "recipe_scheduler",
    "recipe_table",
    "ITEMS",
]


@dataclass(frozen=True)
class Recipe:
    """A training recipe (plain data; see the module docstring).

    Args:
        name: registry name.
        preset: the network preset it trains.
        description: one line.
        epochs: training epochs.
        iterations_per_epoch: optimizer steps an epoch; None: one pass over the training cases.
        batch_size: cases (or 2D slices) a batch.
        samples_per_case: crops taken from each case of a batch (a batch holds ``batch_size × samples_per_case``
            patches).
        sampling: where crops are centred: ``{"scheme": "class_balanced", "foreground": f}`` (a fraction ``f``
            of crops centred on a foreground class chosen uniformly, the rest on background),
            ``{"scheme": "pos_neg", "pos": p, "neg": n}``, ``{"scheme": "uniform"}`` (uniform random crops)
            or ``{"scheme": "whole"}`` (whole images).
        optimizer: ``{"name": "sgd" | "adamw", "lr", "momentum", "nesterov", "weight_decay"}``.
        schedule: ``{"name": "poly", "power", "step": "epoch" | "iteration"}``, ``{"name": "step",
            "step_size", "gamma", "step": "iteration"}`` or ``{"name": "plateau", "monitor", "mode", "factor",
            "patience"}``.
        grad_clip: max gradient norm; None: no clipping.
        precision: ``"fp32"``, or ``"amp"`` (mixed precision where the device is CUDA).
        loss: ``{"dice", "ce"}`` weights, ``include_background`` (of the Dice term), ``batch`` (batch Dice),
            ``squared`` (squared Dice denominators).
        deep_supervision: the weights of the deep-supervision outputs, full resolution first; None: none.
        augmentation: the random transforms in order, each ``{"family": name, "prob": p, ...ranges}``
            (see :data:`AUGMENTATIONS`).
        plan: plan entries the recipe replaces (``overlay_plan``), e.g. a smaller network or coarser spacing.
        normalization: the intensity normalisation the recipe trains with (the plan's, as the plan stores it).
        validation: ``split`` (``"val_fraction"`` of the training cases, or ``"none"``), ``val_fraction``,
            ``interval`` (epochs), ``monitor`` (what selects the checkpoint) and ``select`` (``"best"`` or
            ``"final"`` checkpoint).
        inference: ``overlap``, ``mode`` (``"gaussian"`` / ``"constant"``), ``sigma_scale``, ``mirror_axes``,
            ``largest_component`` (post-processing), ``threshold`` (skin).
        metrics: ``{"convention": ...}``: ``"default"`` (our metrics, :mod:`dlka_monai.evaluation.metrics`), ``"synapse_tables"`` (the authors' 8 organs,
            Dice 1 for two empty masks, HD95 in voxels), ``"pancreas"`` or ``"skin"``.
        num_workers: data-loader workers; None: chosen from the machine (:func:`default_num_workers`).
        differences: item -> why this recipe differs from its authors' recipe there.
        authors: name of the authors' recipe this one is compared with (None for the authors' own).
    """

    name: str
    preset: str
    description: str
    epochs: int
    iterations_per_epoch: int | None
    batch_size: int
    samples_per_case: int
    sampling: Mapping[str, Any]
    optimizer: Mapping[str, Any]
    schedule: Mapping[str, Any]
    grad_clip: float | None
    precision: str
    loss: Mapping[str, Any]
    deep_supervision: tuple[float, ...] | None
    augmentation: tuple[Mapping[str, Any], ...]
    normalization: Mapping[str, Any]
    validation: Mapping[str, Any]
    inference: Mapping[str, Any]
    metrics: Mapping[str, Any]
    plan: Mapping[str, Any] = field(default_factory=dict)
    num_workers: int | None = None
    differences: Mapping[str, str] = field(default_factory=dict)
    authors: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "amp"):
            raise ValueError(f"recipe {self.name}: precision is 'fp32' or 'amp', got {self.precision!r}.")
        unknown = [a["family"] for a in self.augmentation if a["family"] not in AUGMENTATIONS]
        if unknown:
            raise ValueError(f"recipe {self.name}: unknown augmentation(s) {unknown}; known: {', '.join(AUGMENTATIONS)}.")
        if self.sampling["scheme"] not in ("class_balanced", "pos_neg", "uniform", "whole"):
            raise ValueError(f"recipe {self.name}: unknown sampling scheme {self.sampling['scheme']!r}.")
        stray = sorted(set(self.differences) - {f.name for f in fields(self)})
        if stray:
            raise ValueError(f"recipe {self.name}: differences name no item: {stray}.")

    def to_dict(self) -> dict[str, Any]:
        """The recipe as JSON types (as a model file's plan records it)."""
        return json.loads(json.dumps(asdict(self)))

    @property
    def plan_overlay(self) -> dict[str, Any]:
        """The plan entries the recipe sets: its ``plan`` and its ``normalization``."""
        return {**self.plan, "normalization": dict(self.normalization)}


_RECIPES: dict[str, Recipe] = {}
_DEMOS: dict[str, str] = {}


def register_recipe(recipe: Recipe, demo_for: Sequence[str] = ()) -> Recipe:
    """Register ``recipe`` under its name; ``demo_for``: presets whose demo (no dataset given) it is."""
    if recipe.name in _RECIPES:
        raise ValueError(f"recipe {recipe.name!r} is already registered.")
    _RECIPES[recipe.name] = recipe
    for preset in demo_for:
        _DEMOS[preset] = recipe.name
    return recipe


def list_recipes() -> list[str]:
    _load()
    return sorted(_RECIPES)


def get_recipe(name: str | Recipe) -> Recipe:
    """The registered recipe ``name`` (a :class:`Recipe` is returned as it is)."""
    if isinstance(name, Recipe):
        return name
    _load()
    if name not in _RECIPES:
        raise KeyError(f"unknown recipe {name!r}; available: {', '.join(sorted(_RECIPES))}.")
    return _RECIPES[name]


def default_recipe(preset: str, demo: bool = False) -> Recipe:
    """The recipe a training config uses for ``preset``: its demo recipe when no dataset is given (the
    data wiring says so), else the preset's own."""
    _load()
    return get_recipe(_DEMOS[preset] if demo else preset)


def _load() -> None:
    import dlka_monai.training.recipes  # noqa: F401  (registers the recipes)


# augmentation families: the MONAI transform of each, in the recipes' units (degrees, factor ranges)
AUGMENTATIONS = (
    "rotation",
    "scaling",
    "shear",
    "translation",
    "piecewise_affine",
    "noise",
    "blur",
    "brightness",
    "contrast",
    "low_resolution",
    "gamma",
    "mirror",
    "rot90",
    "shift_intensity",
    "some_of",
)


def _factors(lo: float, hi: float) -> tuple[float, float]:
    """A factor range ``lo .. hi`` as MONAI's offsets from 1 (rounded: 0.9 - 1 is -0.1, not -0.0999...)."""
    return round(float(lo) - 1.0, 12), round(float(hi) - 1.0, 12)


def _augmentation(spec: Mapping[str, Any], spatial_dims: int, keys: Sequence[str], spatial_size: Sequence[int] | None) -> list:
    from monai import transforms as mt

    image, both, prob = keys[0], list(keys), float(spec.get("prob", 1.0))
    modes = ["bilinear"] + ["nearest"] * (len(keys) - 1)
    family = spec["family"]
    if family == "rotation":  # about each axis (in-plane in 2D); ``degrees`` or ``radians``
        rad = float(spec["radians"]) if "radians" in spec else math.radians(float(spec["degrees"]))
        ranges = {"range_x": rad} if spatial_dims == 2 else {"range_x": rad, "range_y": rad, "range_z": rad}
        return [mt.RandRotated(both, prob=prob, mode=modes, padding_mode=spec.get("padding", "zeros"), **ranges)]
    if family == "scaling":
        lo, hi = spec["range"]
        return [mt.RandAffined(both, prob=prob, scale_range=[_factors(lo, hi)] * spatial_dims, mode=modes, padding_mode="zeros")]
    if family == "shear":  # imgaug's shear angle as MONAI's shear factor
        return [mt.RandAffined(both, prob=prob, shear_range=math.tan(math.radians(float(spec["degrees"]))), mode=modes, padding_mode="zeros")]
    if family == "translation":
        if spatial_size is None:
            raise ValueError("the translation augmentation needs the spatial size of the training patches.")
        shift = [float(spec["fraction"]) * s for s in spatial_size]
        return [mt.RandAffined(both, prob=prob, translate_range=shift, mode=modes, padding_mode="zeros")]
    if family == "piecewise_affine":
        raise NotImplementedError("imgaug's piecewise affine warp has no MONAI transform; use a recipe without it.")
    if family == "noise":  # nnU-Net draws the variance (imgaug: a fixed std); MONAI draws the std up to its maximum
        std = float(spec["std"]) if "std" in spec else math.sqrt(float(spec["variance"][1]))
        return [mt.RandGaussianNoised(image, prob=prob, mean=0.0, std=std)]
    if family == "blur":
        sigma = tuple(spec["sigma"])
        return [mt.RandGaussianSmoothd(image, prob=prob, sigma_x=sigma, sigma_y=sigma, sigma_z=sigma)]
    if family == "brightness":
        lo, hi = spec["range"]
        return [mt.RandScaleIntensityd(image, prob=prob, factors=_factors(lo, hi))]
    if family == "contrast":  # (x - mean) × factor + mean, clipped to the patch's range (nnU-Net's contrast)
        lo, hi = spec["range"]
        return [mt.RandScaleIntensityFixedMeand(image, prob=prob, factors=_factors(lo, hi), fixed_mean=True, preserve_range=True)]
    if family == "low_resolution":
        mode = "trilinear" if spatial_dims == 3 else "bilinear"
        return [mt.RandSimulateLowResolutiond(image, prob=prob, zoom_range=tuple(spec["zoom"]), upsample_mode=mode)]
    if family == "gamma":
        return [
            mt.RandAdjustContrastd(image, prob=prob, gamma=tuple(spec["range"]), invert_image=bool(spec.get("inverted", False)), retain_stats=True)
        ]
    if family == "mirror":
        return [mt.RandFlipd(both, prob=prob, spatial_axis=[axis]) for axis in spec["axes"]]
    if family == "rot90":
        return [mt.RandRotate90d(both, prob=prob, spatial_axes=list(spec["axes"]), max_k=3)]
    if family == "shift_intensity":
        return [mt.RandShiftIntensityd(image, prob=prob, offsets=float(spec["offset"]))]
    if family == "some_of":  # imgaug's SomeOf(lo, hi): between lo and hi of the listed transforms, each once
        inner = [t for s in spec["transforms"] for t in _augmentation(s, spatial_dims, keys, spatial_size)]
        return [mt.SomeOf(inner, num_transforms=tuple(spec["count"]), replace=False)]
    raise ValueError(f"unknown augmentation family {family!r}; known: {', '.join(AUGMENTATIONS)}.")


def augmentation_transforms(
    recipe: str | Recipe, spatial_size: Sequence[int] | int, spatial_dims: int | None = None, keys: Sequence[str] = ("image", "label")
) -> list:
    """The recipe's augmentation as MONAI transforms, in order (spatial ones on all ``keys``, labels
    nearest-neighbour; intensity ones on the image, the first key), for patches of ``spatial_size``
    (an int: square 2D images, or ``spatial_dims`` equal sides)."""
    recipe = get_recipe(recipe)
    if isinstance(spatial_size, int):
        spatial_size = [spatial_size] * (spatial_dims or 2)
    spatial_size = [int(s) for s in spatial_size]
    dims = spatial_dims or len(spatial_size)
    return [t for spec in recipe.augmentation for t in _augmentation(spec, dims, list(keys), spatial_size)]


def crop_sampler(recipe: str | Recipe, spatial_size: Sequence[int], num_classes: int, keys: Sequence[str] = ("image", "label")):
    """The MONAI transform that takes the recipe's training crops (``samples_per_case`` of them) from a
    case padded to at least ``spatial_size``; None for the ``whole`` scheme."""
    from monai import transforms as mt

    recipe, keys = get_recipe(recipe), list(keys)
    sampling, n = recipe.sampling, recipe.samples_per_case
    if sampling["scheme"] == "class_balanced":
        fg = float(sampling["foreground"])
        ratios = [1.0 - fg] + [fg / (num_classes - 1)] * (num_classes - 1)
        return mt.RandCropByLabelClassesd(
            keys, label_key=keys[1], spatial_size=spatial_size, ratios=ratios, num_classes=num_classes, num_samples=n, warn=False
        )
    if sampling["scheme"] == "pos_neg":
        return mt.RandCropByPosNegLabeld(
            keys, label_key=keys[1], spatial_size=spatial_size, pos=sampling["pos"], neg=sampling["neg"], num_samples=n,
            image_key=keys[0], image_threshold=0,
        )
    if sampling["scheme"] == "uniform":
        return mt.RandSpatialCropSamplesd(keys, roi_size=spatial_size, num_samples=n, random_size=False)
    return None


def recipe_loss(recipe: str | Recipe):
    """The recipe's loss: Dice + cross-entropy with its weights, wrapped in MONAI's ``DeepSupervisionLoss``
    with the recipe's weights where it has deep supervision."""
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    recipe = get_recipe(recipe)
    loss = recipe.loss
    base = DiceCELoss(
        include_background=bool(loss["include_background"]),
        to_onehot_y=True,
        softmax=True,
        squared_pred=bool(loss["squared"]),
        batch=bool(loss["batch"]),
        lambda_dice=float(loss["dice"]),
        lambda_ce=float(loss["ce"]),
    )
    if recipe.deep_supervision is None:
        return base
    return DeepSupervisionLoss(base, weights=list(recipe.deep_supervision))


def default_num_workers(recipe: str | Recipe, cap: int = 8) -> int:
    """Data-loader workers: the recipe's, or all CPU cores this process may use but one, at most ``cap``."""
    recipe = get_recipe(recipe)
    if recipe.num_workers is not None:
        return recipe.num_workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(cores - 1, cap))


def training_plan(recipe: str | Recipe, preset: str, plan_file: str | os.PathLike | None = None) -> dict[str, Any]:
    """The plan a run trains with: a plan file as it is (a planner made it from the data: its spacing and
    normalisation win), else ``preset``'s plan with the recipe's plan entries and normalisation."""
    from dlka_monai.plan import overlay_plan, preset_plan, read_plan_file

    if plan_file:
        return read_plan_file(plan_file)
    return overlay_plan(preset_plan(preset), get_recipe(recipe).plan_overlay)


# another optimizer than the recipe's (a command-line choice) starts from these
_OPTIMIZER_DEFAULTS = {
    "sgd": {"name": "sgd", "lr": 0.01, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5},
    "adamw": {"name": "adamw", "lr": 3e-4, "weight_decay": 1e-5},
}


def recipe_optimizer(recipe: str | Recipe, params, name: str | None = None, lr: float | None = None):
    """The recipe's optimizer over ``params``; ``name`` picks another (with its defaults) and ``lr``
    replaces the learning rate."""
    from dlka_monai.training.optim import build_optimizer

    recipe = get_recipe(recipe)
    spec = dict(recipe.optimizer)
    if name is not None and name.lower() != spec["name"]:
        if name.lower() not in _OPTIMIZER_DEFAULTS:
            raise ValueError(f"unknown optimizer {name!r}; use {' or '.join(map(repr, _OPTIMIZER_DEFAULTS))}.")
        spec = dict(_OPTIMIZER_DEFAULTS[name.lower()])
    if lr is not None:
        spec["lr"] = float(lr)
    return build_optimizer(
        spec["name"], params, lr=spec["lr"], weight_decay=spec.get("weight_decay"), momentum=spec.get("momentum"), nesterov=spec.get("nesterov")
    )


def recipe_scheduler(recipe: str | Recipe, optimizer, max_epochs: int, epoch_length: int):
    """The recipe's learning-rate schedule, stepped by ``LrScheduleHandler`` each epoch or each iteration
    as ``recipe.schedule["step"]`` says (``max_epochs × epoch_length`` iterations in all)."""
    import torch

    schedule = get_recipe(recipe).schedule
    per_iteration = schedule.get("step") == "iteration"
    if schedule["name"] == "poly":
        total = max_epochs * epoch_length if per_iteration else max_epochs
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total, power=float(schedule["power"]))
    if schedule["name"] == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(schedule["step_size"]), gamma=float(schedule["gamma"]))
    if schedule["name"] == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=schedule["mode"], factor=float(schedule["factor"]), patience=int(schedule["patience"])
        )
    raise ValueError(f"unknown schedule {schedule['name']!r}; known: poly, step, plateau.")


# the items of the docs table, in order: (recipe field, label)
ITEMS: tuple[tuple[str, str], ...] = (
    ("iterations_per_epoch", "iterations an epoch"),
    ("epochs", "epochs"),
    ("batch_size", "batch (cases)"),
    ("samples_per_case", "crops a case"),
    ("sampling", "sampling"),
    ("optimizer", "optimizer"),
    ("schedule", "schedule"),
    ("grad_clip", "gradient clipping"),
    ("precision", "precision"),
    ("loss", "loss"),
    ("deep_supervision", "deep supervision"),
    ("augmentation", "augmentation"),
    ("normalization", "normalisation"),
    ("plan", "plan changes"),
    ("validation", "validation and selection"),
    ("inference", "inference"),
    ("metrics", "metrics"),
)


def _text(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) and "family" in v for v in value):
        return "; ".join(_aug_text(v) for v in value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value) if value else "–"
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_text(v)}" for k, v in value.items()) if value else "–"
    return str(value)


def _aug_text(spec: Mapping[str, Any]) -> str:
    rest = {k: v for k, v in spec.items() if k not in ("family", "prob", "transforms")}
    inner = f" [{'; '.join(_aug_text(s) for s in spec['transforms'])}]" if "transforms" in spec else ""
    return f"{spec['family']}{inner} " + " ".join(f"{k} {_text(v)}" for k, v in rest.items()) + (f" p {spec['prob']:g}" if "prob" in spec else "")


def recipe_table(names: Sequence[str] | None = None) -> str:
    """The markdown tables (one a preset) of the default recipes against the authors': item, authors,
    ours, and why ours differs."""
    _load()
    names = [n for n in (names or sorted(_RECIPES)) if _RECIPES[n].authors]
    out = []
    for name in names:
        ours, theirs = _RECIPES[name], _RECIPES[_RECIPES[name].authors]
        out += [f"#### `{name}` (authors: `{theirs.name}`)", "", "| item | authors | ours | why ours differs |", "|---|---|---|---|"]
        for item, label in ITEMS:
            a, o = _text(getattr(theirs, item)), _text(getattr(ours, item))
            why = ours.differences.get(item, "" if a == o else "?")
            out.append(f"| {label} | {a.replace('|', '/')} | {'same' if a == o else o.replace('|', '/')} | {why} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
