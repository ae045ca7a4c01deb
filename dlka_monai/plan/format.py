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

Other keys are kept as they are: e.g. the dataset fingerprint a planner derived the plan from, and in a
trained model's plan the ``recipe`` it was trained with and its ``training_precision`` (``"fp32"`` or
``"fp16 autocast (amp) on cuda"``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

import dlka_monai
from dlka_monai.data.transforms import NORMALIZATION_SCHEMES
from dlka_monai.data.validation import InvalidInputError, read_json_object
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


# orientation letters MONAI's Orientationd takes, one of each pair
_AXES = ({"L", "R"}, {"A", "P"}, {"S", "I"})
_MAX_PIXDIM = 100.0  # mm; a larger voxel is a broken plan, not a scan
_MAX_TEXT = 200
# MONAI's ConfigParser evaluates strings starting with "$", resolves "@" and expands "%", and rewrites "#"
# anywhere: text a plan puts into a bundle's JSON (metadata.json's channel_def, modality) holds none of them
_CONFIG_SYNTAX_START = ("$", "@", "%")


class _PlanReader:
    """Reads one plan, raising one line naming ``source`` and the field at its first violation."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, field: str, problem: str) -> InvalidInputError:
        return _fail(self.source, f"plan entry {field}: {problem}")

    def number(self, field: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(field, f"must be a number, got {_shown(value)}.")
        if not math.isfinite(value):
            raise self.fail(field, f"must be a finite number, got {value}.")
        return float(value)

    def integer(self, field: str, value: Any, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"must be a whole number, got {_shown(value)}.")
        if value < minimum:
            raise self.fail(field, f"must be at least {minimum}, got {value}.")
        return value

    def mapping(self, field: str, value: Any) -> Mapping:
        if not isinstance(value, Mapping):
            raise self.fail(field, f"must be a dict, got {_shown(value)}.")
        return value

    def text(self, field: str, value: Any) -> str:
        """Plain text: printable, one line, and nothing MONAI's ConfigParser would run, resolve or rewrite."""
        if not isinstance(value, str) or not value.strip():
            raise self.fail(field, f"must be a non-empty string, got {_shown(value)}.")
        if len(value) > _MAX_TEXT or not value.isprintable():
            raise self.fail(field, f"must be one printable line of at most {_MAX_TEXT} characters.")
        if value.startswith(_CONFIG_SYNTAX_START) or "#" in value:
            raise self.fail(
                field, f"{value[:40]!r} starts with $, @ or % or holds #, which MONAI's config parser would "
                "evaluate or rewrite in a bundle's configs; a plan's text is data."
            )
        return value


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _check_network(read: _PlanReader, preset: str, network: Any) -> None:
    network = read.mapping("network", network)
    spec = get_preset(preset)
    try:
        defaults = network_arguments(preset)
    except TypeError as e:  # pragma: no cover - a registry bug
        raise read.fail("network", str(e)) from e
    unknown = sorted(map(str, set(network) - set(defaults)))
    if unknown:
        raise read.fail("network", f"{preset} has no argument(s) {', '.join(unknown)}.")
    for name, value in network.items():
        field, default = f"network.{name}", defaults[name]
        if name in spec.init_only:
            if value is not None:
                raise read.fail(field, "initialises untrained weights only and is not part of a plan; remove it.")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise read.fail(field, f"must be true or false, got {_shown(value)}.")
        elif isinstance(default, int):
            read.integer(field, value)
        elif isinstance(default, float):
            number = read.number(field, value)
            if name == "dropout" and not 0.0 <= number < 1.0:
                raise read.fail(field, f"must be in [0, 1), got {number}.")
        elif isinstance(default, (tuple, list)):
            if isinstance(value, int) and not isinstance(value, bool):
                read.integer(field, value)
            elif not isinstance(value, (list, tuple)) or len(value) != len(default):
                raise read.fail(field, f"must be a list of {len(default)} whole numbers, got {_shown(value)}.")
            else:
                for i, v in enumerate(value):
                    read.integer(f"{field}[{i}]", v)
        elif isinstance(default, str):
            if name == "norm_name" and isinstance(value, (list, tuple)) and value:
                read.text(f"{field}[0]", value[0])
            else:
                read.text(field, value)
                if name == "encoder" and not value.replace("_", "").replace(".", "").isalnum():
                    raise read.fail(field, f"must be a timm model name (letters, digits, '_', '.'), got {value!r}.")


