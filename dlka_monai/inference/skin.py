# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Lesion masks for dermoscopic photographs (JPG, PNG, BMP): each image is prepared as in training, the
network's lesion probabilities are resized back to the photograph and thresholded there."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, Resize
from PIL import Image
from torch import nn

from dlka_monai.data.skin import IMAGE_SUFFIXES, skin_load_transforms
from dlka_monai.data.validation import InvalidInputError

__all__ = ["image_files", "segment_images"]


def image_files(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The photographs of ``inputs``: image files, and the image files (:data:`IMAGE_SUFFIXES`) directly
    in folders, sorted by name.

    Raises:
        InvalidInputError: a path that does not exist, a file that is no image, or a folder without images.
    """
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InvalidInputError(f"{path}: no {', '.join(IMAGE_SUFFIXES)} images in this folder.")
            files += found
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise InvalidInputError(f"{path}: not a {', '.join(IMAGE_SUFFIXES)} image.")
            files.append(path)
        else:
            raise InvalidInputError(f"{path}: no such file or folder.")
    return files


def segment_images(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    network: nn.Module,
    output_dir: str | os.PathLike,
    normalization: Mapping[str, Any],
    img_size: int | Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    suffix: str = "_segmentation",
) -> list[Path]:
    """Write a binary lesion mask (0 / 255, mode ``L``) of each photograph of ``inputs`` at the photograph's
    own size to ``output_dir/<image name><suffix>.png`` (``_segmentation`` as ISIC names its masks).

    Args:
        inputs: a JPG, PNG or BMP file, a folder of them, or a list of both (see :func:`image_files`).
        network: a trained skin model, ``[B, 3, *img_size]`` -> ``[B, C, *img_size]``: two-class logits
            (background, lesion; softmax) or one lesion logit (sigmoid).
        output_dir: output folder (created).
        normalization: the plan's intensity normalisation.
        img_size: the network's input size; default its ``img_size``.
        device: where the network runs.
        suffix: appended to the image name.

    Returns:
        the written mask files, in input order.
    """
    files = image_files(inputs)
    img_size = getattr(network, "img_size", None) if img_size is None else img_size
    if img_size is None:
        raise ValueError("give img_size: the network does not say its input size.")
    prepare = Compose(skin_load_transforms(normalization, img_size, label_key=None))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    network = network.to(device).eval()
    written = []
    for path in files:
        with Image.open(path) as photo:
            width, height = photo.size
        image = prepare({"image": str(path)})["image"]
        with torch.no_grad():
            logits = network(image.as_tensor()[None].float().to(device))[0].float().cpu()
        # the lesion probability, resized to the photograph before it is thresholded
        lesion = torch.sigmoid(logits[:1]) if logits.shape[0] == 1 else torch.softmax(logits, 0)[1:2]
        lesion = Resize((height, width), mode="bilinear")(lesion)
        mask = (np.asarray(lesion[0]) > 0.5).astype(np.uint8) * 255
        target = out / f"{path.stem}{suffix}.png"
        Image.fromarray(mask).save(target)
        written.append(target)
    return written
