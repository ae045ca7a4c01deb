"""A model file and the file system are untrusted input, and no command destroys what it did not write
(issue 24): each hole is reproduced and shown closed (nothing run, input bytes unchanged, user files kept,
one line on stderr and a non-zero exit)."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from utils import save_tiny_model
from dlka_monai.bundle import MARKER, pack_bundle
from dlka_monai.bundle import main as pack_main
from dlka_monai.data import InvalidInputError
from dlka_monai.networks import list_networks
from dlka_monai.plan import check_plan, make_plan, preset_plan, read_plan_file
from dlka_monai.segment import main as segment_main
from dlka_monai.weights import read_model

ROOT = Path(__file__).resolve().parents[1]
AFFINE = np.diag([0.8, 0.8, 3.0, 1.0])


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# 6. the plan schema: every violation is one line naming the field and the file


def _set(plan, path, value):
    *parents, last = path
    for key in parents:
        plan = plan[key]
    if value is _DELETE:
        del plan[last]
    else:
        plan[last] = value


_DELETE = object()
MALFORMED = [
    (("axcodes",), "XYZ", "axcodes"),
    (("axcodes",), "SSA", "axcodes"),
    (("axcodes",), "RA", "axcodes"),
    (("axcodes",), 3, "axcodes"),
    (("pixdim",), [0.0, 1.0, 1.0], "pixdim[0]"),
    (("pixdim",), [-3.0, 1.0, 1.0], "pixdim[0]"),
    (("pixdim",), [1.0, math.nan, 1.0], "pixdim[1]"),
    (("pixdim",), [1.0, 1.0, 1e30], "pixdim[2]"),
    (("pixdim",), [1.0, 1.0], "pixdim"),
    (("pixdim",), "1mm", "pixdim"),
    (("pixdim",), [True, 1.0, 1.0], "pixdim[0]"),
    (("normalization",), "window", "normalization"),
    (("normalization", "scheme"), "gamma", "normalization.scheme"),
    (("normalization",), {"scheme": "window", "a_min": -175.0, "a_max": -175.0}, "normalization.a_min"),
    (("normalization",), {"scheme": "window", "a_min": 300.0, "a_max": 250.0}, "normalization.a_min"),
    (("normalization",), {"scheme": "window", "a_min": "low", "a_max": 250.0}, "normalization.a_min"),
    (("normalization",), {"scheme": "window", "a_min": -175.0, "a_max": math.inf}, "normalization.a_max"),
    (("normalization",), {"scheme": "window", "a_min": -125.0, "a_max": 275.0, "b_min": 1.0, "b_max": -1.0}, "normalization.b_min"),
    (("normalization", "clip"), [326.0, -958.0], "normalization.clip[0]"),
    (("normalization",), {"scheme": "ct", "clip": [-100.0, 200.0], "mean": 40.0, "std": math.nan}, "normalization.std"),
    (("normalization",), {"scheme": "ct", "clip": [-100.0, 200.0], "mean": 40.0, "std": 0.0}, "normalization.std"),
    (("normalization",), {"scheme": "ct", "clip": [-100.0], "mean": 40.0, "std": 9.0}, "normalization.clip"),
    (("normalization",), {"scheme": "minmax", "b_min": 0.0}, "normalization.b_max"),
    (("network", "in_channels"), 0, "network.in_channels"),
    (("network", "img_size"), [64, 128], "network.img_size"),
    (("network", "img_size"), [64, -128, 128], "network.img_size[1]"),
    (("network", "feature_size"), 4.5, "network.feature_size"),
    (("network", "depths"), "3333", "network.depths"),
    (("network", "dropout"), 2.0, "network.dropout"),
    (("network", "deep_supervision"), "yes", "network.deep_supervision"),
    (("network", "hidden_hook"), 1, "network"),
    (("network",), [], "network"),
    (("format_version",), "1", "format_version"),
    (("format_version",), 0, "format_version"),
    (("format",), "nnunet", "format"),
    (("spatial_dims",), 2, "spatial_dims"),
    (("modality",), "$print(1)", "modality"),
    (("class_names", "1"), "", "class_names.1"),
    (("class_names", "1"), "a\nb", "class_names.1"),
    (("class_names", "1"), 5, "class_names.1"),
    (("postprocessing",), {"largest_component": [99]}, "postprocessing.largest_component[0]"),
]


@pytest.mark.parametrize("path, value, field", MALFORMED, ids=[f"{'.'.join(p)}={v!r}" for p, v, _ in MALFORMED])
def test_a_malformed_plan_is_one_line_naming_the_field_and_file(path, value, field, tmp_path):
    plan = preset_plan("dlka3d_synapse")
    _set(plan, path, value)
    with pytest.raises(InvalidInputError) as err:
        check_plan(plan, "model.pt")
    message = str(err.value)
    assert message.startswith(f"model.pt: plan entry {field}: ") and "\n" not in message, message
    # the same through a plan.json (NaN and inf as JSON allows them: Python's json writes them)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    with pytest.raises(InvalidInputError, match=f"^{plan_file}: plan entry "):
        read_plan_file(plan_file)


@pytest.mark.parametrize("problem, value", [("newer format", {"format_version": 99}), ("missing class", None), ("unknown preset", {"preset": "unet"})])
def test_other_plan_problems_are_one_line(problem, value):
    plan = preset_plan("dlka3d_synapse")
    if value is None:
        del plan["class_names"]["13"]
    else:
        plan.update(value)
    with pytest.raises(InvalidInputError) as err:
        check_plan(plan, "p.json")
    assert str(err.value).startswith("p.json: ") and "\n" not in str(err.value)


def test_the_shipped_presets_plans_pass():
    """-1 along an axis (the 2D preset keeps the slice spacing) and null axcodes/pixdim (photographs)."""
    for name in list_networks():
        assert check_plan(preset_plan(name))["preset"] == name
    assert preset_plan("dlka2d_synapse")["pixdim"][0] == -1
    assert preset_plan("dlka2d_skin")["axcodes"] is None and preset_plan("dlka2d_skin")["pixdim"] is None
    ct = {"scheme": "ct", "clip": [-1000.0, 1500.0], "mean": 50.0, "std": 200.0}
    assert check_plan(make_plan("dlka3d_pancreas", normalization=ct, pixdim=[2.5, 0.7, 0.7]))


@pytest.mark.parametrize("args", [{"img_size": [33, 64, 64]}, {"norm_name": "nonsense"}], ids=["img_size", "norm_name"])
def test_network_arguments_that_build_no_network_are_one_line(args, tmp_path):
    model = tmp_path / "model.pt"
    save_tiny_model(model)
    ckpt = torch.load(model, weights_only=True)
    ckpt["plan"]["network"].update(args)
    torch.save(ckpt, model)
    with pytest.raises(InvalidInputError) as err:
        read_model(model)
    message = str(err.value)
    assert message.startswith(f"{model}: plan of dlka3d_synapse: its network arguments build no network: ") and "\n" not in message


def test_segment_refuses_a_model_with_a_nan_std_in_one_line(demo_dataset, tmp_path, capsys):
    model = tmp_path / "model.pt"
    save_tiny_model(model)
    ckpt = torch.load(model, weights_only=True)
    ckpt["plan"]["normalization"] = {"scheme": "ct", "clip": [-100.0, 200.0], "mean": 40.0, "std": math.nan}
    torch.save(ckpt, model)
    image = demo_dataset / "imagesTr" / "demo_006.nii.gz"
    assert segment_main(["-i", str(image), "-o", str(tmp_path / "out"), "--model", str(model)]) == 1
    assert _one_line(capsys) == f"dlka-segment: error: {model}: plan entry normalization.std: must be a finite number, got nan."
    assert not (tmp_path / "out").exists()


# 1. text from a model is data: a class name never runs, resolves or opens a file in a packed bundle

ATTACKS = [
    "$__import__('pathlib').Path('PWNED').touch()",
    "@network_def",
    "%/etc/passwd",
    "liver#2",
    "@#x",
]


@pytest.mark.parametrize("name", ATTACKS)
def test_pack_refuses_a_model_whose_class_names_are_config_syntax(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "evil.pt"
    save_tiny_model(model)
    ckpt = torch.load(model, weights_only=True)
    ckpt["plan"]["class_names"]["1"] = name
    torch.save(ckpt, model)
    assert pack_main(["pack", "--checkpoint", str(model), "--out", str(tmp_path / "b")]) == 1
    err = _one_line(capsys)
    assert err.startswith(f"bundle: error: {model}: plan entry class_names.1: ") and "a plan's text is data" in err
    assert not (tmp_path / "b").exists() and not list(tmp_path.rglob(MARKER)) and not (tmp_path / "PWNED").exists()


def test_odd_class_names_reach_channel_def_unchanged(tmp_path, monkeypatch):
    """Names that hold $, @ and % inside (not first) and :: are plain text to MONAI's parser: ConfigParser
    and ConfigWorkflow.channel_def (what MONAI Label reads) return them as they are."""
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "odd.pt"
    save_tiny_model(model)
    ckpt = torch.load(model, weights_only=True)
    odd = {"1": "100% liver", "2": "a@b.c", "3": "costs $5", "4": "left::right", "5": "quotes ' \" é"}
    ckpt["plan"]["class_names"].update(odd)
    torch.save(ckpt, model)
    out, _ = pack_bundle(None, tmp_path / "b", model)
    parser = ConfigParser()
    parser.read_meta(str(out / "configs" / "metadata.json"))
    channel_def = parser.get_parsed_content("_meta_#network_data_format#outputs#pred#channel_def")
    workflow = ConfigWorkflow(
        config_file=str(out / "configs" / "inference.json"), meta_file=str(out / "configs" / "metadata.json"),
        workflow_type="infer", bundle_root=str(out),
    )
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # initialize sets it for `monai.bundle run`
    workflow.initialize()
    assert workflow.channel_def == channel_def == ckpt["plan"]["class_names"]
    assert all(channel_def[k] == v for k, v in odd.items()) and not (tmp_path / "PWNED").exists()


def test_without_the_check_the_parser_would_run_a_class_name(tmp_path, monkeypatch):
    """The hole itself: MONAI evaluates a "$" channel name of a metadata.json (so the packer must never
    write one)."""
    monkeypatch.chdir(tmp_path)
    meta = {"network_data_format": {"outputs": {"pred": {"channel_def": {"0": ATTACKS[0]}}}}}
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    parser = ConfigParser()
    parser.read_meta(str(tmp_path / "metadata.json"))
    parser.get_parsed_content("_meta_#network_data_format#outputs#pred#channel_def")
    assert (tmp_path / "PWNED").exists()


# 2, 3. outputs never replace inputs or each other


def _image(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(-1000, 1000, (30, 30, 12)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    model = tmp_path_factory.mktemp("model") / "model.pt"
    save_tiny_model(model)
    return model


def _refused(argv, capsys, *message_parts) -> str:
    assert segment_main(argv) == 1
    err = _one_line(capsys)
    assert err.startswith("dlka-segment: error: ") and all(p in err for p in message_parts), err
    return err


def test_output_equal_to_input_is_refused_and_the_input_kept(tiny_model, tmp_path, capsys):
    scan = _image(tmp_path / "a.nii.gz")
    before = scan.read_bytes()
    _refused(["-i", str(scan), "-o", str(scan), "--model", str(tiny_model)], capsys, "would be written over the input")
    _refused(["-i", str(scan), "-o", str(scan), "--model", str(tiny_model), "--overwrite"], capsys, "over the input")
    assert scan.read_bytes() == before


def test_an_input_folder_as_output_folder_keeps_its_files(tiny_model, tmp_path, capsys):
    x, x_seg = _image(tmp_path / "d" / "x.nii.gz", 0), _image(tmp_path / "d" / "x_seg.nii.gz", 1)
    before = x_seg.read_bytes()
    d = str(tmp_path / "d")
    _refused(["-i", d, "-o", d, "--model", str(tiny_model), "--overwrite"], capsys, f"over the input {x_seg}", str(x))
    assert x_seg.read_bytes() == before and sorted(p.name for p in (tmp_path / "d").iterdir()) == ["x.nii.gz", "x_seg.nii.gz"]


def test_two_inputs_of_one_output_name_are_refused_naming_both(tiny_model, tmp_path, capsys):
    a, b = _image(tmp_path / "a" / "a.nii.gz", 0), _image(tmp_path / "b" / "a.nii.gz", 1)
    out = tmp_path / "out"
    _refused(["-i", str(tmp_path / "*" / "a.nii.gz"), "-o", str(out), "--model", str(tiny_model)], capsys, str(a), str(b), "a_seg.nii.gz")
    gz, plain = _image(tmp_path / "c" / "a.nii.gz", 0), tmp_path / "c" / "a.nii"
    nib.save(nib.load(gz), plain)
    _refused(["-i", str(tmp_path / "c"), "-o", str(out), "--model", str(tiny_model)], capsys, str(gz), str(plain))
    assert not out.exists()


def test_paths_are_literal_and_outputs_are_replaced_only_with_overwrite(tiny_model, tmp_path, capsys):
    """#, [ ] in -i, -o and --model are plain characters; -o NAME.nii writes uncompressed NIfTI; a re-run
    needs --overwrite (and says so)."""
    models = tmp_path / "mdl#1"
    models.mkdir()
    shutil.copy(tiny_model, models / "run[1].pt")
    (models / "run1.pt").write_text("not a model: a glob of run[1].pt would pick this file")
    scan = _image(tmp_path / "in#1" / "scan.nii.gz")
    before = scan.read_bytes()
    out = tmp_path / "out#1" / "seg.nii"
    argv = ["-i", str(scan), "-o", str(out), "--model", str(models / "run[1].pt")]
    assert segment_main(argv) == 0
    capsys.readouterr()
    raw = out.read_bytes()
    assert raw[:2] != b"\x1f\x8b" and raw[344:348] == b"n+1\x00"  # uncompressed NIfTI-1
    seg = nib.load(out)
    assert seg.shape == (30, 30, 12) and seg.get_data_dtype() == np.uint8
    assert not list(tmp_path.rglob("*::*")) and scan.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["seg.nii"]

    out.write_bytes(b"an earlier result")
    _refused(argv, capsys, f"{out} exist(s)", "pass --overwrite", "re-run")
    assert out.read_bytes() == b"an earlier result"
    assert segment_main([*argv, "--overwrite"]) == 0
    assert out.read_bytes() == raw


def test_bad_files_are_one_line(tiny_model, tmp_path, capsys):
    (tmp_path / "loop.nii.gz").symlink_to(tmp_path / "loop.nii.gz")
    _refused(["-i", str(tmp_path / "loop.nii.gz"), "-o", str(tmp_path / "o"), "--model", str(tiny_model)], capsys, "loop")
    image = nib.Nifti1Image(np.zeros((30, 30, 12), np.int16), AFFINE)
    image.header["pixdim"][3] = np.nan
    nib.save(image, tmp_path / "nan.nii.gz")
    _refused(["-i", str(tmp_path / "nan.nii.gz"), "-o", str(tmp_path / "o"), "--model", str(tiny_model)], capsys, "spacing (0.8, 0.8, nan) is not positive and finite")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_a_constant_image_is_segmented_not_a_traceback(tiny_model, tmp_path):
    """Below the window's floor everywhere: no body to crop to, so the whole image is used."""
    nib.save(nib.Nifti1Image(np.full((30, 30, 12), -1000, np.int16), AFFINE), tmp_path / "air.nii.gz")
    assert segment_main(["-i", str(tmp_path / "air.nii.gz"), "-o", str(tmp_path / "o"), "--model", str(tiny_model)]) == 0
    assert nib.load(tmp_path / "o" / "air_seg.nii.gz").shape == (30, 30, 12)


