# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""A small, deterministic, synthetic abdominal-CT-like dataset with the 13 BTCV organ labels, in
Medical Segmentation Decathlon layout, for smoke-testing the training and evaluation pipelines
without downloading data.

Run ``python -m dlka_monai.data.demo --out DIR [--num-cases 8] [--seed 0]``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.config import PathLike
from scipy import ndimage

from dlka_monai.cli import ArgumentParser, one_line_errors
from dlka_monai.networks.presets import BTCV_CLASS_NAMES

__all__ = ["generate_demo_dataset", "DEMO_LABELS", "DEMO_SHAPE", "DEMO_SPACING", "NUM_DEMO_TEST_CASES"]

DEMO_LABELS: dict[int, str] = BTCV_CLASS_NAMES
"""Label values and names, those of BTCV (Synapse multi-organ)."""

DEMO_SHAPE = (240, 192, 48)
"""Voxels per case, (x, y, z)."""
DEMO_SPACING = (1.25, 1.25, 3.0)
"""Voxel size in mm, (x, y, z)."""
NUM_DEMO_TEST_CASES = 2
"""The last cases go to the ``test`` list, the others to ``training``."""
_GENERATOR_VERSION = 2  # in dataset.json: a dataset written by an earlier generator is rewritten

_DEFORM = 0.15  # amplitude of the random boundary deformation, in units of the organ's size
# per case, as between scans: the contrast phase scales the enhancing organs' HU, the scanner's calibration
# shifts all HU, and the noise level differs
_ENHANCEMENT = (0.85, 1.15)
_ENHANCING = (1, 2, 3, 6, 8, 9, 10, 11, 12, 13)  # not bile (4), stomach content (7), esophagus (5)
_HU_SHIFT = 10.0
_NOISE_HU = (10.0, 25.0)

# The anatomy, in RAS mm relative to the volume centre (+x patient right, +y anterior, +z superior),
# painted in this order so that later structures overwrite earlier ones where they touch.
# ("ellipsoid", centre, semi-axes) or ("tube", (start, end), radius); semi-axes >= 1e3 make a cylinder.
_ORGANS: tuple[tuple[int, float, str, tuple, tuple | float], ...] = (
    (6, 60.0, "ellipsoid", (55, 10, 25), (55, 60, 45)),  # liver: right upper quadrant
    (1, 50.0, "ellipsoid", (-85, -30, 25), (25, 35, 35)),  # spleen: left, posterior
    (7, 20.0, "ellipsoid", (-45, 40, 25), (35, 30, 35)),  # stomach: left, anterior
    (2, 150.0, "ellipsoid", (55, -45, -15), (22, 25, 40)),  # right kidney
    (3, 150.0, "ellipsoid", (-55, -45, -5), (22, 25, 40)),  # left kidney, a little higher
    (4, 10.0, "ellipsoid", (40, 45, -15), (13, 16, 22)),  # gallbladder: under the liver
    (11, 45.0, "tube", ((25, 0, -8), (-65, -12, 8)), 11.0),  # pancreas: head right, tail to the spleen
    (8, 220.0, "ellipsoid", (-15, -32, 0), (11, 11, 1e3)),  # aorta: anterior-left of the spine
    (9, 160.0, "ellipsoid", (20, -30, 0), (10, 10, 1e3)),  # inferior vena cava: anterior-right
    (10, 180.0, "tube", ((0, -16, -2), (35, 5, 20)), 6.0),  # portal vein: confluence to liver hilum
    (10, 180.0, "tube", ((0, -16, -2), (-65, -20, 10)), 5.0),  # splenic vein: behind the pancreas
    (5, 40.0, "ellipsoid", (-8, -12, 72), (7, 7, 42)),  # esophagus: superior slices only
    (12, 30.0, "ellipsoid", (40, -40, 32), (6, 10, 10)),  # right adrenal: above the right kidney
    (13, 30.0, "ellipsoid", (-40, -38, 42), (6, 10, 10)),  # left adrenal: above the left kidney
)
_BODY_SEMI_AXES = (135.0, 100.0)  # elliptic cross-section, mm
_BODY_CENTRE_Y = -5.0
_SPINE = (0.0, -62.0, 18.0)  # vertebral body centre (x, y) and radius, mm


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], coarse: Sequence[int]) -> np.ndarray:
    """A smooth random field of unit standard deviation: white noise on a coarse grid, upsampled with
    cubic splines (its length scale follows the size of the structure it deforms)."""
    field = rng.standard_normal(coarse)
    # spline upsampling is separable: one small (n, c) matrix per axis is much faster than ndimage.zoom in 3D
    for axis, (n, c) in enumerate(zip(shape, coarse)):
        weights = ndimage.zoom(np.eye(c), (n / c, 1), order=3)[:n]
        field = np.moveaxis(np.tensordot(weights, field, axes=(1, axis)), 0, axis)
    return (field - field.mean()) / (field.std() + 1e-6)


