import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

from dlka_monai.data import DEMO_LABELS, generate_demo_dataset
from dlka_monai.data.demo import main

NUM_CASES = 8


@pytest.fixture(scope="module")
def demo_dir(demo_dataset) -> Path:
    """The session's demo dataset: ``generate_demo_dataset``'s defaults, NUM_CASES cases of seed 0."""
    return demo_dataset


@pytest.fixture(scope="module")
def small_demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo_small")
    generate_demo_dataset(out, num_cases=3, seed=0)
    return out


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Image]:
    img = nib.load(path)
    return np.asanyarray(img.dataobj), img.affine, img


def test_dataset_json(demo_dir):
    meta = json.loads((demo_dir / "dataset.json").read_text())
    assert meta["labels"] == {str(k): v for k, v in DEMO_LABELS.items()}
    assert set(meta["labels"]) == {str(i) for i in range(14)} and meta["labels"]["6"] == "liver"
    assert meta["numTraining"] == NUM_CASES - 2 == len(meta["training"])
    names = [e["image"] for e in meta["training"] + meta["test"]]
    assert names == [f"./imagesTr/demo_{i:03d}.nii.gz" for i in range(NUM_CASES)]
    # the dict-style test entries (with labels) go through MONAI's Decathlon loader
    test = load_decathlon_datalist(demo_dir / "dataset.json", data_list_key="test")
    assert [Path(e["label"]).name for e in test] == ["demo_006.nii.gz", "demo_007.nii.gz"]
    assert all(Path(e[k]).is_absolute() and Path(e[k]).is_file() for e in test for k in ("image", "label"))


def test_cases(demo_dir):
    median_hu = {6: 60, 1: 50, 2: 150, 3: 150, 8: 220, 11: 45, 4: 10}
    for case in range(NUM_CASES):
        image, affine, img = _load(demo_dir / "imagesTr" / f"demo_{case:03d}.nii.gz")
        label, label_affine, _ = _load(demo_dir / "labelsTr" / f"demo_{case:03d}.nii.gz")
        assert image.shape == label.shape == (240, 192, 48)
        assert image.dtype == np.int16 and label.dtype == np.uint8
        np.testing.assert_allclose(img.header.get_zooms(), (1.25, 1.25, 3.0), rtol=1e-6)
        np.testing.assert_array_equal(affine, label_affine)
        assert int(img.header["qform_code"]) == int(img.header["sform_code"]) == 1
        # LPS-like storage, rotated 2-5 degrees about z, off-origin
        assert nib.aff2axcodes(affine) == ("L", "P", "S")
        angle = np.degrees(np.arctan2(abs(affine[1, 0]), abs(affine[0, 0])))
        assert 2.0 <= angle <= 5.0
        assert np.linalg.norm(affine[:3, 3]) > 10
        np.testing.assert_array_equal(np.unique(label), np.arange(14))
        counts = np.bincount(label.ravel(), minlength=14)
        assert counts[1:].min() >= 300, counts
        # air in the corners (shifted by up to 10 HU by the calibration, noise of up to 25 HU)
        assert abs(image[:10, :10].mean() + 1000) < 15 and image[:10, :10].max() < -850
        assert (image > 500).sum() > 1000  # bone
        for value, hu in median_hu.items():
            # contrast phase (x 0.85-1.15 for enhancing organs) and calibration shift (+-10 HU) per case
            assert abs(np.median(image[label == value]) - hu) < 0.15 * hu + 20, (case, value)


def test_cases_differ_in_contrast_and_noise(demo_dir):
    aorta, liver_noise = [], []
    for case in range(NUM_CASES):
        image, _, _ = _load(demo_dir / "imagesTr" / f"demo_{case:03d}.nii.gz")
        label, _, _ = _load(demo_dir / "labelsTr" / f"demo_{case:03d}.nii.gz")
        aorta.append(np.median(image[label == 8]))
        liver_noise.append(image[label == 6].std())
    assert np.ptp(aorta) > 20 and max(liver_noise) > 1.2 * min(liver_noise)


def test_anatomy_in_ras(demo_dir):
    keys = ("image", "label")
    load = Compose([LoadImaged(keys), EnsureChannelFirstd(keys), Orientationd(keys, axcodes="RAS", labels=None)])
    for case in (0, NUM_CASES - 1):
        name = f"demo_{case:03d}.nii.gz"
        d = load({"image": str(demo_dir / "imagesTr" / name), "label": str(demo_dir / "labelsTr" / name)})
        assert nib.aff2axcodes(d["label"].affine.numpy()) == ("R", "A", "S")
        label = d["label"][0].numpy()

        def centroid(value: int) -> np.ndarray:
            return np.argwhere(label == value).mean(0)

        assert centroid(6)[0] > centroid(1)[0]  # RAS: +x is the patient's right (liver), spleen on the left
        assert centroid(2)[0] > centroid(3)[0]  # right kidney, left kidney
        assert centroid(8)[1] < centroid(11)[1]  # aorta posterior to the pancreas
        assert centroid(7)[1] > centroid(1)[1]  # stomach anterior to the spleen
        assert centroid(5)[2] > centroid(11)[2]  # esophagus superior to the pancreas
        world = d["label"].affine.numpy() @ np.append(centroid(6), 1)
        assert world[0] > (d["label"].affine.numpy() @ np.append(centroid(1), 1))[0]


def test_deterministic(demo_dir, small_demo_dir):
    # case i depends only on seed + i, so the 3-case set equals the first 3 cases of the 8-case set
    for case in range(3):
        for sub in ("imagesTr", "labelsTr"):
            a, affine_a, _ = _load(demo_dir / sub / f"demo_{case:03d}.nii.gz")
            b, affine_b, _ = _load(small_demo_dir / sub / f"demo_{case:03d}.nii.gz")
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(affine_a, affine_b)


def test_idempotent(small_demo_dir):
    files = sorted(p for p in small_demo_dir.rglob("*") if p.is_file())
    assert len(files) == 7
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    assert generate_demo_dataset(small_demo_dir, num_cases=3) == small_demo_dir / "dataset.json"
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes

    # a missing listed file makes the set incomplete: regenerate, with the same content
    before, _, _ = _load(small_demo_dir / "labelsTr" / "demo_001.nii.gz")
    (small_demo_dir / "labelsTr" / "demo_001.nii.gz").unlink()
    generate_demo_dataset(small_demo_dir, num_cases=3)
    after, _, _ = _load(small_demo_dir / "labelsTr" / "demo_001.nii.gz")
    np.testing.assert_array_equal(before, after)
    assert (small_demo_dir / "dataset.json").stat().st_mtime_ns > mtimes[small_demo_dir / "dataset.json"]


def test_cli_and_arguments(small_demo_dir, capsys):
    main(["--out", str(small_demo_dir), "--num-cases", "3"])  # what `python -m dlka_monai.data.demo` runs
    out = capsys.readouterr().out
    assert "kept the existing 3 demo cases" in out and str(small_demo_dir / "dataset.json") in out
    with pytest.raises(ValueError, match="at least 3"):
        generate_demo_dataset(small_demo_dir, num_cases=2)
