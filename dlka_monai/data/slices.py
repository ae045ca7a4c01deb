# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""2D (slice) data for the 2D D-LKA net: TransUNet-style ``.npz`` slice files and their datalist.

TransUNet's Synapse slices (``train_npz/case0005_slice000.npz``) hold ``image`` (512×512 float, already
windowed to [0, 1]) and ``label`` (512×512, the 8-organ labels 0..8).
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection, PathLike
from monai.data import MetaTensor
from monai.transforms import MapTransform

from .datalist import load_datalist, split_validation

__all__ = ["LoadNpzSliced", "npz_slice_datalist", "training_datalist"]

_SLICE_SUFFIX = re.compile(r"_slice\d+$")


class LoadNpzSliced(MapTransform):
    """Load one array of a 2D ``.npz`` slice file per key: ``d[key]`` is the file path, and the array of the
    same name (or ``npz_keys[key]``) becomes a ``MetaTensor`` ``[1, H, W]`` (channel first) of ``dtype``, with
    the file path as ``filename_or_obj``.

    Args:
        keys: the keys to load, e.g. ``["image", "label"]``.
        npz_keys: array name in the file per key; default: the key itself.
        dtype: dtype of the loaded arrays.
        allow_missing_keys: skip keys absent from the data dict.
    """

    def __init__(
        self,
        keys: KeysCollection,
        npz_keys: Mapping[Hashable, str] | None = None,
        dtype: torch.dtype = torch.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.npz_keys = dict(npz_keys or {})
        self.dtype = dtype

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = os.fspath(d[key])
            name = self.npz_keys.get(key, str(key))
            with np.load(path) as npz:
                if name not in npz.files:
                    raise KeyError(f"{path} has no array {name!r} (it has {npz.files}).")
                array = np.asarray(npz[name])
            if array.ndim != 2:
                raise ValueError(f"{path}: array {name!r} should be a 2D slice, got shape {array.shape}.")
            meta = {"filename_or_obj": path, "spatial_shape": np.asarray(array.shape), "original_channel_dim": "no_channel"}
            d[key] = MetaTensor(torch.as_tensor(array[None].copy(), dtype=self.dtype), meta=meta)
        return d


def npz_slice_datalist(
    npz_dir: PathLike,
    val_fraction: float = 0.0,
    val_cases: Sequence[str] | str | None = None,
    seed: int = 0,
) -> dict[str, list[dict[str, str]]]:
    """The ``*.npz`` slice files of ``npz_dir`` (sorted) as ``{"training": [...], "validation": [...],
    "test": []}``, entries ``{"image": path, "label": path}``. The validation split draws whole cases (the file
    name up to ``_sliceNNN``, as in TransUNet's ``case0005_slice000.npz``), never slices of a training case.

    Raises:
        FileNotFoundError: no ``.npz`` file in ``npz_dir``.
    """
    files = sorted(Path(npz_dir).glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"no .npz slice files in {npz_dir}.")
    cases: dict[str, list[dict[str, str]]] = {}
    for f in files:
        path = str(f.resolve())
        cases.setdefault(_SLICE_SUFFIX.sub("", f.stem), []).append({"image": path, "label": path})
    case_entries = [{"image": name} for name in cases]
    training, validation = split_validation(case_entries, val_fraction=val_fraction, val_cases=val_cases, seed=seed)
    expand = lambda entries: [e for c in entries for e in cases[c["image"]]]  # noqa: E731
    return {"training": expand(training), "validation": expand(validation), "test": []}


def training_datalist(npz_dir: PathLike | None = None, **kwargs) -> dict[str, list[dict]]:
    """The datalists of the 2D net's training: the TransUNet-style ``.npz`` slices in ``npz_dir``
    (:func:`npz_slice_datalist`, with ``val_fraction``, ``val_cases`` and ``seed`` of ``kwargs``), else the
    volumes of :func:`dlka_monai.data.load_datalist` called with ``kwargs``."""
    if npz_dir is None:
        return load_datalist(**kwargs)
    split = {k: kwargs[k] for k in ("val_fraction", "val_cases", "seed") if k in kwargs}
    return npz_slice_datalist(npz_dir, **split)

