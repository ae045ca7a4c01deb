# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Name -> constructor registry of the D-LKA presets (as timm's ``create_model``)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["register_network", "create_network", "list_networks"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_network(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a preset constructor under its function name."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"network preset {fn.__name__!r} is already registered.")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_networks() -> list[str]:
    """Names accepted by :func:`create_network`, sorted."""
    return sorted(_REGISTRY)


def create_network(name: str, **overrides) -> nn.Module:
    """Build the preset ``name``; keyword ``overrides`` replace the preset's arguments
    (e.g. ``feature_size=4, depths=(1, 1, 1, 1)`` for a tiny test net)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown network {name!r}; available: {', '.join(list_networks())}.")
    return _REGISTRY[name](**overrides)