def _axis_mm(n: int, spacing: float) -> np.ndarray:
    return (np.arange(n) - (n - 1) / 2) * spacing


def _paint_organ(
    rng: np.random.Generator,
    image: np.ndarray,
    label: np.ndarray,
    body: np.ndarray,
    value: int,
    hu: float,
    kind: str,
    geometry: np.ndarray | Sequence[np.ndarray],
    size: np.ndarray | float,
) -> None:
    """Paint one deformed ellipsoid or tube into ``image`` and ``label`` (RAS voxel arrays) in place,
    within the ``body`` mask."""
    spacing = np.asarray(DEMO_SPACING)
    if kind == "ellipsoid":
        centre, semi = np.asarray(geometry, float), np.asarray(size, float)
        lo, hi = centre - semi * (1 + 2 * _DEFORM), centre + semi * (1 + 2 * _DEFORM)
    else:
        start, end = (np.asarray(p, float) for p in geometry)
        pad = size * (1 + 2 * _DEFORM)
        lo, hi = np.minimum(start, end) - pad, np.maximum(start, end) + pad
    # only the bounding box is computed, which keeps the generator fast
    half = (np.asarray(DEMO_SHAPE) - 1) / 2
    i0 = np.clip(np.floor(lo / spacing + half).astype(int), 0, DEMO_SHAPE)
    i1 = np.clip(np.ceil(hi / spacing + half).astype(int) + 1, 0, DEMO_SHAPE)
    box = tuple(slice(a, b) for a, b in zip(i0, i1))
    coords = np.ix_(*[(np.arange(a, b) - h) * s for a, b, h, s in zip(i0, i1, half, spacing)])
    if kind == "ellipsoid":
        radius = np.sqrt(sum(((c - m) / a) ** 2 for c, m, a in zip(coords, centre, semi)))
    else:
        axis = end - start
        t = np.clip(sum((c - s) * a for c, s, a in zip(coords, start, axis)) / (axis @ axis), 0.0, 1.0)
        radius = np.sqrt(sum((c - s - t * a) ** 2 for c, s, a in zip(coords, start, axis))) / size
    shape = radius.shape
    coarse = [max(2, min(5, n // 8)) for n in shape]
    field = np.clip(_smooth_field(rng, shape, coarse), -2.0, 2.0)
    mask = (radius < 1 + _DEFORM * field) & body[box]
    image[box][mask] = hu
    label[box][mask] = value
    if value == 7:  # air in the non-dependent (anterior) part of the stomach of a supine patient
        y = np.broadcast_to(coords[1], shape)
        air = mask & (y > geometry[1] + 0.5 * size[1])
        image[box][air] = -850.0


def _jitter(
    rng: np.random.Generator, body_scale: float, kind: str, geometry: Sequence, size: Sequence[float] | float
) -> tuple[np.ndarray | list[np.ndarray], np.ndarray | float]:
    """Per-case variation of one structure: ellipsoid centres move by up to 10% of the semi-axes and tube
    ends by up to 30% of the radius, sizes change by up to 10%, and all scales with the body."""
    if kind == "ellipsoid":
        semi = np.asarray(size, float)
        centre = np.asarray(geometry, float) + rng.uniform(-0.1, 0.1, 3) * np.minimum(semi, 60.0)
        return centre * body_scale, semi * rng.uniform(0.9, 1.1, 3) * body_scale
    ends = [np.asarray(p, float) + rng.uniform(-0.3, 0.3, 3) * size for p in geometry]
    return [p * body_scale for p in ends], size * rng.uniform(0.9, 1.1) * body_scale


def _synthesise_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One case as (HU image, label) arrays in RAS voxel order."""
    x, y, z = (_axis_mm(n, s) for n, s in zip(DEMO_SHAPE, DEMO_SPACING))
    xx, yy, zz = x[:, None, None], y[None, :, None], z[None, None, :]
    image = np.full(DEMO_SHAPE, -1000.0, dtype=np.float32)
    label = np.zeros(DEMO_SHAPE, dtype=np.uint8)

    body_scale = rng.uniform(0.95, 1.05)
    a, b = (s * body_scale * rng.uniform(0.95, 1.05) for s in _BODY_SEMI_AXES)
    body_r = np.sqrt((x[:, None] / a) ** 2 + ((y[None, :] - _BODY_CENTRE_Y) / b) ** 2)
    body_r = body_r * (1 + 0.03 * _smooth_field(rng, body_r.shape, (6, 5)))
    image[body_r < 1] = 40.0  # soft-tissue / muscle rim
    inside = np.broadcast_to((body_r < 1 - 12.0 / b)[:, :, None], DEMO_SHAPE)
    image[inside] = -100.0  # fat

    sx, sy, sr = _SPINE[0], _SPINE[1] * body_scale, _SPINE[2] * body_scale
    muscle = ((np.abs(xx) - 30 * body_scale) / 22) ** 2 + ((yy - sy + 23 * body_scale) / 15) ** 2 < 1
    image[np.broadcast_to(muscle, DEMO_SHAPE) & inside] = 50.0  # paraspinal muscles
    vertebra = (xx - sx) ** 2 + (yy - sy) ** 2 < sr**2
    spinous = (np.abs(xx - sx) < 5) & (yy < sy) & (yy > sy - sr - 16)
    bone = np.broadcast_to(vertebra | spinous, DEMO_SHAPE)
    disc = np.broadcast_to(vertebra & (np.mod(zz + rng.uniform(0, 30), 30) < 6), DEMO_SHAPE)
    image[bone] = 700.0
    image[disc] = 80.0  # intervertebral discs

    for value, hu, kind, geometry, size in _ORGANS:
        geometry, size = _jitter(rng, body_scale, kind, geometry, size)
        _paint_organ(rng, image, label, inside, value, hu, kind, geometry, size)
    # drawn after the anatomy, which therefore does not depend on them
    enhancement = rng.uniform(*_ENHANCEMENT)
    for value, hu, *_ in _ORGANS:
        if value in _ENHANCING:
            image[(label == value) & (image == np.float32(hu))] = hu * enhancement
    shift, noise = rng.uniform(-_HU_SHIFT, _HU_SHIFT), rng.uniform(*_NOISE_HU)

    image = ndimage.gaussian_filter(image, sigma=(0.6, 0.6, 0.3))  # partial-volume blur at boundaries
    image += shift + rng.normal(0.0, noise, DEMO_SHAPE).astype(np.float32)
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16), label


def _case_affine(rng: np.random.Generator) -> np.ndarray:
    """LPS-like voxel axes (as DICOM-converted NIfTI often is), rotated 2-5 degrees about z, non-zero origin."""
    angle = np.deg2rad(rng.uniform(2.0, 5.0) * rng.choice([-1.0, 1.0]))
    c, s = np.cos(angle), np.sin(angle)
    linear = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag(np.multiply((-1, -1, 1), DEMO_SPACING))
    centre_world = np.array([rng.uniform(-20, 20), rng.uniform(-20, 20), rng.uniform(-400, -300)])
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = centre_world - linear @ ((np.asarray(DEMO_SHAPE) - 1) / 2)
    return affine


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


def _complete_dataset(out_dir: Path, num_cases: int, seed: int) -> bool:
    """Whether ``out_dir`` already holds the dataset for these arguments, every listed file included."""
    json_path = out_dir / "dataset.json"
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        entries = meta["training"] + meta["test"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if meta.get("seed") != seed or meta.get("generator") != _GENERATOR_VERSION or len(entries) != num_cases:
        return False
    return all((out_dir / e[k]).is_file() for e in entries for k in ("image", "label"))


def generate_demo_dataset(out_dir: PathLike, num_cases: int = 8, seed: int = 0) -> Path:
    """Write a synthetic abdominal-CT-like dataset in Medical Segmentation Decathlon layout.

    Each case is a ``(240, 192, 48)`` volume of ``(1.25, 1.25, 3.0)`` mm voxels: an int16 image in HU
    (air, a body of fat with a muscle rim, a vertebra, and the 13 BTCV organs as randomly deformed
    ellipsoids and tubes at roughly their anatomical positions; per case, the enhancing organs' HU scaled
    by 0.85-1.15 (contrast phase), all HU shifted by up to 10 and Gaussian noise of 10-25 HU) and a uint8 label
    with the BTCV label values, every label present in every case. Image and label share one affine
    with LPS-like voxel axes, a small rotation about z and a non-zero origin, so that
    ``Orientation(axcodes="RAS")`` is exercised. Case ``i`` depends only on ``seed + i``.

    The files are ``imagesTr/demo_000.nii.gz``, ``labelsTr/demo_000.nii.gz``, ... and ``dataset.json``,
    whose ``training`` list holds all but the last two cases and whose ``test`` list holds the last two,
    as ``{"image", "label"}`` dicts (readable by ``monai.data.load_decathlon_datalist``).

    The call is cheap when ``out_dir`` already holds the dataset for the same ``num_cases`` and
    ``seed``: nothing is rewritten. ``dataset.json`` is written last, so an interrupted run is redone.

    Args:
        out_dir: output folder, created if needed.
        num_cases: number of cases, at least ``NUM_DEMO_TEST_CASES + 1``.
        seed: base seed; case ``i`` uses ``numpy.random.default_rng(seed + i)``.

    Returns:
        The path of ``dataset.json``.
    """
    if num_cases < NUM_DEMO_TEST_CASES + 1:
        raise ValueError(f"num_cases must be at least {NUM_DEMO_TEST_CASES + 1}, got {num_cases}.")
    out_dir = Path(out_dir)
    json_path = out_dir / "dataset.json"
    if _complete_dataset(out_dir, num_cases, seed):
        return json_path
    json_path.unlink(missing_ok=True)  # a stale list must not outlive a regeneration that fails midway
    for sub in ("imagesTr", "labelsTr"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)

    entries = []
    for case in range(num_cases):
        rng = np.random.default_rng(seed + case)
        image, label = _synthesise_case(rng)
        affine = _case_affine(rng)
        name = f"demo_{case:03d}.nii.gz"
        # stored with x and y reversed, matching the LPS-like affine
        _save_nifti(image[::-1, ::-1], affine, out_dir / "imagesTr" / name)
        _save_nifti(label[::-1, ::-1], affine, out_dir / "labelsTr" / name)
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})

    num_training = num_cases - NUM_DEMO_TEST_CASES
    meta = {
        "name": "DLKADemoAbdomenCT",
        "description": "Synthetic abdominal-CT-like volumes with the 13 BTCV organ labels (dlka_monai.data.demo)",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in DEMO_LABELS.items()},
        "numTraining": num_training,
        "numTest": NUM_DEMO_TEST_CASES,
        "seed": seed,
        "generator": _GENERATOR_VERSION,
        "training": entries[:num_training],
        "test": entries[num_training:],
    }
    tmp_path = json_path.with_suffix(".json.tmp")
    tmp_path.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    os.replace(tmp_path, json_path)  # atomic: a reader never sees a half-written list
    return json_path


@one_line_errors("python -m dlka_monai.data.demo")
def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: ``python -m dlka_monai.data.demo --out DIR``; bad arguments exit with status 1
    and a one-line message."""
    parser = ArgumentParser(
        prog="python -m dlka_monai.data.demo", description="Generate the synthetic abdominal-CT-like demo dataset."
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--num-cases", type=int, default=8, help="number of cases (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="base random seed (default 0)")
    args = parser.parse_args(argv)
    existed = _complete_dataset(args.out, args.num_cases, args.seed)
    json_path = generate_demo_dataset(args.out, num_cases=args.num_cases, seed=args.seed)
    num_training = args.num_cases - NUM_DEMO_TEST_CASES
    verb = "kept the existing" if existed else "wrote"
    print(
        f"{verb} {args.num_cases} demo cases ({num_training} training, {NUM_DEMO_TEST_CASES} test) in "
        f"{args.out / 'imagesTr'} and {args.out / 'labelsTr'}; datalist: {json_path}"
    )


if __name__ == "__main__":
    sys.exit(main())