# 5. pack --overwrite replaces exactly what a pack wrote


def test_overwrite_keeps_user_files_and_refuses_naming_them(tmp_path, capsys):
    out, _ = pack_bundle("dlka3d_pancreas", tmp_path / "b")
    listed = json.loads((out / MARKER).read_text())["files"]
    assert "configs/inference.json" in listed and "LICENSE" in listed
    (out / "my_notes.txt").write_text("notes")
    (out / "models").mkdir()
    (out / "models" / "my_finetuned.pt").write_bytes(b"weights")
    assert pack_main(["pack", "--preset", "dlka3d_pancreas", "--out", str(out), "--overwrite"]) == 1
    err = _one_line(capsys)
    assert "models/my_finetuned.pt" in err and "my_notes.txt" in err and "not replaced" in err
    assert (out / "my_notes.txt").read_text() == "notes" and (out / "models" / "my_finetuned.pt").read_bytes() == b"weights"


def test_overwrite_fills_a_foreign_empty_folder_in_place(tmp_path):
    folder = tmp_path / "theirs"
    folder.mkdir()
    os.chmod(folder, 0o2770)
    if os.geteuid() == 0:
        os.chown(folder, 12345, 12345)
    before = folder.stat()
    pack_bundle("dlka3d_pancreas", folder, overwrite=True)
    after = folder.stat()
    assert (after.st_ino, after.st_uid, after.st_gid, after.st_mode) == (before.st_ino, before.st_uid, before.st_gid, before.st_mode)
    assert (folder / "configs" / "inference.json").is_file()
    pack_bundle("dlka3d_pancreas", folder, overwrite=True)  # the packer's own folder, again in place
    assert folder.stat().st_ino == before.st_ino and folder.stat().st_mode == before.st_mode


