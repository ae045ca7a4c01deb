# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Name -> preset registry (as timm pairs each ``create_model`` name with its default config): a preset is
a network constructor with its arguments and the facts needed to use the network on images: spacing,
orientation, intensity normalisation and class names. Those facts are written once, here and in
``presets.py``; the bundle configs, the command line and the packer read them, and a trained model carries
them in its plan (:mod:`dlka_monai.plan`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["Preset", "register_preset", "get_preset", "create_network", "list_networks", "network_arguments"]


@dataclass(frozen=True)
class Preset:
    """A registered network preset: how to build the network, and how images must be prepared for it.

    Args:
        name: registry name, e.g. ``"dlka3d_synapse"``.
        network: the network class (or a constructor taking keyword arguments).
        args: the preset's network arguments; the constructor's defaults fill in the rest.
        spatial_dims: spatial dimensions of the network input (2 for the slice-wise or photo networks).
        modality: ``"CT"``, ``"MR"`` or ``"RGB"``.
        axcodes: orientation the image is brought to before it is fed (MONAI ``Orientationd``), e.g.
            ``"SAR"`` for ``(z, y, x)`` arrays; None for images without orientation (photographs).
        pixdim: voxel size in mm along the axes after ``axcodes``; ``-1`` keeps an axis' spacing;
            None for no resampling.
        normalization: intensity normalisation, see :func:`dlka_monai.data.transforms.intensity_transform`.
        class_names: label value -> class name, background included, values ``0 .. out_channels - 1``.
        description: one line for listings, model cards and metadata.
        init_only: network arguments that only initialise weights (e.g. a local file of pretrained encoder
            weights); they are not part of a plan, since a trained model brings its own weights.
    """

    name: str
    network: Callable[..., nn.Module]
    args: Mapping[str, Any]
    spatial_dims: int
    modality: str
    axcodes: str | None
    pixdim: Sequence[float] | None
    normalization: Mapping[str, Any]
    class_names: Mapping[int, str]
    description: str = ""
    init_only: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        classes = int(self.args["out_channels"])
        if sorted(int(k) for k in self.class_names) != list(range(classes)):
            raise ValueError(f"preset {self.name}: class_names must name the values 0..{classes - 1}.")

    def __call__(self, **overrides: Any) -> nn.Module:
        """Build the network; keyword ``overrides`` replace preset arguments."""
        return self.network(**{**self.args, **overrides})


_REGISTRY: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    """Register ``preset`` under its name; returns it (it builds its network when called)."""
    if preset.name in _REGISTRY:
        raise ValueError(f"network preset {preset.name!r} is already registered.")
    _REGISTRY[preset.name] = preset
    return preset


def list_networks() -> list[str]:
    """Names accepted by :func:`create_network`, sorted."""
    return sorted(_REGISTRY)


def get_preset(name: str) -> Preset:
    """The registered preset ``name``; a ``KeyError`` listing the known ones otherwise."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown network {name!r}; available: {', '.join(list_networks())}.")
    return _REGISTRY[name]


def network_arguments(name: str, **overrides: Any) -> dict[str, Any]:
    """Every argument the network of preset ``name`` is built with: the constructor's defaults, then the
    preset's arguments, then ``overrides``. Unknown names raise a ``TypeError``."""
    preset = get_preset(name)
    params = inspect.signature(preset.network).parameters
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise TypeError(f"{name}: the network has no argument(s) {', '.join(unknown)}.")
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    return {**defaults, **preset.args, **overrides}


def create_network(name: str, **overrides: Any) -> nn.Module:
    """Build the preset ``name``; keyword ``overrides`` replace the preset's arguments
    (e.g. ``feature_size=4, depths=(1, 1, 1, 1)`` for a tiny test net).

    The network remembers the arguments it was built with (``network.preset_name``,
    ``network.network_args``), so that what is trained with it can be saved with a plan that rebuilds it.
    """
    args = network_arguments(name, **overrides)
    network = get_preset(name).network(**args)
    network.preset_name = name
    network.network_args = args
    return network
