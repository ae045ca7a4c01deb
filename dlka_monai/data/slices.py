# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""2D (slice) data for the 2D D-LKA net: TransUNet-style ``.npz`` slice files, their datalist, and an
inferer that runs a fixed-size 2D net on every axial slice of a 3D volume (or on a 2D image) of any size.

TransUNet's Synapse slices (``train_npz/case0005_slice000.npz``) hold ``image`` (512×512 float, already
windowed to [0, 1]) and ``label`` (512×512, the 8-organ labels 0..8).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection, PathLike
from monai.data import MetaTensor
from monai.inferers import Inferer, SliceInferer
from monai.transforms import MapTransform

from .datalist import split_validation

__all__ = ["LoadNpzSliced", "npz_slice_datalist", "SliceResizeInferer"]

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


class SliceResizeInferer(Inferer):
    """Run a 2D net with a fixed input size (``img_size``) on images of any size: each 2D image, or each slice
    along ``spatial_dim`` of a 3D volume (via MONAI's ``SliceInferer``), is resized to ``img_size``, predicted,
    and its logits resized back to the slice's size, as TransUNet's slice-wise test does.

    ``__call__(inputs, network)``: ``[B, C, H, W]`` or ``[B, C, D, H, W]`` -> logits of the same spatial shape.
    """

    def __init__(
        self,
        img_size: int | Sequence[int],
        sw_batch_size: int = 1,
        spatial_dim: int = 0,
        mode: str = "bilinear",
        progress: bool = False,
    ) -> None:
        super().__init__()
        self.img_size = (int(img_size),) * 2 if isinstance(img_size, int) else tuple(int(s) for s in img_size)
        self.sw_batch_size = sw_batch_size
        self.spatial_dim = spatial_dim
        self.mode = mode
        self.progress = progress

    def _resize(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if tuple(x.shape[2:]) == tuple(size):
            return x
        return F.interpolate(x, size=tuple(size), mode=self.mode, align_corners=False)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        def predictor(x: torch.Tensor) -> torch.Tensor:
            size = x.shape[2:]
            return self._resize(network(self._resize(x, self.img_size), *args, **kwargs), size)

        if inputs.ndim == 4:
            return predictor(inputs)
        if inputs.ndim != 5:
            raise ValueError(f"inputs should be [B, C, H, W] or [B, C, D, H, W], got shape {tuple(inputs.shape)}.")
        inferer = SliceInferer(
            spatial_dim=self.spatial_dim,
            roi_size=(-1, -1),
            sw_batch_size=self.sw_batch_size,
            overlap=0.0,
            progress=self.progress,
        )
        return inferer(inputs, predictor)