def test_a_failed_pack_leaves_the_old_bundle_intact(tmp_path, capsys):
    source = tmp_path / "src"
    shutil.copytree(ROOT / "configs", source / "configs")
    (source / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "README.md", source / "docs" / "README.md")
    shutil.copy(ROOT / "LICENSE", source / "LICENSE")
    out, _ = pack_bundle("dlka3d_pancreas", tmp_path / "b", source=source)
    old = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (source / "LICENSE").unlink()
    argv = ["pack", "--preset", "dlka3d_pancreas", "--out", str(out), "--overwrite", "--source", str(source)]
    assert pack_main(argv) == 1
    assert "LICENSE" in _one_line(capsys)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "src"]  # no half-built folder left


# 6. the training entry points' plan and datalist arguments


@pytest.mark.parametrize("argument, message", [("--plan_file", "no such plan file."), ("--datalist", "no such datalist file.")])
def test_training_bundle_reports_a_missing_plan_or_datalist_in_one_line(argument, message, tmp_path):
    missing = tmp_path / "missing.json"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(ROOT / "configs" / "train.json")]
    cmd += ["--bundle_root", str(tmp_path), argument, str(missing), "--logging_file", str(ROOT / "configs" / "logging.conf")]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == f"dlka_monai: error: {missing}: {message}"


@pytest.mark.monailabel
def test_monailabel_takes_a_packed_bundles_class_names_as_data(tmp_path, monkeypatch):
    """MONAI Label's BundleInferTask (0.8.5) on a packed bundle whose model has odd but valid class names."""
    pytest.importorskip("monailabel")
    from monailabel.tasks.infer.bundle import BundleInferTask

    monkeypatch.chdir(tmp_path)
    model = tmp_path / "odd.pt"
    save_tiny_model(model)
    ckpt = torch.load(model, weights_only=True)
    ckpt["plan"]["class_names"].update({"1": "100% liver", "2": "a@b.c", "3": "costs $5"})
    torch.save(ckpt, model)
    out, _ = pack_bundle(None, tmp_path / "dlka3d_synapse", model)
    task = BundleInferTask(str(out), {})
    assert task.labels["100% liver"] == 1 and task.labels["a@b.c"] == 2 and task.labels["costs $5"] == 3
    assert not (tmp_path / "PWNED").exists()
