# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""The registered recipes: the authors' (``<preset>_authors``, as read from their repository, see
``authors_recipes.md``), ours for each preset (registered under the preset's name: the authors' except
where ``differences`` say why), and the demos (``demo``, ``demo_2d``, ``demo_skin``) that train on a CPU
in minutes."""

from __future__ import annotations

from dataclasses import replace

from dlka_monai.networks.presets import SYNAPSE_CT_NORMALIZATION, SYNAPSE_2D_NORMALIZATION, dlka3d_pancreas, dlka2d_skin
from dlka_monai.training.recipe import Recipe, register_recipe

__all__ = ["MORE_DA", "dlka3d_synapse_authors", "dlka3d_pancreas_authors", "dlka2d_synapse_authors", "dlka2d_skin_authors"]

MORE_DA: tuple[dict, ...] = (
    {"family": "rotation", "degrees": 30.0, "prob": 0.2},
    {"family": "scaling", "range": [0.7, 1.4], "prob": 0.2},
    {"family": "noise", "variance": [0.0, 0.1], "prob": 0.1},
    {"family": "blur", "sigma": [0.5, 1.0], "prob": 0.2},
    {"family": "brightness", "range": [0.75, 1.25], "prob": 0.15},
    {"family": "contrast", "range": [0.75, 1.25], "prob": 0.15},
    {"family": "low_resolution", "zoom": [0.5, 1.0], "prob": 0.25},
    {"family": "gamma", "range": [0.7, 1.5], "inverted": True, "prob": 0.1},
    {"family": "gamma", "range": [0.7, 1.5], "inverted": False, "prob": 0.3},
    {"family": "mirror", "axes": [0, 1, 2], "prob": 0.5},
)
"""nnU-Net v1's "moreDA" augmentation of the authors' 3D Synapse trainer, in order."""

_OUR_VALIDATION = {"split": "val_fraction", "val_fraction": 0.25, "interval": 10, "monitor": "val_mean_dice", "select": "best"}
_WHY_VALIDATION = (
    "we select on a validation split carved from the training cases, never on the test cases; "
    "the authors' protocol is the recipe `<preset>_authors`"
)

dlka3d_synapse_authors = register_recipe(
    Recipe(
        name="dlka3d_synapse_authors",
        preset="dlka3d_synapse",
        description="the authors' 3D Synapse recipe (nnU-Net v1 trainer): all 18 training cases, final checkpoint",
        epochs=1000,
        iterations_per_epoch=250,
        batch_size=2,
        samples_per_case=1,
        sampling={"scheme": "class_balanced", "foreground": 0.33},
        optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5},
        schedule={"name": "poly", "power": 0.9, "step": "epoch"},
        grad_clip=12.0,
        precision="fp32",
        loss={"dice": 1.0, "ce": 1.0, "include_background": False, "batch": True, "squared": False},
        deep_supervision=(4 / 7, 2 / 7, 1 / 7),
        augmentation=MORE_DA,
        normalization=SYNAPSE_CT_NORMALIZATION,
        validation={"split": "none", "val_fraction": 0.0, "interval": 1, "monitor": "pseudo_dice_on_test", "select": "final"},
        inference={"overlap": 0.5, "mode": "gaussian", "sigma_scale": 0.125, "mirror_axes": [0, 1, 2], "largest_component": "per class where it helped"},
        metrics={"convention": "synapse_tables"},
    )
)

register_recipe(
    replace(
        dlka3d_synapse_authors,
        name="dlka3d_synapse",
        description="the authors' 3D Synapse recipe, selecting on a validation split of the training cases",
        validation=_OUR_VALIDATION,
        inference={"overlap": 0.5, "mode": "gaussian", "sigma_scale": 0.125, "mirror_axes": [], "largest_component": []},
        metrics={"convention": "default"},
        authors="dlka3d_synapse_authors",
        differences={
            "validation": _WHY_VALIDATION,
            "inference": "mirroring (8 passes) is an inference option (`--tta`), and post-processing is chosen on "
            "validation data by the planner, not on the test cases",
            "metrics": "Dice and HD95 in mm on all classes (convention `default` of `dlka_monai.evaluation.metrics`); "
            "`synapse_tables` is the authors'",
        },
    )
)

dlka3d_pancreas_authors = register_recipe(
    Recipe(
        name="dlka3d_pancreas_authors",
        preset="dlka3d_pancreas",
        description="the authors' NIH Pancreas recipe (UA-MT / VNet-style loop): 6000 iterations, last weights",
        epochs=24,
        iterations_per_epoch=250,
        batch_size=1,
        samples_per_case=1,
        sampling={"scheme": "uniform"},
        optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4},
        schedule={"name": "step", "step_size": 2500, "gamma": 0.1, "step": "iteration"},
        grad_clip=None,
        precision="fp32",
        loss={"dice": 1.0, "ce": 1.0, "include_background": False, "batch": True, "squared": True},
        deep_supervision=None,
        augmentation=(),
        normalization=dict(dlka3d_pancreas.normalization),
        validation={"split": "fold", "val_fraction": 0.0, "interval": 1, "monitor": "none", "select": "final"},
        inference={"overlap": 1 - 16 / 96, "mode": "constant", "mirror_axes": [], "largest_component": []},
        metrics={"convention": "pancreas"},
    )
)

register_recipe(
    replace(
        dlka3d_pancreas_authors,
        name="dlka3d_pancreas",
        description="the authors' NIH Pancreas recipe, selecting on a validation split of the training cases",
        validation=_OUR_VALIDATION,
        metrics={"convention": "default"},
        authors="dlka3d_pancreas_authors",
        differences={
            "validation": _WHY_VALIDATION,
            "metrics": "MONAI's Dice and HD95 in mm; the authors' voxel Dice, Jaccard, HD95 and ASD are the `pancreas` convention",
        },
    )
)

_IMGAUG_MEMBERS = [
    {"family": "mirror", "axes": [0], "prob": 0.5},
    {"family": "mirror", "axes": [1], "prob": 0.5},
    {"family": "noise", "std": 0.005},
    {"family": "blur", "sigma": [1.0, 1.0]},
    {"family": "contrast", "range": [0.5, 1.5]},
    {"family": "scaling", "range": [0.5, 2.0]},
    {"family": "rotation", "degrees": 40.0},
    {"family": "shear", "degrees": 16.0},
    {"family": "piecewise_affine", "scale": [0.008, 0.03]},
    {"family": "translation", "fraction": 0.2},
]
# imgaug's SomeOf((0, 4), [...]) of the authors' 2D Synapse dataset, on images in [0, 1]
_IMGAUG_2D = ({"family": "some_of", "count": [0, 4], "transforms": _IMGAUG_MEMBERS},)
# ours: the same without the piecewise affine warp, which MONAI does not have
_IMGAUG_2D_OURS = ({"family": "some_of", "count": [0, 4], "transforms": [m for m in _IMGAUG_MEMBERS if m["family"] != "piecewise_affine"]},)

dlka2d_synapse_authors = register_recipe(
    Recipe(
        name="dlka2d_synapse_authors",
        preset="dlka2d_synapse",
        description="the authors' 2D Synapse recipe (MERIT / CASCADE-derived trainer): all slices of the 18 cases",
        epochs=400,
        iterations_per_epoch=None,
        batch_size=24,
        samples_per_case=1,
        sampling={"scheme": "whole"},
        optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4},
        schedule={"name": "poly", "power": 0.9, "step": "iteration"},
        grad_clip=None,
        precision="fp32",
        loss={"dice": 0.6, "ce": 0.4, "include_background": True, "batch": True, "squared": True},
        deep_supervision=None,
        augmentation=_IMGAUG_2D,
        normalization=SYNAPSE_2D_NORMALIZATION,
        validation={"split": "none", "val_fraction": 0.0, "interval": 20, "monitor": "test_dice", "select": "final"},
        inference={"overlap": 0.0, "mode": "constant", "mirror_axes": [], "largest_component": []},
        metrics={"convention": "synapse_tables"},
    )
)

register_recipe(
    replace(
        dlka2d_synapse_authors,
        name="dlka2d_synapse",
        description="the authors' 2D Synapse recipe, selecting on a validation split of the training cases",
        validation=_OUR_VALIDATION,
        augmentation=_IMGAUG_2D_OURS,
        metrics={"convention": "default"},
        authors="dlka2d_synapse_authors",
        differences={
            "validation": _WHY_VALIDATION,
            "augmentation": "imgaug's piecewise affine warp has no MONAI transform and is left out",
            "metrics": "MONAI's Dice and HD95 in mm; `synapse_tables` is the authors' convention",
        },
    )
)

dlka2d_skin_authors = register_recipe(
    Recipe(
        name="dlka2d_skin_authors",
        preset="dlka2d_skin",
        description="the authors' skin-lesion recipe (ISIC 2017 / 2018, PH2)",
        epochs=100,
        iterations_per_epoch=None,
        batch_size=4,
        samples_per_case=1,
        sampling={"scheme": "whole"},
        optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4},
        schedule={"name": "plateau", "monitor": "val_loss", "mode": "min", "factor": 0.5, "patience": 10},
        grad_clip=None,
        precision="fp32",
        loss={"dice": 0.0, "ce": 1.0, "include_background": True, "batch": False, "squared": False},
        deep_supervision=None,
        augmentation=({"family": "mirror", "axes": [1], "prob": 0.5},),
        normalization=dict(dlka2d_skin.normalization),
        validation={"split": "authors", "interval": 1, "monitor": "val_loss", "select": "best"},
        inference={"threshold": 0.5, "opening": 6, "fill_holes": True, "size": 224},
        metrics={"convention": "skin"},
    )
)

register_recipe(
    replace(
        dlka2d_skin_authors,
        name="dlka2d_skin",
        description="the authors' skin-lesion recipe, the plateau schedule and selection on validation Dice",
        schedule={"name": "plateau", "monitor": "val_mean_dice", "mode": "max", "factor": 0.5, "patience": 10},
        validation={"split": "authors", "interval": 1, "monitor": "val_mean_dice", "select": "best"},
        authors="dlka2d_skin_authors",
        differences={
            "schedule": "the plateau follows the validation Dice, the metric the model is selected and reported on",
            "validation": "the best checkpoint by validation Dice rather than validation loss",
        },
    )
)

# the demos: the settings that differ from the paper's when no dataset is given, so that they train on a CPU
_DEMO_WINDOW = {"scheme": "window", "a_min": -175.0, "a_max": 250.0}
demo = register_recipe(
    Recipe(
        name="demo",
        preset="dlka3d_synapse",
        description="the 3D demo: a narrow, shallow net of the same blocks on coarse patches, AdamW, more crops a "
        "case, a cheaper validation; trains on a CPU in minutes",
        epochs=100,
        iterations_per_epoch=None,
        batch_size=1,
        samples_per_case=4,
        sampling={"scheme": "pos_neg", "pos": 2, "neg": 1},
        optimizer={"name": "adamw", "lr": 0.003, "weight_decay": 1e-5},
        schedule={"name": "poly", "power": 0.9, "step": "epoch"},
        grad_clip=None,
        precision="amp",
        loss={"dice": 1.0, "ce": 1.0, "include_background": True, "batch": True, "squared": False},
        deep_supervision=(1.0, 0.5, 0.25),
        augmentation=(
            {"family": "mirror", "axes": [0, 1, 2], "prob": 0.1},
            {"family": "rot90", "axes": [1, 2], "prob": 0.1},
            {"family": "brightness", "range": [0.9, 1.1], "prob": 0.5},
            {"family": "shift_intensity", "offset": 0.1, "prob": 0.5},
        ),
        normalization=_DEMO_WINDOW,
        plan={"network": {"img_size": [16, 32, 32], "feature_size": 8, "depths": [1, 1, 1, 1]}, "pixdim": [6.0, 4.0, 4.0]},
        validation={"split": "val_fraction", "val_fraction": 0.25, "interval": 10, "monitor": "val_mean_dice", "select": "best"},
        inference={"overlap": 0.25, "mode": "gaussian", "sigma_scale": 0.125, "mirror_axes": [], "largest_component": []},
        metrics={"convention": "default"},
        num_workers=0,
    ),
    demo_for=("dlka3d_synapse",),
)

# the pancreas demo: the same, on the pancreas preset's intensity window
register_recipe(
    replace(demo, name="demo_pancreas", preset="dlka3d_pancreas", normalization=dict(dlka3d_pancreas.normalization)),
    demo_for=("dlka3d_pancreas",),
)

# the 2D demo: the 3D demo's training on axial slices (the 2D net has no deep supervision)
register_recipe(
    replace(
        demo,
        name="demo_2d",
        preset="dlka2d_synapse",
        description="the 2D demo: axial slices of the demo volumes at 2.5 mm resized to 96², a MaxViT-pico "
        "encoder, 8 slices a case; trains on a CPU in minutes",
        epochs=60,
        samples_per_case=8,
        deep_supervision=None,
        augmentation=(
            {"family": "mirror", "axes": [0, 1], "prob": 0.25},
            {"family": "rot90", "axes": [0, 1], "prob": 0.25},
            {"family": "rotation", "radians": 0.35, "padding": "border", "prob": 0.25},
            {"family": "brightness", "range": [0.9, 1.1], "prob": 0.5},
            {"family": "shift_intensity", "offset": 0.1, "prob": 0.5},
        ),
        plan={"pixdim": [-1.0, 2.5, 2.5], "network": {"encoder": "maxvit_rmlp_pico_rw_256", "img_size": 96}},
        validation={**demo.validation, "interval": 10},
        inference={"overlap": 0.0, "mode": "constant", "mirror_axes": [], "largest_component": []},
    ),
    demo_for=("dlka2d_synapse",),
)

register_recipe(
    replace(
        dlka2d_skin_authors,
        name="demo_skin",
        description="the skin demo: small images and a small encoder, so that it trains in minutes on a CPU",
        epochs=15,
        loss={"dice": 1.0, "ce": 1.0, "include_background": True, "batch": False, "squared": False},
        schedule={"name": "plateau", "monitor": "val_mean_dice", "mode": "max", "factor": 0.5, "patience": 10},
        plan={"network": {"img_size": 32, "encoder": "maxvit_rmlp_pico_rw_256"}},
        validation={"split": "counts", "counts": [16, 8, 8], "interval": 1, "monitor": "val_mean_dice", "select": "best"},
        num_workers=0,
    ),
    demo_for=("dlka2d_skin",),
)
