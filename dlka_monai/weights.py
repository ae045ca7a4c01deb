# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Weights I/O: crash-safe writes and weights-only reads of checkpoints, and the checks that a state dict
fits a network. Shared by the command line, the converter, the packer, training and export."""

from __future__ import annotations

import contextlib
import glob
import importlib
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlka_monai.data.validation import InvalidInputError
from dlka_monai.networks import create_network, list_networks
from dlka_monai.plan import build_network, check_plan, preset_plan

__all__ = [
    "atomic_save",
    "safe_load",
    "unwrap_checkpoint",
    "find_preset",
    "read_model",
    "model_files",
    "model_plan",
    "load_model",
    "save_model",
    "check_checkpoint",
    "check_state_dict",
]

# output heads of the 3D and 2D nets, read to say what an unknown state dict holds
_HEAD_KEYS = ("out1.conv.conv.weight", "out.conv.conv.weight")


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the target folder, flushed to disk, then renamed over ``path``:
    a reader (or a process killed at any moment) sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries (a rename lives there) to disk, where the platform can: Windows cannot
    open a folder (``PermissionError``) and has no ``O_DIRECTORY``; there the rename is durable without it."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # e.g. EINVAL from file systems that cannot sync a folder
        pass
    finally:
        os.close(fd)


def _first_line(text: str, default: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else default


def _numpy_scalar_globals() -> list:
    """What unpickling a numpy scalar (``np.float64(0.5)``, as ``np.mean`` returns) needs: numpy's
    ``scalar`` reconstructor (``numpy._core.multiarray`` in numpy 2, ``numpy.core.multiarray`` in numpy 1;
    files name the one they were saved with), ``np.dtype`` and the classes of the numeric dtypes. The
    reconstructor builds a scalar from a dtype and its bytes; no object dtype, so nothing else is built."""
    try:
        scalar = importlib.import_module("numpy._core.multiarray").scalar
    except ImportError:  # numpy 1
        scalar = importlib.import_module("numpy.core.multiarray").scalar
    numeric = (np.bool_, np.integer, np.floating, np.complexfloating)
    dtype_classes = {
        type(np.dtype(t)) for t in set(np.sctypeDict.values()) if issubclass(t, numeric) and not issubclass(t, np.timedelta64)
    }
    return [
        (scalar, "numpy._core.multiarray.scalar"),
        (scalar, "numpy.core.multiarray.scalar"),
        np.dtype,
        *sorted(dtype_classes, key=lambda c: c.__name__),
    ]


def safe_load(
    path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False, allow_numpy_scalars: bool = False
) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never pickled code.

    Args:
        path: the checkpoint file.
        map_location: where tensors are loaded.
        mmap: map the tensors' storage instead of reading it (for a look at names and shapes only); files
            of the legacy, non-zip format are read as usual.
        allow_numpy_scalars: also accept numpy scalars and dtypes (numeric ones), added to torch's allow
            list for this load only (``torch.serialization.safe_globals``): training checkpoints of other
            code bases keep loss curves of ``np.mean`` values next to the weights. Every other pickled
            object is still refused.

    Raises:
        InvalidInputError: (a ``ValueError``) in one line: the file is missing or not a checkpoint, or it holds
            pickled objects, which are listed, with how to extract the weights from a file one trusts.
    """
    if not Path(path).is_file():
        raise InvalidInputError(f"{path}: no such checkpoint file.")
    allowed = torch.serialization.safe_globals(_numpy_scalar_globals()) if allow_numpy_scalars else contextlib.nullcontext()
    with allowed:
        return _load(path, map_location, mmap)


