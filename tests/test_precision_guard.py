"""Accuracy guard of bf16 inference: on a demo model trained by the shipped configs/train.json and the
demo's held-out test cases, the shipped inference + evaluation configs in bf16 agree with fp32.

The model is the session's ``demo_model`` (the shipped train.json for a few epochs: the shortest training
whose segmentation is not trivial), not the README's 100 epochs."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.bundle import ConfigWorkflow

from utils import CONFIGS


def _infer_and_evaluate(root: Path, demo_dir: Path, precision: str, out: Path) -> dict:
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "inference.json"), str(CONFIGS / "evaluate.json")],
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type="infer",
        bundle_root=str(root),
        demo_dir=str(demo_dir),
        output_dir=str(out),
        precision=precision,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))


def test_bf16_labels_and_dice_match_fp32_on_held_out_demo_cases(demo_model, demo_dataset, tmp_path):
    results = {p: _infer_and_evaluate(demo_model.bundle_root, demo_dataset, p, tmp_path / p) for p in ("fp32", "bf16")}
    cases = [Path(e["image"]).name.replace(".nii.gz", "_seg.nii.gz") for e in json.loads((demo_dataset / "dataset.json").read_text())["test"]]
    assert len(cases) >= 2
    same = total = 0
    for case in cases:
        fp32, bf16 = (np.asarray(nib.load(tmp_path / p / case).dataobj) for p in ("fp32", "bf16"))
        assert fp32.shape == bf16.shape
        same += int((fp32 == bf16).sum())
        total += fp32.size
        # a real segmentation to compare: several organs found, not all background
        assert len(np.unique(fp32)) >= 3, np.unique(fp32)
    agreement = same / total
    assert agreement >= 0.999, f"bf16 labels agree with fp32 on {agreement:.5f} of the voxels"

    dice = {p: r["synapse_8_organs"]["dice"]["mean"] for p, r in results.items()}
    print(f"bf16 vs fp32: label agreement {agreement:.5f}, 8-organ Dice {dice}")
    assert dice["fp32"] > 0.05, dice  # the model segments something
    assert abs(dice["bf16"] - dice["fp32"]) <= 0.005, dice
