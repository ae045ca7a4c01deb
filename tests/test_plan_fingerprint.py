# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""The dataset fingerprint and the plan derived from it, on small generated CT-like and MR-like datasets,
checked against hand computation; the planner's command line."""

import json
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose

from dlka_monai.data import InvalidInputError
from dlka_monai.data.transforms import intensity_transform, load_transforms
from dlka_monai.plan import (
    dataset_fingerprint,
    datalist_fingerprint,
    feed_axcodes,
    plan_from_fingerprint,
    read_plan_file,
    target_spacing,
)
from dlka_monai.plan.__main__ import main

from utils import ROOT

SYNAPSE_WINDOW = {"scheme": "window", "a_min": -175.0, "a_max": 250.0}


def _save(array, spacing, path):
    # an LPS affine (as DICOM-derived NIfTI files often are): the fingerprint must give spacings along R, A, S
    nib.save(nib.Nifti1Image(array, np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])), str(path))


def _dataset(tmp_path, images, labels, spacings, modality="CT", labels_json=None, extra=None):
    entries = []
    for i, (image, label, spacing) in enumerate(zip(images, labels, spacings)):
        _save(image.astype(np.float32), spacing, tmp_path / f"case{i}.nii.gz")
        _save(label.astype(np.uint8), spacing, tmp_path / f"case{i}_seg.nii.gz")
        entries.append({"image": f"case{i}.nii.gz", "label": f"case{i}_seg.nii.gz", **(extra[i] if extra else {})})
    meta = {"training": entries, "labels": labels_json or {"0": "background", "1": "organ"}}
    if modality is not None:
        meta["modality"] = {"0": modality}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    return tmp_path / "dataset.json"


def _ct_case(low, high):
    """A 24×24×6 CT-like case: air, and a 10×10×5 labelled block whose 500 voxels are low..high-1 HU."""
    image = np.full((24, 24, 6), -1000.0)
    label = np.zeros((24, 24, 6))
    image[5:15, 5:15, :5] = np.arange(low, high).reshape(10, 10, 5)
    label[5:15, 5:15, :5] = 1
    return image, label


@pytest.fixture
def ct_dataset(tmp_path):
    # foreground 1..500 and 501..1000: together exactly 1..1000; thick slices along z
    cases = [_ct_case(1, 501), _ct_case(501, 1001), _ct_case(1, 501), _ct_case(501, 1001), _ct_case(1, 501)]
    spacings = [(0.8, 0.8, 2.0), (0.8, 0.8, 4.0), (0.8, 0.8, 5.0), (0.8, 0.8, 5.0), (0.8, 0.8, 6.0)]
    return _dataset(tmp_path, [c[0] for c in cases], [c[1] for c in cases], spacings)


def test_ct_fingerprint_by_hand(ct_dataset):
    fp = datalist_fingerprint(ct_dataset, foreground_samples=None, progress=False)
    assert fp["modality"] == {"0": "CT"} and fp["channels"] == 1 and fp["labels"] == {"0": "background", "1": "organ"}
    case = fp["cases"][1]
    # the file is L, P, S; shape and spacing are given along R, A, S
    assert case["axcodes"] == "LPS" and case["shape"] == [24, 24, 6] and case["spacing"] == pytest.approx([0.8, 0.8, 4.0])
    assert case["label_values"] == [0, 1]
    stats = fp["foreground_intensity"]["0"]
    # every voxel: 1..500 three times and 501..1000 twice
    values = np.concatenate([np.arange(1, 501)] * 3 + [np.arange(501, 1001)] * 2).astype(float)
    assert stats["n_samples"] == 2500
    assert stats["mean"] == pytest.approx(values.mean()) and stats["std"] == pytest.approx(values.std())
    # linear interpolation between order statistics: sorted 1, 1, 1, 2, 2, 2, ...; position 0.005 * 2499
    # = 12.495 lies between the 13th and 14th values, both 5
    assert stats["percentile_00_5"] == 5.0
    assert stats["percentile_99_5"] == pytest.approx(np.percentile(values, 99.5))
    assert stats["min"] == 1 and stats["max"] == 1000


