# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Optional compiled kernels: which one an operator runs, decided once per process.

Kernels are used only where ``pip install`` alone brings their compiler (numba on CPU, Triton on CUDA).
Each kernel module of this package imports its package at the top, so a failed import means "not
available" and the operator keeps its pure-PyTorch reference path. One log line per operator and
device says which path runs.
"""

from __future__ import annotations

import functools
import importlib
import logging
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

__all__ = ["kernel_module"]

_logger = logging.getLogger(__name__)


@functools.cache
def kernel_module(op: str, device: str, module: str, package: str, fallback: str = "pure-PyTorch path") -> ModuleType | None:
    """The kernel module ``dlka_monai.networks.layers.<module>``, or None when ``package`` cannot be
    imported; logs once which path ``op`` runs on ``device``.

    Args:
        op: operator name for the log line, e.g. ``"deform_conv3d"``.
        device: device name for the log line, e.g. ``"CPU"``.
        module: module name inside ``dlka_monai.networks.layers``.
        package: the pip package the kernels need (named in the log line and the install hint).
        fallback: what runs without them, for the log line.
    """
    try:
        kernels = importlib.import_module(f"dlka_monai.networks.layers.{module}")
    except ImportError as e:
        _logger.info(f"{op} on {device}: {fallback} ({package} unavailable: {e}); pip install {package}")
        return None
    try:
        found = version(package)
    except PackageNotFoundError:
        found = "(version unknown)"
    _logger.info(f"{op} on {device}: {package} {found} kernels")
    return kernels