def _check_geometry(read: _PlanReader, plan: Mapping) -> None:
    axcodes, pixdim = plan["axcodes"], plan["pixdim"]
    if axcodes is not None:
        if not isinstance(axcodes, str) or len(axcodes) != 3 or any(
            sum(c in axis for c in axcodes) != 1 for axis in _AXES
        ):
            raise read.fail("axcodes", f"must be null or three orientation letters, one of each of L/R, A/P, S/I (e.g. \"SAR\"), got {_shown(axcodes)}.")
    if pixdim is None:
        return
    if not isinstance(pixdim, (list, tuple)) or len(pixdim) != 3:
        raise read.fail("pixdim", f"must be null or a list of 3 spacings in mm, got {_shown(pixdim)}.")
    for i, value in enumerate(pixdim):
        value = read.number(f"pixdim[{i}]", value)
        if value != -1.0 and not 0.0 < value <= _MAX_PIXDIM:
            raise read.fail(f"pixdim[{i}]", f"must be a spacing in (0, {_MAX_PIXDIM:g}] mm, or -1 to keep the axis' spacing, got {value}.")


def _check_normalization(read: _PlanReader, normalization: Any) -> None:
    norm = read.mapping("normalization", normalization)
    scheme = norm.get("scheme")
    if scheme not in NORMALIZATION_SCHEMES:
        raise read.fail("normalization.scheme", f"must be one of {', '.join(NORMALIZATION_SCHEMES)}, got {_shown(scheme)}.")

    def ordered(low: str, high: str, pair: Any = None) -> None:
        if pair is None:
            lo, hi = (norm.get(k) for k in (low, high))
            fields = (f"normalization.{low}", f"normalization.{high}")
        else:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise read.fail(f"normalization.{low}", f"must be a list [low, high], got {_shown(pair)}.")
            lo, hi = pair
            fields = (f"normalization.{low}[0]", f"normalization.{low}[1]")
        if read.number(fields[0], lo) >= read.number(fields[1], hi):
            raise read.fail(fields[0], f"must be below {fields[1]}, got {lo} and {hi}.")

    if scheme == "window":
        ordered("a_min", "a_max")
        if "b_min" in norm or "b_max" in norm:  # a window mapped to [b_min, b_max] instead of [0, 1]
            ordered("b_min", "b_max")
    elif scheme == "minmax":
        ordered("b_min", "b_max")
    elif scheme == "ct":
        ordered("clip", "", norm.get("clip"))
        read.number("normalization.mean", norm.get("mean"))
        if read.number("normalization.std", norm.get("std")) <= 0:
            raise read.fail("normalization.std", f"must be positive, got {norm['std']}.")


def _check_classes(read: _PlanReader, plan: Mapping) -> None:
    names = read.mapping("class_names", plan["class_names"])
    classes = plan["network"].get("out_channels", get_preset(plan["preset"]).args.get("out_channels"))
    values = []
    for key, name in names.items():
        if isinstance(key, bool) or not (isinstance(key, int) or (isinstance(key, str) and key.isdigit())):
            raise read.fail("class_names", f"keys are label values (whole numbers), got {key!r}.")
        values.append(int(key))
        read.text(f"class_names.{key}", name)
    if sorted(values) != list(range(classes)):
        raise _fail(read.source, f"class_names name the values {sorted(values)} but the network has {classes} classes.")
    post = read.mapping("postprocessing", plan.get("postprocessing", {}))
    component = post.get("largest_component", [])
    if not isinstance(component, (list, tuple)):
        raise read.fail("postprocessing.largest_component", f"must be a list of classes, got {_shown(component)}.")
    for i, c in enumerate(component):
        if read.integer(f"postprocessing.largest_component[{i}]", c) >= classes:
            raise read.fail(f"postprocessing.largest_component[{i}]", f"class {c} is not one of the network's 1..{classes - 1}.")