def test_ct_fingerprint_sampled_as_nnunet(ct_dataset):
    """The same number of voxels drawn from each case (with replacement): deterministic, and close to the
    exact values: 3 cases of 1..500 and 2 of 501..1000 give a mean of 3/5 * 250.5 + 2/5 * 750.5."""
    a = datalist_fingerprint(ct_dataset, foreground_samples=200_000, progress=False)["foreground_intensity"]["0"]
    b = datalist_fingerprint(ct_dataset, foreground_samples=200_000, progress=False)["foreground_intensity"]["0"]
    assert a == b and a["n_samples"] == 200_000
    assert a["mean"] == pytest.approx(0.6 * 250.5 + 0.4 * 750.5, abs=2.0)
    assert a["percentile_00_5"] == pytest.approx(5.0, abs=2.0)


def test_target_spacing_anisotropy_rule():
    spacings = [(0.8, 0.8, z) for z in (2.0, 4.0, 5.0, 5.0, 6.0)]
    # median z 5.0 > 3 * 0.8, and median z size 6 * 3 < 24: anisotropic; z gets its 10th percentile:
    # sorted (2, 4, 5, 5, 6), position 0.1 * 4 = 0.4 -> 2 + 0.4 * (4 - 2) = 2.8
    assert target_spacing(spacings, [(24, 24, 6)] * 5) == pytest.approx([0.8, 0.8, 2.8])
    # as many voxels along z as in-plane (10 * 3 > 24): not anisotropic for nnU-Net, the median stays
    assert target_spacing(spacings, [(24, 24, 10)] * 5) == pytest.approx([0.8, 0.8, 5.0])
    # the 10th percentile is never finer than the other axes
    assert target_spacing([(2.0, 2.0, 0.5), (2.0, 2.0, 7.0), (2.0, 2.0, 7.0)], [(24, 24, 6)] * 3) == pytest.approx(
        [2.0, 2.0, 2.00001]
    )


def test_feed_axcodes_coarse_axis_first():
    assert feed_axcodes([0.8, 0.8, 2.8]) == "SAR"  # axial CT: the paper's (z, y, x)
    assert feed_axcodes([1.0, 1.0, 1.0]) == "SAR"  # isotropic: the preset's order
    assert feed_axcodes([4.0, 1.0, 1.0]) == "RSA"  # sagittal slices: x first, then z, y as in SAR
    assert feed_axcodes([1.0, 3.0, 1.0]) == "ASR"


