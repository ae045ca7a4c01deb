# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Weights I/O: crash-safe writes and weights-only reads of checkpoints, and the checks that a state dict
fits a network. Shared by the command line, the converter, the packer, training and export."""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlka_monai.data.validation import InvalidInputError
from dlka_monai.networks import create_network, list_networks

__all__ = ["atomic_save", "safe_load", "check_checkpoint", "check_state_dict"]


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


def _shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def _preset_of(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The registered network (with its default arguments) whose state dict has exactly these shapes."""
    for name in list_networks():
        with torch.device("meta"):  # shapes only: nothing is allocated
            if _shapes(create_network(name).state_dict()) == shapes:
                return name
    return None


def check_checkpoint(
    path: str | os.PathLike, network: torch.nn.Module, preset: str | None = None, key: str = "model"
) -> str:
    """Check that the weights in ``path`` fit ``network``, name for name and shape for shape.

    Args:
        path: a checkpoint: a state dict, or a dict holding one under ``key``.
        network: the configured network.
        preset: its registry name, for the message.
        key: where a training checkpoint keeps the network's state dict.

    Returns:
        ``path`` as a string, so the call can stand for the path in a config.

    Raises:
        InvalidInputError: the file is missing, not a weights-only checkpoint, or holds another network's
            weights; the message names the preset the checkpoint is of (when it is a registered one with
            default arguments) and the configured one.
    """
    # shapes only: the weights are read by whoever loads them
    state = safe_load(path, mmap=True)
    check_state_dict(state.get(key, state) if isinstance(state, dict) else state, network, preset, path)
    return str(path)


def check_state_dict(
    state: Any, network: torch.nn.Module, preset: str | None = None, path: str | os.PathLike = "checkpoint"
) -> None:
    """:func:`check_checkpoint` for a state dict already loaded from ``path``.

    Raises:
        InvalidInputError: as :func:`check_checkpoint`.
    """
    expected = _shapes(getattr(network, "module", network).state_dict())
    found = _shapes(state) if isinstance(state, dict) else {}
    if found == expected:
        return
    differ = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
    example = differ[0]
    of = _preset_of(found)
    configured = preset or type(network).__name__
    raise InvalidInputError(
        f"{path}: holds the weights of {of or 'another network'}, not of the configured {configured} "
        f"({len(differ)} tensors differ, e.g. {example}: {found.get(example, 'missing')} in the checkpoint, "
        f"{expected.get(example, 'absent')} in the network)."
    )