def _load(path: str | os.PathLike, map_location: Any, mmap: bool) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        try:
            # inside safe_load's context: what it allowed is not listed
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - not a torch.save zip file: nothing to list
            unsafe = re.findall(r"Unsupported global: GLOBAL (\S+)", str(e))
        if not unsafe:
            reason = _first_line(str(e).split("WeightsUnpickler error:")[-1], default=type(e).__name__)
            raise InvalidInputError(f"{path}: cannot be read with torch.load(weights_only=True): {reason}") from e
        # unpickling those objects could run arbitrary code, so there is no retry with weights_only=False
        raise InvalidInputError(
            f"{path}: contains pickled Python objects ({', '.join(sorted(unsafe))}), refused because loading "
            "them can run arbitrary code; if you trust the file, extract the state dict in a trusted "
            f"environment, e.g. python -c \"import torch; ckpt = torch.load({str(path)!r}, map_location='cpu', "
            "weights_only=False); torch.save(ckpt['state_dict'], 'weights.pt')\", and use weights.pt."
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise InvalidInputError(f"{path}: cannot be read as a PyTorch checkpoint: {_first_line(str(e), type(e).__name__)}") from e


def _shapes(state: Mapping) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def _network_shapes(network: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return _shapes(getattr(network, "module", network).state_dict())


def find_preset(state: Mapping) -> str | None:
    """The registered preset whose network, with its default arguments, has exactly the names and shapes of
    the state dict ``state``; None if there is none."""
    found = _shapes(state)
    for name in list_networks():
        with torch.device("meta"):  # shapes only: nothing is allocated
            if _network_shapes(create_network(name)) == found:
                return name
    return None


def _holds(state: Mapping) -> str:
    """What a state dict that fits no preset holds, in a few words."""
    tensors = [v for v in state.values() if isinstance(v, torch.Tensor)]
    heads = [state[k].shape[0] for k in _HEAD_KEYS if isinstance(state.get(k), torch.Tensor)]
    head = f", an output head of {heads[0]} classes" if heads else ""
    return f"{len(tensors)} tensors ({sum(t.numel() for t in tensors):,} values{head})"


def unwrap_checkpoint(ckpt: Any, path: str | os.PathLike = "checkpoint") -> tuple[dict, dict | None]:
    """The state dict and the plan (None if absent) of a loaded model file: a model or training checkpoint
    (``{"model": state_dict, "plan": plan, ...}``) or a bare state dict."""
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get("model"), Mapping):
        return dict(ckpt["model"]), ckpt.get("plan")
    if isinstance(ckpt, Mapping) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return dict(ckpt), None
    what = f"a dict with keys {sorted(map(str, ckpt))[:10]}" if isinstance(ckpt, Mapping) else f"a {type(ckpt).__name__}"
    raise InvalidInputError(f"{path}: holds {what}, not a model (a state dict, or a dict with 'model' and 'plan').")


def read_model(path: str | os.PathLike, preset: str | None = None, mmap: bool = False) -> tuple[dict, dict]:
    """The state dict and plan of the model file ``path``, checked to fit each other.

    A file without a plan (e.g. a converted checkpoint of the authors) gets the plan of the preset its names
    and shapes fit (:func:`find_preset`), or else of ``preset``, which then has to fit.

    Args:
        path: a model file (``models/model.pt``), a training checkpoint or a bare state dict.
        preset: the preset of a bare state dict that fits none; ignored when the file has a plan.
        mmap: map the tensors instead of reading them (to look at names and shapes only).

    Raises:
        InvalidInputError: in one line: the file is missing or not weights-only, its plan is broken, its
            weights do not fit its plan, or a bare state dict fits no preset (saying what it holds).
    """
    state, plan = unwrap_checkpoint(safe_load(path, mmap=mmap), path)
    if plan is None:
        name = find_preset(state) or preset
        if name is None:
            raise InvalidInputError(
                f"{path}: a state dict of {_holds(state)} without a plan that fits no preset "
                f"({', '.join(list_networks())}, with their default arguments); save it with its plan "
                "(dlka_monai.weights.save_model) or pass the network it is of."
            )
        plan = preset_plan(name)
    plan = check_plan(plan, str(path))
    with torch.device("meta"):
        try:
            network = build_network(plan)
        except InvalidInputError as e:
            raise InvalidInputError(f"{path}: {e}") from e
        check_state_dict(state, network, plan["preset"], path)
    return state, plan


def model_files(path: str | os.PathLike) -> list[str]:
    """The model files ``path`` names: itself when it exists or holds no pattern (a name such as
    ``run[1].pt`` is taken literally), else the sorted matches of a glob pattern such as
    ``models/fold_*/model.pt`` (an ensemble of folds).

    Raises:
        InvalidInputError: a pattern that matches no file.
    """
    path = os.fspath(path)
    if os.path.lexists(path) or not glob.has_magic(path):
        return [path]
    files = sorted(glob.glob(path))
    if not files:
        raise InvalidInputError(f"{path}: no model file matches.")
    return files


def model_plan(path: str | os.PathLike, preset: str | None = None) -> dict:
    """The plan of the model file ``path`` (its shapes are checked against it, its weights not read); the
    plan of ``preset`` when there is no such file and a ``preset`` is given (a bundle before training).

    Raises:
        InvalidInputError: as :func:`read_model`; no file at ``path`` and no ``preset``.
    """
    if not Path(path).is_file():
        if preset is not None:
            return preset_plan(preset)
        raise InvalidInputError(f"{path}: no trained model there: train one first, or give its path (ckpt_path / --model).")
    return read_model(path, preset, mmap=True)[1]


def load_model(path: str | os.PathLike, preset: str | None = None, **overrides: Any) -> tuple[torch.nn.Module, dict]:
    """The network of the model file ``path`` with its weights, in eval mode, and its plan; keyword
    ``overrides`` replace network arguments of the plan."""
    state, plan = read_model(path, preset)
    network = build_network(plan, **overrides)
    check_state_dict(state, network, plan["preset"], path)
    network.load_state_dict(state)
    return network.eval(), plan


def save_model(path: str | os.PathLike, network: torch.nn.Module, plan: Mapping) -> None:
    """Write ``network``'s weights with ``plan`` (checked to fit) atomically to ``path``, as
    ``{"model": state_dict, "plan": plan}``: what MONAI's ``CheckpointLoader`` (key ``model``) and MONAI
    Label load, and :func:`read_model` reads back with the plan."""
    plan = check_plan(plan)
    state = getattr(network, "module", network).state_dict()
    atomic_save({"model": state, "plan": dict(plan)}, path)


def check_checkpoint(path: str | os.PathLike, network: torch.nn.Module, preset: str | None = None) -> str:
    """Check that the weights in the model file ``path`` fit ``network``, name for name and shape for shape
    (tensors are mapped, not read: whoever loads them reads them).

    Returns:
        ``path`` as a string, so the call can stand for the path in a config.

    Raises:
        InvalidInputError: the file is missing, not a weights-only checkpoint, or holds another network's
            weights; the message names the preset the checkpoint is of (when it is a registered one with
            default arguments) and the configured one.
    """
    state, _ = unwrap_checkpoint(safe_load(path, mmap=True), path)
    check_state_dict(state, network, preset, path)
    return str(path)


def check_state_dict(
    state: Any, network: torch.nn.Module, preset: str | None = None, path: str | os.PathLike = "checkpoint"
) -> None:
    """:func:`check_checkpoint` for a state dict already loaded from ``path``.

    Raises:
        InvalidInputError: as :func:`check_checkpoint`.
    """
    expected = _network_shapes(network)
    found = _shapes(state) if isinstance(state, Mapping) else {}
    if found == expected:
        return
    differ = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
    example = differ[0]
    of = find_preset(state) if isinstance(state, Mapping) else None
    configured = preset or type(network).__name__
    raise InvalidInputError(
        f"{path}: holds the weights of {of or 'another network'}, not of the configured {configured} "
        f"({len(differ)} tensors differ, e.g. {example}: {found.get(example, 'missing')} in the checkpoint, "
        f"{expected.get(example, 'absent')} in the network)."
    )
