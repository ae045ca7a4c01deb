# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Preprocessing transforms of the inference config."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.transforms import Spacingd

__all__ = ["SafeSpacingd"]


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