def test_ct_plan(ct_dataset):
    fp = datalist_fingerprint(ct_dataset, foreground_samples=None, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tiny cases: a 64×128×128 patch covers them, no warning
        plan = plan_from_fingerprint(fp, "dlka3d_synapse")
    assert plan["axcodes"] == "SAR" and plan["pixdim"] == pytest.approx([2.8, 0.8, 0.8])
    assert plan["normalization"] == {
        "scheme": "ct",
        "clip": [5.0, pytest.approx(fp["foreground_intensity"]["0"]["percentile_99_5"])],
        "mean": pytest.approx(fp["foreground_intensity"]["0"]["mean"]),
        "std": pytest.approx(fp["foreground_intensity"]["0"]["std"]),
    }
    assert plan["modality"] == "CT" and plan["class_names"] == {"0": "background", "1": "organ"}
    assert plan["network"]["in_channels"] == 1 and plan["network"]["out_channels"] == 2
    assert plan["network"]["img_size"] == [64, 128, 128] and plan["dataset"]["cases"] == fp["cases"]
    # the CT scheme: clip to the percentiles, then z-score with the foreground statistics
    t = intensity_transform("image", plan["normalization"])
    x = torch.tensor([[-1000.0, 5.0, 500.0, 2000.0]])
    lo, hi = plan["normalization"]["clip"]
    mean, std = plan["normalization"]["mean"], plan["normalization"]["std"]
    expected = (torch.clamp(x, lo, hi) - mean) / std
    assert torch.allclose(t({"image": x})["image"], expected, atol=1e-5)


def test_coverage_warning():
    # a 0.3 mm in-plane dataset of 1024×1024×200: 128 voxels cover 1/8 of the plane
    fp = {
        "modality": {"0": "MRI"},
        "channels": 1,
        "labels": {"0": "background", "1": "lesion"},
        "cases": [{"case": f"c{i}", "shape": [1024, 1024, 200], "spacing": [0.3, 0.3, 1.0], "axcodes": "RAS"} for i in range(3)],
    }
    with pytest.warns(UserWarning, match=r"covers less than 0.2 of the median case along axis 1 \(A: 0.12, 128 of 1024 voxels at 0.3 mm; 0.48 mm would cover 0.2\), axis 2 \(R: "):
        plan = plan_from_fingerprint(fp, "dlka3d_synapse")
    assert plan["planning"]["patch_coverage"] == pytest.approx([0.32, 0.125, 0.125])
    assert plan["normalization"] == {"scheme": "zscore"} and plan["modality"] == "MRI"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan_from_fingerprint(fp, "dlka3d_synapse", min_coverage=0.1)


def _mr_case(rng):
    """A 24³ MR-like case in arbitrary positive units: noise around 10 outside a body of two tissues
    (about 400 and 900, all far above the HU window's 250), no HU meaning."""
    image = rng.uniform(0, 20, (24, 24, 24))
    body = np.zeros((24, 24, 24), bool)
    body[3:21, 3:21, 3:21] = True
    image[body] = rng.normal(400, 30, body.sum())
    image[8:16, 8:16, 8:16] = rng.normal(900, 60, (8, 8, 8))
    label = np.zeros((24, 24, 24))
    label[8:16, 8:16, 8:16] = 1
    return image, label, body


def test_mr_plan_gives_a_usable_range(tmp_path):
    rng = np.random.default_rng(0)
    cases = [_mr_case(rng) for _ in range(3)]
    path = _dataset(tmp_path, [c[0] for c in cases], [c[1] for c in cases], [(1.0, 1.0, 1.0)] * 3, modality="MRI")
    fp = datalist_fingerprint(path, progress=False)
    assert "foreground_intensity" not in fp  # per-image z-score: no dataset statistics needed
    plan = plan_from_fingerprint(fp, "dlka3d_synapse")
    assert plan["normalization"] == {"scheme": "zscore"} and plan["pixdim"] == [1.0, 1.0, 1.0]

    def preprocess(normalization):
        steps = load_transforms(["image", "label"], "NibabelReader", plan["axcodes"], plan["pixdim"], normalization, crop_body=False)
        return Compose(steps)({"image": str(tmp_path / "case0.nii.gz"), "label": str(tmp_path / "case0_seg.nii.gz")})

    planned, window = preprocess(plan["normalization"]), preprocess(SYNAPSE_WINDOW)
    # the file is L, P, S; fed as S, A, R: find the body and the tissue with the label, not by index
    organ = planned["label"] > 0
    body = window["image"] > 0.5  # everything above the window's middle (250 HU is far below the body's values)
    x = planned["image"]
    assert abs(float(x.std()) - 1.0) < 1e-3
    # the planned range separates the tissues by several units and varies inside each
    assert float(x[organ].mean() - x[body & ~organ].mean()) > 1.0 and float(x[body & ~organ].std()) > 0.05
    # the HU window maps every body voxel to its ceiling: the two tissues become one value
    w = window["image"]
    assert float((w[body] == 1.0).float().mean()) == 1.0 and int(body.sum()) == 18**3
    assert float(w[organ].std()) == 0.0


def test_disagreeing_cases_are_named(tmp_path):
    image, label = _ct_case(1, 501)
    extra = [{"modality": "CT"}, {"modality": "MR"}, {"modality": "CT"}]
    path = _dataset(tmp_path, [image] * 3, [label] * 3, [(1.0, 1.0, 1.0)] * 3, modality=None, extra=extra)
    with pytest.raises(InvalidInputError, match=r'disagree on modality: "CT" \(case0.nii.gz, case2.nii.gz\); "MR" \(case1.nii.gz\)'):
        datalist_fingerprint(path, progress=False)
    bad = label.copy()
    bad[0, 0, 0] = 5
    path = _dataset(tmp_path, [image] * 2, [label, bad], [(1.0, 1.0, 1.0)] * 2)
    with pytest.raises(InvalidInputError, match=r"label values outside the dataset's labels 0, 1: case1.nii.gz \(5\)"):
        datalist_fingerprint(path, progress=False)
    cases = [{"image": str(tmp_path / "case0.nii.gz"), "label": str(tmp_path / "case0_seg.nii.gz")}]
    cases.append({"image": [cases[0]["image"]] * 2, "label": cases[0]["label"]})
    with pytest.raises(InvalidInputError, match=r"disagree on the number of channels.*1 \(case0.nii.gz\); 2 \(case0.nii.gz\)"):
        dataset_fingerprint(cases, "CT", progress=False)


def test_cli(ct_dataset, tmp_path, capsys):
    out = tmp_path / "out" / "plan.json"
    assert main(["--datalist", str(ct_dataset), "--preset", "dlka3d_synapse", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out}: dlka3d_synapse, 5 cases, CT") and "axcodes SAR" in printed
    plan = read_plan_file(out)
    assert plan["normalization"]["scheme"] == "ct" and plan["pixdim"] == pytest.approx([2.8, 0.8, 0.8])
    # a json without modality, a missing file: one line, exit 1
    meta = json.loads(ct_dataset.read_text())
    del meta["modality"]
    (tmp_path / "nomod.json").write_text(json.dumps(meta))
    assert main(["--datalist", str(tmp_path / "nomod.json"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: no modality" in err
    # the modality given on the command line replaces the missing one
    assert main(["--datalist", str(tmp_path / "nomod.json"), "--modality", "MR", "--out", str(out)]) == 0
    assert read_plan_file(out)["normalization"] == {"scheme": "zscore"}
    run = subprocess.run(
        [sys.executable, "-m", "dlka_monai.plan", "--datalist", str(tmp_path / "missing.json")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert run.returncode == 1 and run.stderr.strip() == f"dlka_monai.plan: error: {tmp_path / 'missing.json'}: no such dataset json."


def test_fingerprint_of_simpleitk_files(tmp_path):
    """MetaImage files (read with SimpleITK, arrays (z, y, x)): the same statistics, voxels read whole."""
    import SimpleITK as sitk

    cases = []
    for i, (low, high) in enumerate(((1, 501), (501, 1001))):
        image, label = _ct_case(low, high)
        for array, name in ((image.astype(np.float32), f"c{i}.mha"), (label.astype(np.uint8), f"c{i}_seg.mha")):
            itk = sitk.GetImageFromArray(array.T.copy())  # (x, y, z) -> SimpleITK's (z, y, x)
            itk.SetSpacing((0.7, 0.8, 3.0))
            sitk.WriteImage(itk, str(tmp_path / name))
        cases.append({"image": str(tmp_path / f"c{i}.mha"), "label": str(tmp_path / f"c{i}_seg.mha")})
    fp = dataset_fingerprint(cases, "CT", {0: "background", 1: "organ"}, foreground_samples=None, progress=False)
    stats = fp["foreground_intensity"]["0"]
    assert stats["mean"] == pytest.approx(500.5) and stats["std"] == pytest.approx(np.arange(1, 1001).std())
    assert stats["min"] == 1 and stats["max"] == 1000 and stats["n_samples"] == 1000
    # an identity direction in LPS is L, P, S in RAS terms
    assert fp["cases"][0]["axcodes"] == "LPS" and fp["cases"][0]["spacing"] == pytest.approx([0.7, 0.8, 3.0])
    assert fp["cases"][0]["shape"] == [24, 24, 6]


def test_2d_plan_keeps_slice_spacing():
    fp = {
        "modality": {"0": "CT"},
        "channels": 1,
        "labels": {"0": "background", "1": "organ"},
        "foreground_intensity": {"0": {"mean": 40.0, "std": 50.0, "percentile_00_5": -100.0, "percentile_99_5": 200.0}},
        "cases": [{"case": f"c{i}", "shape": [512, 512, 90 + i], "spacing": [0.7, 0.7, 5.0], "axcodes": "LPS"} for i in range(3)],
    }
    # 512 × 0.7 mm in-plane at the target 0.7 mm: 224 of 512 voxels; the slice axis is not checked
    plan = plan_from_fingerprint(fp, "dlka2d_synapse")
    assert plan["axcodes"] == "SAR" and plan["pixdim"] == [-1.0, 0.7, 0.7]
    assert plan["planning"]["patch_coverage"][1:] == pytest.approx([224 / 512, 224 / 512])
    assert plan["normalization"] == {"scheme": "ct", "clip": [-100.0, 200.0], "mean": 40.0, "std": 50.0}
    assert plan["network"]["out_channels"] == 2 and plan["spatial_dims"] == 2