def check_plan(plan: Any, source: str = "plan") -> dict[str, Any]:
    """Check that ``plan`` is a usable plan of a registered preset; returns it. Every plan a model file, a
    ``plan.json`` or a caller brings is read through here (a plan is untrusted input).

    Checked: the format and its version; a registered preset and its ``spatial_dims``; network arguments
    the preset's network has, of the types of its defaults (positive whole numbers for sizes, a dropout in
    [0, 1)); ``axcodes`` (null or one letter of each of L/R, A/P, S/I); ``pixdim`` (null or 3 finite
    spacings in (0, 100] mm, -1 keeping an axis); the normalisation scheme and its finite values (a window
    with ``a_min < a_max``, a positive ``std``); class names for exactly the network's classes, as plain
    text (see below); the postprocessing classes.

    Class names and the modality end up in a packed bundle's ``metadata.json``, which MONAI's config parser
    reads: a string starting with ``$`` would run as Python, ``@`` and ``%`` would resolve references or
    open files, ``#`` would be rewritten. Such text is refused, so a model's text stays data.

    Raises:
        InvalidInputError: in one line naming ``source`` and the field of the first violation.
    """
    read = _PlanReader(source)
    if not isinstance(plan, Mapping):
        raise _fail(source, f"a plan is a dict, got {type(plan).__name__}.")
    missing = [k for k in _REQUIRED if k not in plan]
    if missing:
        raise _fail(source, f"not a dlka_monai plan: it lacks {', '.join(missing)}.")
    if plan.get("format", PLAN_FORMAT) != PLAN_FORMAT:
        raise read.fail("format", f"must be {PLAN_FORMAT!r}, got {_shown(plan['format'])}.")
    version = read.integer("format_version", plan.get("format_version", PLAN_FORMAT_VERSION))
    if version > PLAN_FORMAT_VERSION:
        raise _fail(source, f"plan format {version} is newer than this dlka_monai's ({PLAN_FORMAT_VERSION}).")
    preset = plan["preset"]
    if not isinstance(preset, str) or preset not in list_networks():
        raise _fail(source, f"unknown preset {preset!r} (known: {', '.join(list_networks())}).")
    if plan["spatial_dims"] != get_preset(preset).spatial_dims or isinstance(plan["spatial_dims"], bool):
        raise read.fail("spatial_dims", f"{preset} is {get_preset(preset).spatial_dims}D, got {_shown(plan['spatial_dims'])}.")
    read.text("modality", plan["modality"])
    _check_network(read, preset, plan["network"])
    _check_geometry(read, plan)
    _check_normalization(read, plan["normalization"])
    _check_classes(read, plan)
    return dict(plan)


def class_names(plan: Mapping[str, Any]) -> dict[int, str]:
    """The plan's label value -> class name, with integer values."""
    return {int(k): v for k, v in plan["class_names"].items()}


_INFERENCE_DEFAULTS = {"overlap": 0.5, "mode": "gaussian", "mirror_axes": []}


def recipe_inference(plan: Mapping[str, Any]) -> dict[str, Any]:
    """How the recipe a model was trained with (the plan's ``recipe``) infers and scores: ``overlap`` and
    ``mode`` of the sliding windows, ``mirror_axes`` (test-time mirroring; empty: none) and
    ``metric_convention`` (one of :data:`dlka_monai.evaluation.CONVENTIONS`). Items the recipe does not
    give, or a plan without a recipe (a model trained before recipes were recorded), get the defaults:
    overlap 0.5, Gaussian weighting, no mirroring, the ``default`` metrics."""
    from dlka_monai.evaluation.metrics import CONVENTIONS

    recipe = plan.get("recipe") or {}
    items = recipe.get("inference") or {}
    settings = {key: items.get(key, value) for key, value in _INFERENCE_DEFAULTS.items()}
    convention = (recipe.get("metrics") or {}).get("convention")
    # the pancreas and skin conventions are the authors' own scripts, not a convention of our evaluation
    settings["metric_convention"] = convention if convention in CONVENTIONS else "default"
    return settings


def build_network(plan: Mapping[str, Any], **overrides: Any) -> nn.Module:
    """The network of ``plan``, untrained; keyword ``overrides`` replace network arguments (and win over
    the plan's, as config overrides do).

    Raises:
        InvalidInputError: the plan is broken, or its network arguments build no network (one line).
    """
    plan = check_plan(plan)
    args = {**plan["network"], **overrides}
    try:
        return create_network(plan["preset"], **args)
    except (TypeError, ValueError, RuntimeError, AssertionError, IndexError, KeyError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InvalidInputError(f"plan of {plan['preset']}: its network arguments build no network: {reason}") from e


def read_plan_file(path: str | os.PathLike) -> dict[str, Any]:
    """The plan in the JSON file ``path``, checked."""
    return check_plan(read_json_object(path, "plan file"), str(path))


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
