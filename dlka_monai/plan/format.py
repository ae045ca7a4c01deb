# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""The plan: what a model needs to be used again, as plain data (as nnU-Net's plans are).

A plan is a dict of JSON types only, so it is stored beside the weights in every model file the project
writes and still loads with ``torch.load(weights_only=True)``, and it is the content of a ``plan.json``::

    {
        "format": "dlka_monai.plan", "format_version": 1, "dlka_monai_version": "0.1.0",
        "preset": "dlka3d_synapse",              # registry name of the network
        "network": {"in_channels": 1, "out_channels": 14, "img_size": [64, 128, 128], ...},  # every argument
        "spatial_dims": 3,
        "modality": "CT",
        "axcodes": "SAR",                        # orientation of the arrays fed to the net
        "pixdim": [3.0, 0.76, 0.76],             # mm, along those axes; -1 keeps an axis; null: no resampling
        "normalization": {"scheme": "window", "a_min": -175.0, "a_max": 250.0},
        "class_names": {"0": "background", "1": "spleen", ...},
        "postprocessing": {"largest_component": []},   # classes kept as their largest connected component
    }

Other keys (e.g. the dataset fingerprint a planner derived the plan from) are kept as they are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

import dlka_monai
from dlka_monai.data.validation import InvalidInputError
from dlka_monai.networks import create_network, get_preset, list_networks, network_arguments

__all__ = [
    "PLAN_FORMAT",
    "PLAN_FORMAT_VERSION",
    "preset_plan",
    "make_plan",
    "network_plan",
    "overlay_plan",
    "check_plan",
    "build_network",
    "read_plan_file",
    "write_plan_file",
    "class_names",
]

PLAN_FORMAT = "dlka_monai.plan"
PLAN_FORMAT_VERSION = 1
_REQUIRED = ("preset", "network", "spatial_dims", "modality", "axcodes", "pixdim", "normalization", "class_names")


def _plain(value: Any) -> Any:
    """``value`` as JSON types: tuples become lists, mapping keys strings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def make_plan(
    preset: str,
    network: Mapping[str, Any] | None = None,
    *,
    axcodes: str | None = None,
    pixdim: Sequence[float] | None = None,
    normalization: Mapping[str, Any] | None = None,
    class_names: Mapping[Any, str] | None = None,
    modality: str | None = None,
    postprocessing: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A plan for ``preset``: every value not given is the preset's.

    Args:
        preset: registry name.
        network: network arguments replacing the preset's (the plan holds every argument, defaults included).
        axcodes, pixdim, normalization, class_names, modality: see the module docstring and
            :class:`dlka_monai.networks.Preset`.
        postprocessing: e.g. ``{"largest_component": [1, 6]}``.
        extra: other plain-data entries kept in the plan (e.g. ``dataset`` with a fingerprint).

    Raises:
        InvalidInputError: the values do not make a usable plan (see :func:`check_plan`).
    """
    spec = get_preset(preset)
    args = network_arguments(preset, **dict(network or {}))
    for name in spec.init_only:
        args.pop(name, None)
    plan = {
        "format": PLAN_FORMAT,
        "format_version": PLAN_FORMAT_VERSION,
        "dlka_monai_version": dlka_monai.__version__,
        "preset": preset,
        "network": args,
        "spatial_dims": spec.spatial_dims,
        "modality": spec.modality if modality is None else modality,
        "axcodes": spec.axcodes if axcodes is None else axcodes,
        "pixdim": spec.pixdim if pixdim is None else pixdim,
        "normalization": spec.normalization if normalization is None else normalization,
        "class_names": spec.class_names if class_names is None else class_names,
        "postprocessing": {"largest_component": []} if postprocessing is None else postprocessing,
        **extra,
    }
    return check_plan(_plain(plan))


def preset_plan(preset: str, **network: Any) -> dict[str, Any]:
    """The plan of ``preset`` with its defaults; keyword arguments replace network arguments."""
    return make_plan(preset, network)


