# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""A small, deterministic, synthetic dermoscopy-like dataset in ISIC 2018 layout, for trying the skin-lesion
pipeline without downloading data: skin-toned backgrounds with shading, one irregular pigmented lesion per
image (darker core, blurred border), dark hair-like strokes over it and a dermatoscope's vignetting.

Run ``python -m dlka_monai.data.skin_demo --out DIR [--num-images 32] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

__all__ = ["generate_skin_demo", "SKIN_DEMO_SIZES"]

SKIN_DEMO_SIZES: tuple[tuple[int, int], ...] = ((192, 144), (176, 132), (160, 160), (200, 150))
"""(width, height) of the demo photographs, in turn: several sizes, so that resizing back is exercised."""

_IMAGES, _MASKS = "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Low-frequency noise of unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return noise / (noise.std() + 1e-8)


def _lesion_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An irregular blob: an ellipse whose radius varies with the angle by a few random harmonics."""
    cy, cx = h * rng.uniform(0.35, 0.65), w * rng.uniform(0.35, 0.65)
    r0 = min(h, w) * rng.uniform(0.15, 0.3)
    aspect, tilt = rng.uniform(0.7, 1.3), rng.uniform(0, np.pi)
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(tilt) + dy * np.sin(tilt)
    v = (-dx * np.sin(tilt) + dy * np.cos(tilt)) * aspect
    theta, rho = np.arctan2(v, u), np.hypot(u, v)
    radius = np.ones_like(theta)
    for k in range(2, 6):
        radius += rng.uniform(0.0, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return rho < r0 * radius


def _draw_hairs(rng: np.random.Generator, image: Image.Image, count: int) -> None:
    """Dark, thin, slightly curved strokes across the image (quadratic Bézier curves)."""
    w, h = image.size
    draw = ImageDraw.Draw(image)
    t = np.linspace(0, 1, 24)[:, None]
    for _ in range(count):
        p0, p1, p2 = (rng.uniform((0, 0), (w, h)) for _ in range(3))
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        shade = int(rng.uniform(20, 60))
        draw.line([tuple(p) for p in curve], fill=(shade, shade - 10 if shade > 10 else 0, 0), width=int(rng.integers(1, 3)))


def _photograph(rng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, np.ndarray]:
    """One synthetic dermoscopic photograph ``(RGB image, [h, w] bool lesion mask)``."""
    skin = np.array([rng.uniform(200, 235), rng.uniform(150, 185), rng.uniform(120, 155)])
    shading = 1.0 + 0.04 * _smooth_noise(rng, (h, w), sigma=min(h, w) / 6)
    image = skin * shading[..., None]
    mask = _lesion_mask(rng, h, w)
    # the pigment: darkest in the core, fading over a blurred border, with a mottled texture
    core = ndimage.distance_transform_edt(mask)
    depth = np.clip(core / (core.max() + 1e-8) * 1.5, 0, 1) * 0.35 + ndimage.gaussian_filter(mask.astype(float), 1.5) * 0.65
    pigment = np.array([rng.uniform(80, 130), rng.uniform(45, 75), rng.uniform(25, 50)])
    mottle = 1.0 + 0.12 * _smooth_noise(rng, (h, w), sigma=2.0)
    image = image * (1 - depth[..., None]) + (pigment * mottle[..., None]) * depth[..., None]
    # a dermatoscope's vignetting: darker towards the corners
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2)) / np.sqrt(2)
    image *= (1 - 0.55 * r**2.5)[..., None]
    image += rng.normal(0, 3.0, image.shape)
    photo = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    _draw_hairs(rng, photo, count=int(rng.integers(2, 7)))
    return photo, mask


def generate_skin_demo(out_dir: str | os.PathLike, num_images: int = 32, seed: int = 0) -> Path:
    """Write ``num_images`` synthetic photographs ``ISIC_<n>.jpg`` and their masks ``ISIC_<n>_segmentation.png``
    (0 / 255) into ``out_dir`` in ISIC 2018 layout; the same ``seed`` writes the same files. Returns ``out_dir``.
    """
    out = Path(out_dir)
    (out / _IMAGES).mkdir(parents=True, exist_ok=True)
    (out / _MASKS).mkdir(parents=True, exist_ok=True)
    for i in range(num_images):
        rng = np.random.default_rng([seed, i])
        photo, mask = _photograph(rng, *SKIN_DEMO_SIZES[i % len(SKIN_DEMO_SIZES)])
        name = f"ISIC_{i:07d}"
        photo.save(out / _IMAGES / f"{name}.jpg", quality=95)
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / _MASKS / f"{name}_segmentation.png")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (ISIC 2018 layout)")
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(generate_skin_demo(args.out, args.num_images, args.seed))


if __name__ == "__main__":
    main()
