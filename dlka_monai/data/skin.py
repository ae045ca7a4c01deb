# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Skin-lesion datasets as distributed (ISIC 2017, ISIC 2018, PH2): datalists with the authors' splits, and
the transforms that read a dermoscopic photograph and its binary lesion mask for the 2D D-LKA Net.

Each dataset is selected by pointing at its folder; the layout is recognised from the folder names:

- ISIC 2018: ``ISIC2018_Task1-2_Training_Input/<id>.jpg`` with
  ``ISIC2018_Task1_Training_GroundTruth/<id>_segmentation.png``;
- ISIC 2017: ``ISIC-2017_{Training,Validation,Test_v2}_Data/<id>.jpg`` with
  ``ISIC-2017_{Training,Validation,Test_v2}_Part1_GroundTruth/<id>_segmentation.png``;
- PH2: ``IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp`` with ``IMDxxx/IMDxxx_lesion/IMDxxx_lesion.bmp``,
  anywhere below the folder (the archive nests them in ``PH2Dataset/PH2 Dataset images``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import PILReader
from monai.transforms import AsDiscreted, LoadImaged, MapTransform, Resized
from PIL import Image

from dlka_monai.data.skin_demo import generate_skin_demo
from dlka_monai.data.transforms import intensity_transform
from dlka_monai.data.validation import InvalidInputError

__all__ = [
    "SKIN_LAYOUTS",
    "AUTHORS_SPLITS",
    "IMAGE_SUFFIXES",
    "detect_skin_layout",
    "skin_pairs",
    "skin_datalist",
    "load_skin_datalist",
    "skin_load_transforms",
    "read_rgb",
]

SKIN_LAYOUTS = ("isic2018", "isic2017", "ph2")

AUTHORS_SPLITS: dict[str, tuple[int, int, int]] = {
    "isic2018": (1815, 259, 520),
    "isic2017": (1399, 200, 401),
    "ph2": (80, 20, 100),
}
"""Training, validation and test images of the authors' preparation scripts (``Prepare_*.py``): ISIC 2018
and 2017 take their training folder in order (2594 and 2000 images), PH2 its 200 images shuffled. Their
ISIC 2017 test slice stops at image 1999, leaving the last image out; here it is in the test set."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
"""Photograph files read for inference."""

_ISIC2018 = ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth")
_ISIC2017 = {
    "training": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
    "validation": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
    "test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
}
_PH2_IMAGES = "IMD*/IMD*_Dermoscopic_Image/IMD*.bmp"


def detect_skin_layout(folder: str | os.PathLike) -> str:
    """The layout of the dataset folder ``folder``: one of :data:`SKIN_LAYOUTS`.

    Raises:
        InvalidInputError: in one line: no such folder, or none of the three layouts.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"{folder}: no such dataset folder.")
    if (folder / _ISIC2018[0]).is_dir():
        return "isic2018"
    if (folder / _ISIC2017["training"][0]).is_dir():
        return "isic2017"
    if next(folder.rglob(_PH2_IMAGES), None) is not None:
        return "ph2"
    raise InvalidInputError(
        f"{folder}: not an ISIC 2018, ISIC 2017 or PH2 folder (expected {_ISIC2018[0]}/, "
        f"{_ISIC2017['training'][0]}/ or IMDxxx/IMDxxx_Dermoscopic_Image/)."
    )


def _pair(image: Path, mask: Path) -> dict[str, str]:
    """``{"image", "label"}`` once the mask exists and has its image's size (PIL reads only the headers)."""
    if not mask.is_file():
        raise InvalidInputError(f"{image}: no ground-truth mask {mask}.")
    with Image.open(image) as a, Image.open(mask) as b:
        if a.size != b.size:
            raise InvalidInputError(
                f"{mask}: mask of {b.size[0]}×{b.size[1]} pixels, but its image {image.name} is {a.size[0]}×{a.size[1]}."
            )
    return {"image": str(image), "label": str(mask)}


def _isic_pairs(images: Path, masks: Path) -> list[dict[str, str]]:
    # *.jpg only: ISIC 2017's training folder also holds <id>_superpixels.png files
    found = sorted(images.glob("*.jpg"))
    if not found:
        raise InvalidInputError(f"{images}: no .jpg images.")
    return [_pair(p, masks / f"{p.stem}_segmentation.png") for p in found]


def skin_pairs(folder: str | os.PathLike, layout: str | None = None) -> dict[str, list[dict[str, str]]]:
    """Every image of the dataset folder with its mask, sorted by name, under the name of the distributed
    folder it is in: ``"training"`` (ISIC 2018, ISIC 2017), ``"validation"`` and ``"test"`` (ISIC 2017,
    when present) or ``"all"`` (PH2).

    Args:
        folder: the dataset folder.
        layout: one of :data:`SKIN_LAYOUTS`; None recognises it (:func:`detect_skin_layout`).

    Raises:
        InvalidInputError: in one line naming the file: an image without its mask, a mask of another size
            than its image, or a folder without images.
    """
    folder = Path(folder)
    layout = detect_skin_layout(folder) if layout is None else layout
    if layout == "isic2018":
        return {"training": _isic_pairs(folder / _ISIC2018[0], folder / _ISIC2018[1])}
    if layout == "isic2017":
        return {
            part: _isic_pairs(folder / images, folder / masks)
            for part, (images, masks) in _ISIC2017.items()
            if part == "training" or (folder / images).is_dir()
        }
    if layout == "ph2":
        found = sorted(folder.rglob(_PH2_IMAGES))
        if not found:
            raise InvalidInputError(f"{folder}: no PH2 images IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp.")
        return {"all": [_pair(p, p.parents[1] / f"{p.stem}_lesion" / f"{p.stem}_lesion.bmp") for p in found]}
    raise ValueError(f"unknown skin layout {layout!r}; known: {', '.join(SKIN_LAYOUTS)}.")


