# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Transforms of the inference config."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from copy import deepcopy

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, Flipd, InvertibleTransform, Invertd, MapTransform, Orientationd, Rotate90d, Spacingd, Transposed
from monai.transforms.croppad.dictionary import Cropd, Padd
from monai.utils import convert_to_tensor

__all__ = ["InvertArgmaxd", "SafeSpacingd"]


class SafeSpacingd(Spacingd):
    """``monai.transforms.Spacingd`` that leaves the data's other items alone.

    For a NIfTI image, MONAI 1.6's ``Spacingd`` updates every item named ``<key>_*`` with the image's
    metadata, meant for ``<key>_meta_dict``; the items that are not mappings (such as the ``image_path``
    string MONAI Label adds to its inference data) make that update fail. They are set aside during the
    call and put back unchanged. Arguments and inverse are ``Spacingd``'s.
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict[Hashable, torch.Tensor]:
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {
            k: v for k, v in data.items() if isinstance(k, str) and k.startswith(prefixes) and not isinstance(v, Mapping)
        }
        d = super().__call__({k: v for k, v in data.items() if k not in aside}, lazy=lazy)
        d.update(aside)
        return d


class InvertArgmaxd(MapTransform):
    """``Invertd`` of class scores followed by the argmax over channels (``AsDiscreted(argmax=True)``), with
    the argmax taken as early as that is exact.

    The inverses of transforms that only move voxels (crops, whose inverse pads with zeros; pads;
    ``Orientationd``, ``Flipd``, ``Rotate90d``, ``Transposed``) commute with the argmax: zero-padded
    scores give class 0, as a zero-padded label map does. So, of the invertible transforms of
    ``transform``, those from the first one that does not only move voxels (e.g. ``Spacingd``) to the
    end are inverted on the ``C``-channel scores, the argmax is taken, and the ones before are inverted
    on the one-channel label map. The result equals ``Invertd`` then the argmax, voxel for voxel, at
    about ``1/C`` of the time and memory for those first transforms: for a CT cropped to the body,
    padding back to the whole field of view is most of the volume.

    Args:
        keys: the scores to invert, ``[C, *spatial]`` (after softmax, or logits).
        transform: the preprocessing that was applied to ``orig_key`` (inverted with the same instances).
        orig_key: the preprocessed input whose applied operations are inverted.
        allow_missing_keys: don't raise for keys that are missing.

    Returns ``keys`` as float ``[1, *original spatial]`` label maps with the original affine, as
    ``Invertd`` then ``AsDiscreted(argmax=True)`` would.
    """

    moves_voxels_only = (Cropd, Padd, Orientationd, Flipd, Rotate90d, Transposed)

    def __init__(
        self, keys: KeysCollection, transform: InvertibleTransform, orig_key: str, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not isinstance(transform, InvertibleTransform):
            raise ValueError(f"transform must be invertible (e.g. a Compose of the preprocessing), got {type(transform).__name__}.")
        flat = transform.flatten().transforms if isinstance(transform, Compose) else [transform]
        invertible = [t for t in flat if isinstance(t, InvertibleTransform)]
        split = next((i for i, t in enumerate(invertible) if not isinstance(t, self.moves_voxels_only)), len(invertible))
        self.orig_key = orig_key
        scores_part, labels_part = invertible[split:], invertible[:split]
        self._invert_scores = None
        if scores_part:
            self._invert_scores = Invertd(
                self.keys, Compose(scores_part), orig_keys=orig_key, nearest_interp=False, allow_missing_keys=allow_missing_keys
            )
        # the label map carries the operations left to invert: Invertd reads them from its own "original"
        self._invert_labels = Invertd(orig_key, Compose(labels_part), orig_keys=orig_key) if labels_part else None

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data) if self._invert_scores is None else self._invert_scores(data)
        for key in self.key_iterator(d):
            # Invertd leaves the operations it did not invert on the scores; without it, all are left
            trace = d[key] if self._invert_scores is not None else d[self.orig_key]
            label = MetaTensor(
                torch.argmax(convert_to_tensor(d[key], track_meta=False), dim=0, keepdim=True).float(),
                meta=deepcopy(trace.meta),
                applied_operations=deepcopy(trace.applied_operations),
            )
            if self._invert_labels is not None:
                label = self._invert_labels({self.orig_key: label})[self.orig_key]
            d[key] = label
        return d
