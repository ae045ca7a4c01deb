"""Metrics in millimetres against hand-computed values, and configs/evaluate.json end to end."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from dlka_monai.evaluation import case_metrics, summarize

SPACING = (0.8, 0.8, 3.0)  # (x, y, z) mm


def _hand_made_case():
    gt = torch.zeros(50, 30, 10, dtype=torch.long)
    pred = torch.zeros_like(gt)
    gt[10:20, 10:20, 5] = 1  # class 1: one slice, predicted one slice (3 mm) higher: no overlap
    pred[10:20, 10:20, 6] = 1
    gt[30:40, 10:20, 2:4] = 2  # class 2: two slices, prediction shifted by one slice: half overlaps
    pred[30:40, 10:20, 3:5] = 2
    gt[2:5, 2:5, 1] = 4  # class 4: missed entirely; class 3: absent from both
    return pred, gt


def test_case_metrics_match_hand_computed_values():
    pred, gt = _hand_made_case()
    rows = {r["class"]: r for r in case_metrics(pred, gt, num_classes=5, spacing=SPACING)}
    # class 1: every surface voxel of either mask is exactly one slice (3 mm) from the other
    assert rows[1]["dice"] == 0 and rows[1]["jaccard"] == 0
    assert rows[1]["hd95_mm"] == pytest.approx(3.0) and rows[1]["asd_mm"] == pytest.approx(3.0)
    # class 2: 100 of 200 voxels overlap; half of all surface voxels lie on the other mask, half 3 mm away
    assert rows[2]["dice"] == pytest.approx(0.5) and rows[2]["jaccard"] == pytest.approx(1 / 3)
    assert rows[2]["hd95_mm"] == pytest.approx(3.0) and rows[2]["asd_mm"] == pytest.approx(1.5)
    # conventions for empty masks
    assert rows[3]["dice"] == 1 and math.isnan(rows[3]["hd95_mm"])
    assert rows[4]["dice"] == 0 and math.isnan(rows[4]["hd95_mm"]) and math.isnan(rows[4]["asd_mm"])


def test_spacing_is_used_per_axis():
    gt = torch.zeros(20, 20, 20, dtype=torch.long)
    pred = torch.zeros_like(gt)
    gt[5, 5:15, 5:15] = 1  # a plane across x, predicted one voxel further along x
    pred[6, 5:15, 5:15] = 1
    assert case_metrics(pred, gt, 2, spacing=SPACING)[0]["hd95_mm"] == pytest.approx(0.8)
    assert case_metrics(pred.permute(2, 1, 0), gt.permute(2, 1, 0), 2, spacing=SPACING)[0]["hd95_mm"] == pytest.approx(3.0)


def test_summary_excludes_and_counts_nan():
    pred, gt = _hand_made_case()
    rows = [{"case": "a", **r} for r in case_metrics(pred, gt, 5, SPACING)]
    summary = summarize(rows, {1: "one", 2: "two", 3: "three", 4: "four"}, subset=(1, 2))
    four = summary["per_class"]["four"]["hd95_mm"]
    assert four["n"] == 0 and four["n_nan"] == 1 and math.isnan(four["mean"])
    assert summary["synapse_8_organs"]["dice"]["mean"] == pytest.approx(0.25)
    assert summary["all_classes"]["hd95_mm"]["mean"] == pytest.approx(3.0)


def test_evaluate_config_writes_metrics_summary_and_pngs(tiny_bundle, demo_dataset, tmp_path):
    configs = str([str(tiny_bundle / "configs" / "inference.json"), str(tiny_bundle / "configs" / "evaluate.json")])
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs, "--bundle_root", str(tiny_bundle)]
    cmd += ["--datalist", str(demo_dataset / "dataset.json"), "--output_dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    cases = sorted({r["case"] for r in rows})
    assert cases == ["demo_006", "demo_007"] and len(rows) == 2 * 13
    assert {r["name"] for r in rows} >= {"spleen", "liver", "pancreas"}
    assert all(0 <= float(r["dice"]) <= 1 for r in rows)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["synapse_8_organs"]["classes"]) == {1, 2, 3, 4, 6, 7, 8, 11}
    assert "liver" in summary["per_class"]
    for case in cases:
        png = tmp_path / f"{case}.png"
        assert png.exists() and png.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.glob("*_seg.nii.gz")) == ["demo_006_seg.nii.gz", "demo_007_seg.nii.gz"]
    assert np.isfinite([float(r["dice"]) for r in rows]).all()