def _split(items: list, counts: Sequence[int]) -> tuple[list, list, list]:
    """``items`` cut in order into training, validation and test parts of ``counts``' proportions (exactly
    ``counts`` when there are ``sum(counts)`` items)."""
    n, total = len(items), sum(counts)
    n_train = round(n * counts[0] / total)
    n_val = round(n * counts[1] / total)
    return items[:n_train], items[n_train : n_train + n_val], items[n_train + n_val :]


def skin_datalist(
    folder: str | os.PathLike,
    layout: str | None = None,
    split: str = "authors",
    counts: Sequence[int] | None = None,
    seed: int = 0,
) -> dict[str, list[dict[str, str]]]:
    """The ``training`` / ``validation`` / ``test`` datalist of a skin-lesion dataset folder.

    Args:
        folder: the dataset folder (see the module docstring).
        layout: one of :data:`SKIN_LAYOUTS`; None recognises it.
        split: ``"authors"``: the authors' split (:data:`AUTHORS_SPLITS`): ISIC images in name order, PH2
            images shuffled with ``seed`` (the authors' shuffle was not seeded); a folder with another number
            of images is cut in the same proportions. ``"official"`` (ISIC 2017 only): the distributed
            training, validation and test folders.
        counts: (training, validation, test) sizes replacing the authors' (or their proportions).
        seed: seed of the PH2 shuffle.

    Raises:
        InvalidInputError: as :func:`skin_pairs`; ``"official"`` for a dataset without those folders.
    """
    layout = detect_skin_layout(folder) if layout is None else layout
    pairs = skin_pairs(folder, layout)
    if split == "official":
        if layout != "isic2017" or set(pairs) != set(_ISIC2017):
            raise InvalidInputError(
                f"{folder}: split 'official' needs ISIC 2017's {', '.join(v[0] for v in _ISIC2017.values())} folders."
            )
        return {part: pairs[part] for part in _ISIC2017}
    if split != "authors":
        raise ValueError(f"unknown split {split!r}; known: authors, official.")
    items = pairs["all"] if layout == "ph2" else pairs["training"]
    if layout == "ph2":
        items = [items[i] for i in np.random.default_rng(seed).permutation(len(items))]
    train, val, test = _split(items, AUTHORS_SPLITS[layout] if counts is None else counts)
    return {"training": train, "validation": val, "test": test}


def load_skin_datalist(
    dataset_dir: str | os.PathLike | None = None,
    layout: str | None = None,
    split: str = "authors",
    counts: Sequence[int] | None = None,
    seed: int = 0,
    demo_dir: str | os.PathLike | None = None,
    demo_images: int = 32,
) -> dict[str, list[dict[str, str]]]:
    """:func:`skin_datalist` of ``dataset_dir``; without one, of the synthetic demo dataset in ``demo_dir``
    (in ISIC 2018 layout, generated there first unless it already is)."""
    if dataset_dir is None:
        if demo_dir is None:
            raise ValueError("give a dataset_dir, or a demo_dir for the synthetic demo dataset.")
        if not (Path(demo_dir) / _ISIC2018[0]).is_dir():
            generate_skin_demo(demo_dir, num_images=demo_images, seed=seed)
        dataset_dir = demo_dir
    return skin_datalist(dataset_dir, layout=layout, split=split, counts=counts, seed=seed)


def _to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def _to_gray(image: Image.Image) -> Image.Image:
    return image.convert("L")


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """The photograph ``path`` as a ``[H, W, 3]`` uint8 array (grey, palette or RGBA images converted)."""
    with Image.open(path) as image:
        return np.asarray(_to_rgb(image))


def skin_load_transforms(
    normalization: Mapping[str, Any], img_size: int | Sequence[int] = 224, image_key: str = "image", label_key: str | None = "label"
) -> list[MapTransform]:
    """Read a photograph as ``[3, H, W]`` RGB and its mask as ``[1, H, W]`` with values 0 / 1 (grey value
    above 127: lesion), resize both to ``img_size`` (bilinear with anti-aliasing, as PIL's bilinear resize
    of the authors; the mask nearest-neighbour) and normalise the image.

    Args:
        normalization: the plan's intensity normalisation (the preset's: per-image min-max to 0 .. 255).
        img_size: the network's input size, an int or ``(H, W)``.
        image_key: key of the image path.
        label_key: key of the mask path; None for images without masks (inference).
    """
    size = (int(img_size),) * 2 if isinstance(img_size, int) else tuple(int(s) for s in img_size)
    # rows first (reverse_indexing=False), so that arrays are laid out as the photographs are
    steps: list[MapTransform] = [
        LoadImaged(image_key, reader=PILReader(converter=_to_rgb, reverse_indexing=False), ensure_channel_first=True, image_only=True)
    ]
    keys = [image_key]
    if label_key is not None:
        steps += [
            LoadImaged(label_key, reader=PILReader(converter=_to_gray, reverse_indexing=False), ensure_channel_first=True, image_only=True),
            AsDiscreted(label_key, threshold=128),
        ]
        keys.append(label_key)
    steps.append(Resized(keys, spatial_size=size, mode=["bilinear", "nearest"][: len(keys)], anti_aliasing=[True, False][: len(keys)]))
    steps.append(intensity_transform(image_key, normalization))
    return steps
