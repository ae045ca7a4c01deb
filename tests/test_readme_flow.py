"""The README's flow as a newcomer types it, with the shipped configs as they are: train on the demo data
(only the epoch count lowered), then segment with dlka-segment and with configs/inference.json, and
evaluate with configs/evaluate.json, each without any other flag."""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def _run(cmd, cwd):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, encoding="utf-8", errors="replace", timeout=3000)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_train_then_segment_infer_and_evaluate_with_the_shipped_configs(tmp_path):
    bundle = ["--bundle_root", str(tmp_path)]
    _run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json"), *bundle, "--max_epochs", "1"], tmp_path)
    model = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert model["plan"]["preset"] == "dlka3d_synapse" and model["plan"]["class_names"]["1"] == "spleen"

    case = tmp_path / "data" / "demo" / "imagesTr" / "demo_006.nii.gz"
    exe = Path(sys.executable).with_name("dlka-segment")
    cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "dlka_monai.segment"]
    out = _run([*cli, "-i", str(case), "-o", str(tmp_path / "out.nii.gz"), "--model", str(tmp_path / "models" / "model.pt")], tmp_path)
    # the line names the file written and the demo model's classes
    line = next(line for line in out.splitlines() if line.startswith("demo_006.nii.gz ->"))
    assert f"-> {tmp_path / 'out.nii.gz'}:" in line
    assert "mL" in line or "nothing found" in line
    assert nib.load(tmp_path / "out.nii.gz").shape == nib.load(case).shape

    _run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "inference.json"), *bundle, "--input", str(case)], tmp_path)
    assert nib.load(tmp_path / "eval" / "demo_006_seg.nii.gz").shape == nib.load(case).shape

    configs = str([str(CONFIGS / "inference.json"), str(CONFIGS / "evaluate.json")])
    _run([sys.executable, "-m", "monai.bundle", "run", "--config_file", configs, *bundle], tmp_path)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text(encoding="utf-8"))
    assert "liver" in summary["per_class"] and "spleen" in summary["per_class"]
