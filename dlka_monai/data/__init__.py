# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Data layer: datalists of the D-LKA datasets, a synthetic demo dataset, and image readers."""

from __future__ import annotations

from typing import Any

from .datalist import (
    BTCV_TEST_CASES,
    BTCV_TRAIN_CASES,
    btcv_datalist,
    inference_datalist,
    load_datalist,
    pancreas_h5_datalist,
    split_folds,
    split_validation,
)
from .readers import NIFTI_SUFFIXES, LoadPancreasH5d, SITKReader
from .slices import LoadNpzSliced, npz_slice_datalist, training_datalist
from .validation import InvalidInputError, check_datalist, check_image, check_label, check_output_dir

__all__ = [
    "NIFTI_SUFFIXES",
    "BTCV_TRAIN_CASES",
    "BTCV_TEST_CASES",
    "btcv_datalist",
    "split_validation",
    "split_folds",
    "load_datalist",
    "inference_datalist",
    "pancreas_h5_datalist",
    "DEMO_LABELS",
    "generate_demo_dataset",
    "SITKReader",
    "LoadPancreasH5d",
    "LoadNpzSliced",
    "npz_slice_datalist",
    "training_datalist",
    "InvalidInputError",
    "check_image",
    "check_label",
    "check_datalist",
    "check_output_dir",
]


def __getattr__(name: str) -> Any:
    # the demo module is imported on first use, so that `python -m dlka_monai.data.demo` does not find it
    # already imported by this package (runpy would warn and run it twice)
    if name in ("DEMO_LABELS", "generate_demo_dataset"):
        from . import demo

        return getattr(demo, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
