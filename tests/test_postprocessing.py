# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""The largest-connected-component decision on validation, on constructed cases where it helps and where
it hurts, and its application from a plan."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from dlka_monai.evaluation import (
    case_metrics,
    decide_largest_component,
    keep_largest_component,
    largest_component_scores,
    largest_component_transform,
)
from dlka_monai.evaluation.metrics import METRICS
from dlka_monai.plan import make_plan, read_plan_file, write_plan_file
from dlka_monai.plan.postprocess import main


def _box(t, lo, hi, value):
    t[0, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = value


def _case():
    """24³: class 1 one 4³ organ, predicted with an 8-voxel false positive far away (the largest component
    helps); class 2 two separate 3³ organs (as a paired organ labelled as one class), predicted exactly (the
    largest component drops one and hurts)."""
    label = torch.zeros(1, 24, 24, 24, dtype=torch.long)
    _box(label, (2, 2, 2), (6, 6, 6), 1)
    _box(label, (12, 2, 2), (15, 5, 5), 2)
    _box(label, (12, 18, 18), (15, 21, 21), 2)
    pred = label.clone()
    _box(pred, (20, 20, 2), (22, 22, 4), 1)
    return pred, label


def test_decision_helps_and_hurts():
    pred, label = _case()
    scores = largest_component_scores([pred], [label], num_classes=3)
    # class 1: 2 * 64 / (72 + 64) before, 1 after; class 2: 1 before, 2 * 27 / (27 + 54) after
    assert scores[1] == (pytest.approx(128 / 136), pytest.approx(1.0))
    assert scores[2] == (pytest.approx(1.0), pytest.approx(54 / 81))
    assert decide_largest_component([pred], [label], num_classes=3) == [1]
    # an exact prediction of one component: no change, so no postprocessing (only a strict gain counts)
    assert decide_largest_component([label], [label], num_classes=3) == []


def test_decision_is_a_mean_over_cases():
    pred, label = _case()
    # a second case whose class-1 organ (a 4×4×5 box, 80 voxels) is predicted in two true pieces, 16 and 48
    # voxels: before 2 * 64 / (64 + 80), after (the 48 kept) 2 * 48 / (48 + 80). Over both cases the largest
    # component loses: (1 + 0.75) / 2 < (0.941 + 0.889) / 2, though it wins on the first
    label2 = torch.zeros(1, 24, 24, 24, dtype=torch.long)
    _box(label2, (2, 2, 0), (6, 6, 5), 1)
    pred2 = label2.clone()
    pred2[0, :, :, 1] = 0
    scores = largest_component_scores([pred, pred2], [label, label2], num_classes=3)
    assert scores[1] == (pytest.approx((128 / 136 + 128 / 144) / 2), pytest.approx((1.0 + 96 / 128) / 2))
    assert decide_largest_component([pred, pred2], [label, label2], 3) == []


def test_apply_the_plans_decision():
    plan = make_plan("dlka3d_synapse", {"out_channels": 3}, class_names={0: "bg", 1: "a", 2: "b"}, postprocessing={"largest_component": [1]})
    pred, label = _case()
    # the false positive of class 1 goes, both organs of class 2 stay
    assert torch.equal(torch.as_tensor(largest_component_transform(plan)(pred)), label)
    pred, label = _case()
    d = largest_component_transform(plan["postprocessing"], keys="pred")({"pred": pred})
    assert torch.equal(torch.as_tensor(d["pred"]), label)
    # keep_largest_component leaves its input alone (MONAI's transform writes into it)
    pred, label = _case()
    assert torch.equal(keep_largest_component(pred, [1]), label) and int((pred == 1).sum()) == 72
    # no decision: the label map as it is
    assert torch.equal(torch.as_tensor(largest_component_transform({"largest_component": []})(pred.clone())), pred)


def test_postprocess_cli(tmp_path, capsys):
    plan = make_plan("dlka3d_synapse", {"out_channels": 3}, class_names={0: "background", 1: "a", 2: "b"})
    write_plan_file(plan, tmp_path / "plan.json")
    entries = []
    for fold, case in enumerate(("img1", "img2")):
        pred, label = _case()
        out = tmp_path / "eval" / f"fold_{fold}"
        out.mkdir(parents=True)
        save = lambda t, p: nib.save(nib.Nifti1Image(t[0].numpy().astype(np.uint8), np.eye(4)), str(p))  # noqa: E731
        save(label, tmp_path / f"{case}_label.nii.gz")
        save(pred, out / f"{case}_seg.nii.gz")
        entries.append({"image": f"{case}.nii.gz", "label": f"{case}_label.nii.gz"})
        with open(out / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["case", "class", "name", *METRICS])
            writer.writeheader()
            writer.writerows({"case": case, "name": "", **r} for r in case_metrics(pred, label, 3, (1.0, 1.0, 1.0)))
    (tmp_path / "dataset.json").write_text(json.dumps({"training": entries, "modality": {"0": "CT"}}))
    args = ["--plan", str(tmp_path / "plan.json"), "--datalist", str(tmp_path / "dataset.json")]
    summary = tmp_path / "eval" / "cv_summary.json"
    assert main([*args, "--predictions", str(tmp_path / "eval" / "fold_*"), "--summary", str(summary)]) == 0
    printed = capsys.readouterr().out
    assert "a: Dice 0.9412 as predicted, 1.0000 largest component -> largest component" in printed
    assert read_plan_file(tmp_path / "plan.json")["postprocessing"] == {"largest_component": [1]}
    result = json.loads(summary.read_text())
    assert result["num_folds"] == 2 and result["folds"]["1"]["cases"] == ["img2"]
    assert result["mean_dice"] == pytest.approx((128 / 136 + 1.0) / 2)
    # no predictions: one line, exit 1
    assert main([*args, "--predictions", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: no *_seg.nii.gz prediction" in err
