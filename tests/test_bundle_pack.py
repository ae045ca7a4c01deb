"""Packing (python -m dlka_monai.bundle pack): self-contained bundle folders and zips, run outside the repo."""

import argparse
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Spacingd

from dlka_monai.bundle import main, pack_bundle
from dlka_monai.inference import SafeSpacingd
from utils import TINY_BUNDLE_IMG_SIZE, assert_same_space, tiny_training_checkpoint

# what MONAI Label 0.8.5's BundleTrainTask overrides or reads in train.json
MONAILABEL_TRAIN_IDS = (
    "bundle_root", "device", "network", "network_def", "train#trainer#max_epochs", "train#dataset#data",
    "train#handlers", "validate#dataset#data",
)


@pytest.mark.slow
def test_pack_writes_a_folder_and_a_zip_that_segment_outside_the_repo(demo_dataset, tmp_path):
    ckpt = tiny_training_checkpoint(tmp_path / "checkpoint_epoch=3.pt")
    weights = ckpt["model"]
    out = tmp_path / "dist" / "dlka3d_synapse"
    # the preset and the network come from the model's plan
    cmd = [sys.executable, "-m", "dlka_monai.bundle", "pack", "--out", str(out)]
    cmd += ["--checkpoint", str(tmp_path / "checkpoint_epoch=3.pt"), "--zip"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    configs = {"train", "inference", "metadata", "multi_gpu_train", "evaluate", "plan"}
    others = {"configs/logging.conf", "models/model.pt", "docs/README.md", "LICENSE", ".dlka_monai_bundle"}
    assert files == {f"configs/{c}.json" for c in configs} | others
    packed = torch.load(out / "models" / "model.pt", weights_only=True)
    assert packed["plan"] == ckpt["plan"] == json.loads((out / "configs" / "plan.json").read_text(encoding="utf-8"))
    assert packed["model"].keys() == weights.keys() and all(torch.equal(packed["model"][k], weights[k]) for k in weights)
    meta = json.loads((out / "configs" / "metadata.json").read_text(encoding="utf-8"))
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == len(pred["channel_def"]) == 14 and pred["channel_def"]["6"] == "liver"
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == TINY_BUNDLE_IMG_SIZE
    assert "dlka_monai" in meta["required_packages_version"]

    zip_path = tmp_path / "dist" / f"dlka3d_synapse_v{meta['version']}.zip"
    assert str(zip_path) in proc.stdout
    with zipfile.ZipFile(zip_path) as archive:
        assert set(archive.namelist()) == {f"dlka3d_synapse/{f}" for f in files}
        archive.extractall(tmp_path / "unzipped")

    # the unzipped bundle, run from a folder that is neither the repository nor the bundle
    bundle, work = tmp_path / "unzipped" / "dlka3d_synapse", tmp_path / "work"
    work.mkdir()
    image = demo_dataset / "imagesTr" / "demo_006.nii.gz"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json")]
    cmd += ["--bundle_root", str(bundle), "--input", str(image), "--output_dir", str(work / "seg")]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_same_space(work / "seg" / "demo_006_seg.nii.gz", image)


@pytest.mark.parametrize(
    "preset, num_classes, spatial_shape, label_1",
    [
        ("dlka3d_synapse", 14, [64, 128, 128], "spleen"),
        ("dlka3d_pancreas", 2, [96, 96, 96], "pancreas"),
        ("dlka2d_synapse", 9, [224, 224], "spleen"),
    ],
)
def test_pack_merges_the_presets_overlays_into_single_configs(tmp_path, preset, num_classes, spatial_shape, label_1):
    out, zip_path = pack_bundle(preset, tmp_path / preset)
    assert zip_path is None and not (out / "models").exists()
    train = ConfigParser()
    train.read_config(str(out / "configs" / "train.json"))
    assert all(id_ in train for id_ in MONAILABEL_TRAIN_IDS)
    # the checkpoint MONAI Label loads and trains, whatever folder the repo's overlay used
    train["bundle_root"] = str(out)
    assert Path(train.get_parsed_content("ckpt_dir")) == out / "models" and train["demo"] is False
    inference = ConfigParser()
    inference.read_config(str(out / "configs" / "inference.json"))
    inference["bundle_root"] = str(out)
    assert inference["ckpt_path"] == "$os.path.join(@bundle_root, 'models', 'model.pt')"
    assert inference.get_parsed_content("preset") == preset
    assert inference.get_parsed_content("num_classes") == num_classes
    assert inference.get_parsed_content("class_names")["1"] == label_1
    for id_ in ("preprocessing", "inferer", "postprocessing"):  # what BundleInferTask instantiates
        assert inference.get_parsed_content(id_) is not None
    meta = json.loads((out / "configs" / "metadata.json").read_text(encoding="utf-8"))
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == len(pred["channel_def"]) == num_classes and pred["channel_def"]["1"] == label_1
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == pred["spatial_shape"] == spatial_shape


def test_pack_refuses_bad_input_in_one_line(tmp_path, capsys):
    tiny_training_checkpoint(tmp_path / "tiny.pt")
    torch.save({"model": argparse.Namespace(a=1)}, tmp_path / "pickled.pt")
    (tmp_path / "taken").mkdir()
    cases = {
        "another preset": (["--preset", "dlka3d_pancreas", "--checkpoint", str(tmp_path / "tiny.pt")], "is a model of dlka3d_synapse, not of --preset dlka3d_pancreas"),
        "no model, no preset": ([], "give the model to pack"),
        "pickled objects": (["--preset", "dlka3d_synapse", "--checkpoint", str(tmp_path / "pickled.pt")], "pickled Python objects"),
        "unknown id": (["--preset", "dlka3d_synapse", "--set", "network_def#nope#x=1"], "network_def#nope#x"),
        "out exists": (["--preset", "dlka3d_synapse", "--out", str(tmp_path / "taken")], "exists"),
    }
    for name, (args, message) in cases.items():
        out = ["--out", str(tmp_path / "out")] if "--out" not in args else []
        assert main(["pack", *args, *out]) == 1, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("bundle: error:") and message in err, (name, err)
        assert not (tmp_path / "out").exists(), name


def test_overwrite_replaces_only_what_the_packer_made(tmp_path, capsys):
    out, _ = pack_bundle("dlka3d_pancreas", tmp_path / "b")
    (out / "configs" / "train.json").write_text("{}")
    out, _ = pack_bundle("dlka3d_pancreas", out, overwrite=True)  # the packer's own files are replaced
    assert json.loads((out / "configs" / "train.json").read_text()) and (out / ".dlka_monai_bundle").is_file()
    (out / "configs" / "mine.json").write_text("{}")  # a file the packer did not write is kept: refused
    with pytest.raises(ValueError, match="holds files the packer did not write \\(configs/mine.json\\)"):
        pack_bundle("dlka3d_pancreas", out, overwrite=True)
    assert (out / "configs" / "mine.json").read_text() == "{}"
    mine = tmp_path / "home"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert main(["pack", "--preset", "dlka3d_synapse", "--out", str(mine), "--overwrite"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was not made by the packer" in err
    assert (mine / "thesis.tex").read_text() == "years of work"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["pack", "--preset", "dlka3d_synapse", "--out", str(empty), "--overwrite"]) == 0
    assert (empty / "configs" / "inference.json").is_file()


def test_safe_spacingd_leaves_monai_labels_items_alone():
    image = MetaTensor(torch.rand(1, 8, 8, 6), affine=torch.diag(torch.tensor([1.0, 1.0, 3.0, 1.0])))
    image.meta["filename_or_obj"] = "ct.nii.gz"  # MONAI 1.6's Spacingd updates image_* items for NIfTI only
    data = {"image": image, "image_meta_dict": dict(image.meta), "image_path": "/data/ct.nii.gz"}
    spacing = SafeSpacingd(keys="image", pixdim=(2.0, 2.0, 2.0))
    out = spacing(data)
    expected = Spacingd(keys="image", pixdim=(2.0, 2.0, 2.0))({"image": image.clone()})["image"]
    assert out["image_path"] == "/data/ct.nii.gz" and torch.equal(out["image"].as_tensor(), expected.as_tensor())
    assert out["image"].shape == (1, 4, 4, 8)
    restored = spacing.inverse(out)
    assert restored["image"].shape == image.shape and restored["image_path"] == "/data/ct.nii.gz"