def network_plan(network: nn.Module, plan: Mapping[str, Any] | None = None, **updates: Any) -> dict[str, Any]:
    """The plan of a network built by :func:`dlka_monai.networks.create_network` (or
    :func:`build_network`): its preset and the arguments it was really built with, and the other entries
    of ``plan`` (default: the preset's), replaced by ``updates`` (e.g. the ``pixdim`` a run trained at).

    A ``DistributedDataParallel`` (or other) wrapper with a ``module`` is unwrapped.
    """
    network = getattr(network, "module", network)
    name = getattr(network, "preset_name", None)
    if name is None:
        raise ValueError(f"{type(network).__name__} was not built by create_network: no preset to plan it with.")
    base = {k: v for k, v in dict(plan or {}).items() if k not in ("format", "format_version", "dlka_monai_version")}
    if base.get("preset", name) != name:
        raise ValueError(f"the network is a {name} but the plan is of {base['preset']}.")
    base.update(preset=name, network=network.network_args, **updates)
    return make_plan(**base)


def _fail(source: str, problem: str) -> InvalidInputError:
    return InvalidInputError(f"{source}: {problem}")


def check_plan(plan: Any, source: str = "plan") -> dict[str, Any]:
    """Check that ``plan`` is a usable plan of a registered preset; returns it.

    Raises:
        InvalidInputError: in one line naming ``source``: not a dict, a missing entry, an unknown preset,
            a newer format, or class names that do not match the network's classes.
    """
    if not isinstance(plan, Mapping):
        raise _fail(source, f"a plan is a dict, got {type(plan).__name__}.")
    missing = [k for k in _REQUIRED if k not in plan]
    if missing:
        raise _fail(source, f"not a dlka_monai plan: it lacks {', '.join(missing)}.")
    if int(plan.get("format_version", PLAN_FORMAT_VERSION)) > PLAN_FORMAT_VERSION:
        raise _fail(source, f"plan format {plan['format_version']} is newer than this dlka_monai's ({PLAN_FORMAT_VERSION}).")
    if plan["preset"] not in list_networks():
        raise _fail(source, f"unknown preset {plan['preset']!r} (known: {', '.join(list_networks())}).")
    classes = int(plan["network"].get("out_channels", -1))
    values = sorted(int(k) for k in plan["class_names"])
    if values != list(range(classes)):
        raise _fail(source, f"class_names name the values {values} but the network has {classes} classes.")
    return dict(plan)


def class_names(plan: Mapping[str, Any]) -> dict[int, str]:
    """The plan's label value -> class name, with integer values."""
    return {int(k): v for k, v in plan["class_names"].items()}


def build_network(plan: Mapping[str, Any], **overrides: Any) -> nn.Module:
    """The network of ``plan``, untrained; keyword ``overrides`` replace network arguments (and win over
    the plan's, as config overrides do)."""
    plan = check_plan(plan)
    return create_network(plan["preset"], **{**plan["network"], **overrides})


def read_plan_file(path: str | os.PathLike) -> dict[str, Any]:
    """The plan in the JSON file ``path``, checked."""
    try:
        plan = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise InvalidInputError(f"{path}: no such plan file.") from e
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"{path}: cannot be read as a JSON plan: {e}") from e
    return check_plan(plan, str(path))


def write_plan_file(plan: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``plan`` (checked) as JSON to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(check_plan(_plain(plan)), indent=2) + "\n", encoding="utf-8")
    return path


def overlay_plan(plan: Mapping[str, Any], overlay: Mapping[str, Any] | None) -> dict[str, Any]:
    """``plan`` with the entries of ``overlay`` replacing its own; ``overlay["network"]`` replaces single
    network arguments (e.g. ``{"network": {"img_size": [32, 64, 64]}, "pixdim": [3.0, 2.5, 2.5]}``)."""
    overlay = dict(overlay or {})
    base = {k: v for k, v in plan.items() if k not in ("format", "format_version", "dlka_monai_version")}
    network = {**base.pop("network"), **overlay.pop("network", {})}
    return make_plan(**{**base, **overlay}, network=network)
