"""configs/inference.json and the dlka-segment command line, on demo volumes (non-RAS, anisotropic)."""

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dlka_monai.segment import main
from utils import STUDY_UID, assert_same_space, assert_same_space_values, save_tiny_model, write_series

ROOT = Path(__file__).resolve().parents[1]


def test_inference_config_writes_label_maps_in_the_input_space(tiny_bundle, demo_dataset, tmp_path):
    image = demo_dataset / "imagesTr" / "demo_006.nii.gz"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(tiny_bundle / "configs" / "inference.json")]
    cmd += ["--bundle_root", str(tiny_bundle), "--input", str(image), "--output_dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_same_space(tmp_path / "demo_006_seg.nii.gz", image)


def test_cli_segments_a_file_and_a_folder(tiny_bundle, demo_dataset, tmp_path, capsys):
    image = demo_dataset / "imagesTr" / "demo_007.nii.gz"
    out_file = tmp_path / "one" / "case_seg.nii.gz"
    assert main(["-i", str(image), "-o", str(out_file), "--model", str(tiny_bundle), "--device", "cpu", "--tta"]) == 0
    assert_same_space(out_file, image)
    out = capsys.readouterr().out
    assert "demo_007.nii.gz" in out and " mL" in out

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("demo_006.nii.gz", "demo_007.nii.gz"):
        shutil.copy(demo_dataset / "imagesTr" / name, folder / name)
    assert main(["-i", str(folder), "-o", str(tmp_path / "out"), "--model", str(tiny_bundle)]) == 0
    for name in ("demo_006", "demo_007"):
        assert_same_space(tmp_path / "out" / f"{name}_seg.nii.gz", folder / f"{name}.nii.gz")
    assert not list((tmp_path / "out").glob(".dlka-segment-*"))  # staging cleaned up


def _write_bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    folder.mkdir()
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    cases = {}
    nib.save(nib.Nifti1Image(np.zeros((20, 20), np.int16), affine), folder / "flat.nii.gz")
    cases["2d"] = (folder / "flat.nii.gz", "3D volume is expected")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.int16), affine), folder / "multi.nii.gz")
    cases["4d"] = (folder / "multi.nii.gz", "3D volume is expected")
    full = folder / "full.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).integers(-1000, 1000, (30, 30, 20)).astype(np.int16), affine), full)
    (folder / "cut.nii.gz").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    cases["truncated"] = (folder / "cut.nii.gz", "cannot be read")
    (folder / "notes.nii.gz").write_text("not an image")
    cases["not an image"] = (folder / "notes.nii.gz", "cannot be read")
    cases["missing"] = (folder / "nope.nii.gz", "matches no file")
    return cases


@pytest.mark.parametrize("case", ["2d", "4d", "truncated", "not an image", "missing"])
def test_cli_bad_input_is_one_line_error_and_nothing_written(tiny_bundle, tmp_path, case, capsys):
    path, message = _write_bad_inputs(tmp_path / "bad")[case]
    out = tmp_path / "out"
    assert main(["-i", str(path), "-o", str(out), "--model", str(tiny_bundle)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and path.name in err
    assert not out.exists() or not any(out.iterdir())


def test_cli_console_script_exit_code(tiny_bundle, tmp_path):
    exe = Path(sys.executable).with_name("dlka-segment")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dlka_monai.segment"]
    proc = subprocess.run([*cmd, "-i", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "o")], capture_output=True, encoding="utf-8", errors="replace")
    assert proc.returncode == 1 and "dlka-segment: error:" in proc.stderr


def test_cli_segments_a_dicom_series(tiny_bundle, demo_dataset, tmp_path):
    import SimpleITK as sitk

    image = sitk.ReadImage(str(demo_dataset / "imagesTr" / "demo_006.nii.gz"))
    write_series(image, tmp_path / "series", f"{STUDY_UID}.600")
    sitk.WriteImage(image, str(tmp_path / "reference.nii.gz"))  # the same volume, as NIfTI
    assert main(["-i", str(tmp_path / "series"), "-o", str(tmp_path / "out"), "--model", str(tiny_bundle)]) == 0
    assert_same_space(tmp_path / "out" / "series_seg.nii.gz", tmp_path / "reference.nii.gz")


def test_cli_names_the_classes_of_the_models_plan(demo_dataset, tmp_path, capsys):
    model = tmp_path / "pancreas.pt"
    save_tiny_model(model, "dlka3d_pancreas", img_size=[32, 32, 32], feature_size=4, depths=[1, 1, 1, 1])
    image = demo_dataset / "imagesTr" / "demo_006.nii.gz"
    assert main(["-i", str(image), "-o", str(tmp_path / "seg.nii.gz"), "--model", str(model)]) == 0
    line = capsys.readouterr().out.splitlines()[-2]
    assert line.startswith(f"demo_006.nii.gz -> {tmp_path / 'seg.nii.gz'}: ")
    assert "pancreas" in line and "spleen" not in line and ".dlka-segment-" not in line
    assert_same_space_values(tmp_path / "seg.nii.gz", image, {0, 1})


def test_cli_values_are_data_never_code(tiny_bundle, demo_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = demo_dataset / "imagesTr" / "demo_006.nii.gz"
    payload = '$__import__("pathlib").Path("PWNED").touch()'
    assert main(["-i", str(image), "-o", str(tmp_path / "out"), "--model", str(tiny_bundle), "--series", payload]) == 0
    assert not (tmp_path / "PWNED").exists() and (tmp_path / "out" / "demo_006_seg.nii.gz").is_file()


def test_cli_ensemble_of_folds_averages_the_models(demo_dataset, tmp_path):
    """A pattern of model files is a fold ensemble of two different models: its label map is neither
    model's (code that loads one fold fails), and where both models agree it agrees with them (the
    argmax of the mean of two probabilities whose argmaxes agree)."""
    for fold in (0, 1):
        save_tiny_model(tmp_path / "models" / f"fold_{fold}" / "model.pt", seed=fold)
    image = demo_dataset / "imagesTr" / "demo_007.nii.gz"
    pattern = str(tmp_path / "models" / "fold_*" / "model.pt")
    assert main(["-i", str(image), "-o", str(tmp_path / "ens.nii.gz"), "--model", pattern]) == 0
    for fold in (0, 1):
        assert main(["-i", str(image), "-o", str(tmp_path / f"fold_{fold}.nii.gz"), "--model", str(tmp_path / "models" / f"fold_{fold}" / "model.pt")]) == 0
    assert_same_space(tmp_path / "ens.nii.gz", image)
    ens, one, two = (np.asarray(nib.load(tmp_path / f"{n}.nii.gz").dataobj) for n in ("ens", "fold_0", "fold_1"))
    assert len(np.unique(one)) > 2 and len(np.unique(two)) > 2  # real label maps, not all background
    assert (one != two).mean() > 0.01  # two different models
    # the mean of the two differs from each: more than float rounding at ties could flip
    tolerance = max(2, ens.size // 10**6)
    assert (ens != one).sum() > 10 * tolerance and (ens != two).sum() > 10 * tolerance
    agree = one == two
    assert (ens[agree] != one[agree]).sum() <= tolerance
