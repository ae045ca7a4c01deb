# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Plans: what a model needs to be used again (network, spacing, orientation, normalisation, classes), as
plain data stored in every model file and in ``plan.json``."""

from .fingerprint import FOREGROUND_SAMPLES, dataset_fingerprint, datalist_fingerprint
from .format import (
    PLAN_FORMAT,
    PLAN_FORMAT_VERSION,
    build_network,
    check_plan,
    class_names,
    make_plan,
    network_plan,
    overlay_plan,
    preset_plan,
    read_plan_file,
    recipe_inference,
    write_plan_file,
)
from .planner import MIN_COVERAGE, feed_axcodes, plan_from_fingerprint, target_spacing

__all__ = [
    "FOREGROUND_SAMPLES",
    "MIN_COVERAGE",
    "dataset_fingerprint",
    "datalist_fingerprint",
    "feed_axcodes",
    "plan_from_fingerprint",
    "target_spacing",
    "PLAN_FORMAT",
    "PLAN_FORMAT_VERSION",
    "build_network",
    "check_plan",
    "class_names",
    "make_plan",
    "network_plan",
    "overlay_plan",
    "preset_plan",
    "read_plan_file",
    "recipe_inference",
    "write_plan_file",
]
