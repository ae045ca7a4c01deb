"""Bad input gets a one-line error naming the file and the problem, from the one shared check
(dlka_monai.data.validation) behind the data layer, the command line and the bundle; odd but valid input
(a volume smaller than the patch, an empty label map) works."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from dlka_monai.data import InvalidInputError, check_image, load_datalist
from dlka_monai.networks import create_network
from dlka_monai.segment import main
from utils import STUDY_UID, TINY_TRAIN_ARGS, write_series

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "configs" / "train.json")
LOGGING = str(ROOT / "configs" / "logging.conf")
TINY = TINY_TRAIN_ARGS + ["--img_size", "[32,64,64]", "--pixdim", "[3.0,2.5,2.5]"]  # the demo's patch and spacing
# LPS-like: not RAS, anisotropic
AFFINE = np.array([[-0.8, 0, 0, 100.0], [0, -0.8, 0, 80.0], [0, 0, 3.0, -50.0], [0, 0, 0, 1]])


def _nifti(path: Path, array, affine=AFFINE) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(array), affine), path)
    return path


def _ct(shape=(30, 30, 12), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1000, shape).astype(np.int16)


def _with_pixdim(path: Path, value: float) -> Path:
    image = nib.Nifti1Image(_ct(), np.diag([0.8, 0.8, 3.0, 1.0]))
    image.header["pixdim"][3] = value
    nib.save(image, path)
    return path


def _bad_image(kind: str, folder: Path) -> tuple[Path, str, list[str]]:
    """(input path, expected message, extra CLI arguments) of one kind of bad image."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "missing":
        return folder / "nope.nii.gz", "matches no file", []
    if kind == "truncated":
        full = _nifti(folder / "full.nii.gz", _ct())
        (folder / "cut.nii.gz").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        return folder / "cut.nii.gz", "cannot be read as an image", []
    if kind == "not an image":
        (folder / "notes.nii.gz").write_text("not an image")
        return folder / "notes.nii.gz", "cannot be read as an image", []
    if kind == "2d":
        return _nifti(folder / "flat.nii.gz", np.zeros((20, 20), np.int16)), "single-channel 3D volume is expected", []
    if kind == "4d multi-channel":
        return _nifti(folder / "multi.nii.gz", np.zeros((8, 8, 8, 3), np.int16)), "single-channel 3D volume is expected", []
    if kind in ("nan", "inf"):
        array = _ct().astype(np.float32)
        array[3, 4, 5] = np.nan if kind == "nan" else np.inf
        return _nifti(folder / f"{kind}.nii.gz", array), "NaN or infinite intensities", []
    if kind in ("zero spacing", "negative spacing"):
        value = 0.0 if kind == "zero spacing" else -3.0
        return _with_pixdim(folder / "spacing.nii.gz", value), f"voxel spacing (0.8, 0.8, {value}) is not positive", []
    if kind == "several dicom series":
        image = sitk.GetImageFromArray(_ct((6, 20, 20)))
        image.SetSpacing((0.8, 0.8, 3.0))
        for series in ("101", "102"):
            write_series(image, folder / "dicom", f"{STUDY_UID}.{series}")
        return folder / "dicom", f"holds 2 series; choose one with series_uid (dlka-segment --series): {STUDY_UID}.101", []
    if kind == "unknown dicom series":
        path, _, _ = _bad_image("several dicom series", folder)
        return path, f"has no series {STUDY_UID}.999; it holds: {STUDY_UID}.101", ["--series", f"{STUDY_UID}.999"]
    raise KeyError(kind)


IMAGE_PROBLEMS = [
    "missing",
    "truncated",
    "not an image",
    "2d",
    "4d multi-channel",
    "nan",
    "inf",
    "zero spacing",
    "negative spacing",
    "several dicom series",
    "unknown dicom series",
]


