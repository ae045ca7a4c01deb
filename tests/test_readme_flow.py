"""The README's flow as a newcomer types it, with the shipped configs as they are: train on the demo data
(the ``demo_model`` fixture: only the epoch count lowered, to the fewest that learn), then segment a
held-out case with dlka-segment and with configs/inference.json, and evaluate the held-out cases with
configs/evaluate.json, each without any other flag; the segmentations must find the organs."""

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from utils import CONFIGS, dice, run

LIVER = 6
# after DEMO_EPOCHS the demo model segments the held-out liver at Dice ~0.67 (0.93 after the full 100
# epochs); an empty or random segmentation scores ~0
LIVER_DICE_FLOOR = 0.5
ORGANS_DICE_FLOOR = 0.05  # mean over the 8 Synapse organs: ~0.10 after DEMO_EPOCHS, 0.8 after 100


def _run(cmd, cwd):
    proc = run(cmd, cwd=cwd, timeout=3000)
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_train_then_segment_infer_and_evaluate_with_the_shipped_configs(demo_model, tmp_path):
    root = demo_model.bundle_root
    bundle = ["--bundle_root", str(root)]
    model = torch.load(demo_model.model, weights_only=True)
    assert model["plan"]["preset"] == "dlka3d_synapse" and model["plan"]["class_names"]["1"] == "spleen"
    assert "dice" in (root / "train_output.txt").read_text(encoding="utf-8")  # validation ran

    datalist = json.loads((demo_model.data_dir / "dataset.json").read_text(encoding="utf-8"))
    held_out = sorted(Path(item["image"]).name for item in datalist["test"])
    assert "demo_006.nii.gz" in held_out and "demo_006.nii.gz" not in {Path(i["image"]).name for i in datalist["training"]}
    case = demo_model.data_dir / "imagesTr" / "demo_006.nii.gz"
    truth = np.asarray(nib.load(demo_model.data_dir / "labelsTr" / "demo_006.nii.gz").dataobj)

    exe = Path(sys.executable).with_name("dlka-segment")
    cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "dlka_monai.segment"]
    out = _run([*cli, "-i", str(case), "-o", str(tmp_path / "out.nii.gz"), "--model", str(demo_model.model)], tmp_path)
    # the line names the file written and the organs found, liver among them
    line = next(line for line in out.splitlines() if line.startswith("demo_006.nii.gz ->"))
    assert f"-> {tmp_path / 'out.nii.gz'}:" in line and "liver" in line and "mL" in line, line
    # the precision it ran in, beside the one the model was trained in (from the model's plan)
    assert "dlka-segment: precision " in out and "; the model was trained in fp32" in out, out
    seg = nib.load(tmp_path / "out.nii.gz")
    assert seg.shape == truth.shape
    assert dice(seg.dataobj, truth, LIVER) > LIVER_DICE_FLOOR

    _run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "inference.json"), *bundle, "--input", str(case)], tmp_path)
    seg = nib.load(root / "eval" / "demo_006_seg.nii.gz")
    assert seg.shape == truth.shape and dice(seg.dataobj, truth, LIVER) > LIVER_DICE_FLOOR

    configs = str([str(CONFIGS / "inference.json"), str(CONFIGS / "evaluate.json")])
    _run([sys.executable, "-m", "monai.bundle", "run", "--config_file", configs, *bundle], tmp_path)
    summary = json.loads((root / "eval" / "summary.json").read_text(encoding="utf-8"))
    assert summary["per_class"]["liver"]["dice"]["n"] == len(held_out)
    assert summary["per_class"]["liver"]["dice"]["mean"] > LIVER_DICE_FLOOR, summary["per_class"]["liver"]
    assert summary["synapse_8_organs"]["dice"]["mean"] > ORGANS_DICE_FLOOR, summary["synapse_8_organs"]
