# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Optimizers used to train D-LKA Net."""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["build_optimizer"]


def build_optimizer(
    name: str,
    params: Iterable[torch.nn.Parameter],
    lr: float,
    weight_decay: float | None = None,
    momentum: float | None = None,
    nesterov: bool | None = None,
) -> torch.optim.Optimizer:
    """The authors' SGD (momentum 0.99, Nesterov, weight decay 3e-5, as nnU-Net) or AdamW.

    Args:
        name: ``"sgd"`` or ``"adamw"``.
        params: parameters to optimise.
        lr: initial learning rate.
        weight_decay: overrides the default of the chosen optimizer (3e-5 SGD, 1e-5 AdamW).
        momentum, nesterov: override SGD's defaults (0.99, True); the other recipes' SGD has 0.9, no Nesterov.
    """
    name = name.lower()
    if name == "sgd":
        wd = 3e-5 if weight_decay is None else weight_decay
        momentum = 0.99 if momentum is None else momentum
        nesterov = True if nesterov is None else nesterov
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    if name == "adamw":
        wd = 1e-5 if weight_decay is None else weight_decay
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise ValueError(f"unknown optimizer {name!r}; use 'sgd' or 'adamw'.")