@pytest.mark.parametrize("kind", IMAGE_PROBLEMS)
def test_cli_refuses_bad_image_in_one_line_and_writes_nothing(kind, tiny_bundle, tmp_path, capsys):
    path, message, extra = _bad_image(kind, tmp_path / "in")
    out = tmp_path / "out"
    assert main(["-i", str(path), "-o", str(out), "--model", str(tiny_bundle), *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and path.name in err, err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("kind", ["nan", "zero spacing", "several dicom series"])
def test_data_layer_refuses_the_same_images(kind, tmp_path):
    path, message, _ = _bad_image(kind, tmp_path)
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        check_image(path)


@pytest.mark.parametrize("content, problem", [("[1, 2]", "holds a JSON object, not a list"), ("{broken", "cannot be read as a JSON")])
def test_json_inputs_that_are_not_json_objects_are_refused_in_one_line(content, problem, tmp_path):
    """The datalist, the dataset json a plan is made from and a plan file: one reader, one kind of message."""
    from dlka_monai.plan import read_plan_file
    from dlka_monai.plan.fingerprint import datalist_fingerprint

    path = tmp_path / "input.json"
    path.write_text(content, encoding="utf-8")
    for read, what in ((lambda: load_datalist(datalist=path), "datalist file"), (lambda: datalist_fingerprint(path), "dataset json"),
                       (lambda: read_plan_file(path), "plan file")):  # fmt: skip
        with pytest.raises(InvalidInputError) as error:
            read()
        message = str(error.value)
        assert message.startswith(f"{path}: ") and problem in message and what in message and "\n" not in message, message


def test_a_series_picked_by_flag_is_segmented_in_its_own_space(tiny_bundle, tmp_path):
    folder, _, _ = _bad_image("several dicom series", tmp_path / "in")
    out = tmp_path / "out"
    assert main(["-i", str(folder), "-o", str(out), "--model", str(tiny_bundle), "--series", f"{STUDY_UID}.102"]) == 0
    seg = nib.load(out / "dicom_seg.nii.gz")
    assert seg.shape == (20, 20, 6)


def test_cli_refuses_an_output_path_that_is_not_writable(tiny_bundle, demo_dataset, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = blocker / "segmentations"  # a folder inside a file cannot be made, even by root
    image = demo_dataset / "imagesTr" / "demo_006.nii.gz"
    assert main(["-i", str(image), "-o", str(out), "--model", str(tiny_bundle)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{out}: output folder is not writable" in err


def test_cli_refuses_weights_that_do_not_fit_their_plan_naming_both(tiny_bundle, demo_dataset, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    plan = torch.load(bundle / "models" / "model.pt", weights_only=True)["plan"]
    torch.save({"model": create_network("dlka3d_pancreas").state_dict(), "plan": plan}, bundle / "models" / "model.pt")
    image = demo_dataset / "imagesTr" / "demo_006.nii.gz"
    assert main(["-i", str(image), "-o", str(tmp_path / "out"), "--model", str(bundle)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "holds the weights of dlka3d_pancreas, not of the configured dlka3d_synapse" in err and "model.pt" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_refuses_a_state_dict_without_plan_that_fits_no_preset_saying_what_it_holds(tiny_bundle, demo_dataset, tmp_path, capsys):
    bare = tmp_path / "bare.pt"
    torch.save(torch.load(tiny_bundle / "models" / "model.pt", weights_only=True)["model"], bare)
    image = demo_dataset / "imagesTr" / "demo_006.nii.gz"
    assert main(["-i", str(image), "-o", str(tmp_path / "out"), "--model", str(bare)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bare.pt: a state dict of" in err
    assert "an output head of 14 classes" in err and "fits no preset" in err


def test_a_checkpoint_with_a_pickled_callable_is_refused(tiny_bundle, demo_dataset, tmp_path, capsys):
    state = torch.load(tiny_bundle / "models" / "model.pt", weights_only=True)
    bad = tmp_path / "trojan.pt"
    torch.save({"model": state, "hook": os.system}, bad)
    image = demo_dataset / "imagesTr" / "demo_006.nii.gz"
    assert main(["-i", str(image), "-o", str(tmp_path / "out"), "--model", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "contains pickled Python objects (posix.system)" in err and "can run arbitrary code" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# label maps: checked when a training datalist is loaded, before any training


def _dataset(folder: Path, bad: str | None) -> Path:
    """A Decathlon-style dataset of four small cases; the last one has the ``bad`` label problem."""
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    entries = []
    for i in range(4):
        image = _ct(seed=i)
        label = np.zeros(image.shape, np.uint8)
        label[10:20, 10:20, 4:8] = 1 + i
        affine = AFFINE
        if i == 3 and bad == "values outside the classes":
            label[0, 0, 0] = 20
        if i == 3 and bad == "non-integer values":
            label = label.astype(np.float32)
            label[0, 0, 0] = 0.5
        if i == 3 and bad == "other shape":
            label = label[:, :, :10]
        if i == 3 and bad == "other affine":
            affine = AFFINE.copy()
            affine[2, 3] += 3.0  # one slice off
        _nifti(folder / "images" / f"case{i}.nii.gz", image)
        _nifti(folder / "labels" / f"case{i}.nii.gz", label, affine)
        entries.append({"image": f"images/case{i}.nii.gz", "label": f"labels/case{i}.nii.gz"})
    (folder / "dataset.json").write_text(json.dumps({"training": entries[:2] + entries[3:], "validation": entries[2:3]}))
    return folder / "labels" / "case3.nii.gz"


LABEL_PROBLEMS = {
    "values outside the classes": "label values 20 are outside the configured classes 0-13",
    "non-integer values": "label map has non-integer values (0.5)",
    "other shape": "shape 30x30x10 differs from its image",
    "other affine": "affine differs from its image",
}


@pytest.mark.parametrize("bad", list(LABEL_PROBLEMS))
def test_data_layer_refuses_bad_label_maps(bad, tmp_path):
    label = _dataset(tmp_path / "ds", bad)
    with pytest.raises(InvalidInputError) as err:
        load_datalist(tmp_path / "ds", label_values=range(14))
    message = str(err.value)
    assert message.startswith(str(label)) and LABEL_PROBLEMS[bad] in message and "\n" not in message


def test_good_dataset_passes_the_label_checks(tmp_path):
    _dataset(tmp_path / "ds", None)
    lists = load_datalist(tmp_path / "ds", label_values=range(14))
    assert len(lists["training"]) == 3 and len(lists["validation"]) == 1


def _train(args, cwd):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN, *args, "--logging_file", LOGGING]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, encoding="utf-8", errors="replace", timeout=900)


def test_training_bundle_stops_before_training_on_a_bad_label_map(tmp_path):
    label = _dataset(tmp_path / "ds", "values outside the classes")
    proc = _train(["--bundle_root", str(tmp_path), "--dataset_dir", str(tmp_path / "ds"), *TINY], tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"{label}: label values 20 are outside the configured classes 0-13" in output
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


@pytest.mark.slow
def test_small_volume_and_empty_label_map_train_and_segment(demo_dataset, tiny_bundle, tmp_path):
    """A volume smaller than the patch is padded, an all-background label map is trained on; both work."""
    ds = tmp_path / "ds"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    entries = []
    for name in ("demo_000", "demo_001", "demo_002"):
        for sub in ("imagesTr", "labelsTr"):
            shutil.copy(demo_dataset / sub / f"{name}.nii.gz", ds / sub / f"{name}.nii.gz")
        entries.append({"image": f"imagesTr/{name}.nii.gz", "label": f"labelsTr/{name}.nii.gz"})
    demo = nib.load(demo_dataset / "imagesTr" / "demo_003.nii.gz")
    small = demo.slicer[100:124, 80:100, 20:26]  # 30 x 25 x 18 mm: smaller than a patch on every axis
    nib.save(small, ds / "imagesTr" / "small.nii.gz")
    _nifti(ds / "labelsTr" / "small.nii.gz", np.zeros(small.shape, np.uint8), small.affine)
    entries.append({"image": "imagesTr/small.nii.gz", "label": "labelsTr/small.nii.gz"})
    (ds / "dataset.json").write_text(json.dumps({"training": entries[1:], "validation": [entries[3], entries[0]]}))

    proc = _train(["--bundle_root", str(tmp_path), "--dataset_dir", str(ds), "--max_epochs", "1", "--epoch_length", "2", "--val_interval", "1", *TINY], tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ckpt = torch.load(tmp_path / "models" / "checkpoint_epoch=1.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())

    out = tmp_path / "seg"
    assert main(["-i", str(ds / "imagesTr" / "small.nii.gz"), "-o", str(out), "--model", str(tiny_bundle)]) == 0
    seg = nib.load(out / "small_seg.nii.gz")
    assert seg.shape == small.shape and np.allclose(seg.affine, small.affine, atol=1e-4)
