"""The 2D net in the bundle: the training overlay configs/train_2d.json, and configs/inference.json run on
the 2D model it writes (its plan selects the slice-wise inferer), on the demo data and on TransUNet-style
.npz slices."""

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from dlka_monai.data import LoadNpzSliced, npz_slice_datalist
from dlka_monai.inference import SliceResizeInferer
from utils import TINY_TRAIN_2D_ARGS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TRAIN_2D = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'train_2d.json'}']"
INFER = str(CONFIGS / "inference.json")
LOGGING = str(CONFIGS / "logging.conf")
# a tiny 2D D-LKA net: MaxViT-pico at 64×64
TINY_2D = TINY_TRAIN_2D_ARGS


def _run_bundle(args, cwd, timeout=600):
    cmd = [sys.executable, "-m", "monai.bundle", "run", *args, "--logging_file", LOGGING]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    return output


def _parser(files, **overrides):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser.update(overrides)
    return parser


def _write_npz_slices(folder, cases=("case0001", "case0002"), slices=3, size=32):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for case in cases:
        for s in range(slices):
            label = np.zeros((size, size), np.float32)
            label[8:20, 10:24] = 1 + s
            image = np.clip(rng.random((size, size), dtype=np.float32) * 0.2 + label / 8, 0, 1)
            np.savez(folder / f"{case}_slice{s:03d}.npz", image=image, label=label)
    return folder


def test_load_npz_slice_and_datalist(tmp_path):
    folder = _write_npz_slices(tmp_path / "train_npz", cases=("case0001", "case0002", "case0003", "case0004"))
    path = folder / "case0002_slice001.npz"
    out = LoadNpzSliced(["image", "label"])({"image": str(path), "label": str(path), "other": 1})
    with np.load(path) as ref:
        for key in ("image", "label"):
            assert isinstance(out[key], MetaTensor) and out[key].shape == (1, 32, 32)
            assert out[key].dtype == torch.float32
            np.testing.assert_array_equal(out[key][0].numpy(), ref[key])
            assert out[key].meta["filename_or_obj"] == str(path)
    assert out["other"] == 1
    with pytest.raises(KeyError, match="no array"):
        LoadNpzSliced("mask")({"mask": str(path)})

    data = npz_slice_datalist(folder, val_fraction=0.25, seed=0)
    assert len(data["training"]) == 9 and len(data["validation"]) == 3 and data["test"] == []
    # validation takes whole cases
    val_cases = {Path(e["image"]).name.split("_slice")[0] for e in data["validation"]}
    train_cases = {Path(e["image"]).name.split("_slice")[0] for e in data["training"]}
    assert len(val_cases) == 1 and not val_cases & train_cases
    assert all(e["image"] == e["label"] and e["image"].endswith(".npz") for e in data["training"])
    assert len(npz_slice_datalist(folder)["training"]) == 12
    with pytest.raises(FileNotFoundError):
        npz_slice_datalist(tmp_path / "empty")


def test_slice_resize_inferer_predicts_every_slice_at_its_size():
    seen = []

    def net(x):
        seen.append(tuple(x.shape))
        return torch.cat([x, 2 * x], 1)

    volume = torch.rand(1, 1, 5, 40, 48)
    # net size equal to the slices: exact, slice by slice along the first spatial dim
    out = SliceResizeInferer((40, 48), sw_batch_size=2)(volume, net)
    torch.testing.assert_close(out, torch.cat([volume, 2 * volume], 1))
    # other sizes: the net sees img_size, the output has the input's size
    seen.clear()
    out = SliceResizeInferer(32, sw_batch_size=5)(volume, net)
    assert out.shape == (1, 2, 5, 40, 48) and set(seen) == {(5, 1, 32, 32)}
    assert SliceResizeInferer(32)(torch.rand(2, 1, 40, 48), net).shape == (2, 2, 40, 48)


def test_train_2d_preprocessing_makes_mapped_2d_slices(tmp_path, demo_dataset):
    parser = _parser(["train.json", "train_2d.json"], bundle_root=str(tmp_path), demo_dir=str(demo_dataset), img_size=64)
    assert parser.get_parsed_content("num_classes") == 9
    transform = parser.get_parsed_content("train#preprocessing")
    case = parser.get_parsed_content("data")["training"][0]
    samples = transform(case)
    assert len(samples) == parser.get_parsed_content("slices_per_batch")
    labels = set()
    for s in samples:
        assert s["image"].shape == s["label"].shape == (1, 64, 64)
        labels |= set(torch.unique(s["label"]).int().tolist())
    assert labels <= set(range(9)) and len(labels) > 1
    # the whole volume: BTCV values mapped to the 8 organs (esophagus, veins, adrenals -> background)
    volume = parser.get_parsed_content("validate#preprocessing")(case)["label"]
    assert set(torch.unique(volume).int().tolist()) == set(range(9))
    assert volume.shape[1] == nib.load(case["image"]).shape[2]  # every axial slice kept

    # .npz slices
    npz = _write_npz_slices(tmp_path / "npz")
    parser = _parser(["train.json", "train_2d.json"], bundle_root=str(tmp_path), npz_dir=str(npz), img_size=64)
    assert parser.get_parsed_content("demo") is False
    data = parser.get_parsed_content("data")
    sample = parser.get_parsed_content("train#preprocessing")(data["training"][0])
    assert sample["image"].shape == sample["label"].shape == (1, 64, 64)
    assert parser.get_parsed_content("train#dataloader#batch_size") == parser.get_parsed_content("slices_per_batch")


def test_train_and_infer_2d_on_demo_data(tmp_path, demo_dataset):
    args = ["--config_file", TRAIN_2D, "--bundle_root", str(tmp_path), "--demo_dir", str(demo_dataset), *TINY_2D]
    out = _run_bundle(["training", *args, "--max_epochs", "1", "--val_interval", "1"], cwd=tmp_path)
    assert "epoch 1/1" in out and " dice " in out
    model = tmp_path / "models" / "2d" / "model.pt"
    weights = torch.load(model, weights_only=True)
    assert weights["model"]["out.conv.conv.weight"].shape[0] == 9
    assert weights["plan"]["network"]["encoder"] == "maxvit_rmlp_pico_rw_256" and weights["plan"]["network"]["img_size"] == 64

    image = sorted((Path(demo_dataset) / "imagesTr").glob("*.nii.gz"))[0]
    # nothing but the model: its plan gives the tiny 2D net, the demo's spacing and the slice-wise inferer
    args = ["--config_file", INFER, "--bundle_root", str(tmp_path), "--input", str(image), "--ckpt_path", str(model)]
    args += ["--output_dir", str(tmp_path / "eval")]
    _run_bundle(args, cwd=tmp_path)
    (seg_path,) = (tmp_path / "eval").glob("*.nii.gz")
    src, seg = nib.load(image), nib.load(seg_path)
    assert seg.shape == src.shape
    np.testing.assert_allclose(seg.affine, src.affine, atol=1e-4)
    values = np.unique(np.asarray(seg.dataobj))
    assert values.min() >= 0 and values.max() <= 8
