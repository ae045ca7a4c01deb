"""Metrics in millimetres against hand-computed values, and configs/evaluate.json end to end."""

import csv
import json
import math
import re
import subprocess
import sys
from html import unescape

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from scipy import ndimage

from dlka_monai.data import InvalidInputError
from dlka_monai.evaluation import MetricsWriter, case_metrics, hd95_voxels, summarize

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


@pytest.mark.slow
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
    # report.html: one Dice table row and one embedded overlay per case, the model's plan (tests/test_report.py)
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert sorted(re.findall(r'<tr class="case-row" data-case="([^"]+)"', html)) == cases
    assert html.count('src="data:image/png;base64,') == len(cases) and '"preset": "dlka3d_synapse"' in unescape(html)
    assert np.isfinite([float(r["dice"]) for r in rows]).all()


def _hand_made_case_with_false_positive():
    pred, gt = _hand_made_case()
    pred[40:45, 2:5, 8] = 5  # class 5: predicted, absent from the ground truth
    return pred, gt


def test_synapse_tables_convention_matches_hand_computed_values():
    pred, gt = _hand_made_case_with_false_positive()
    rows = {r["class"]: r for r in case_metrics(pred, gt, 6, SPACING, convention="synapse_tables")}
    assert all(set(r) == {"class", "dice", "hd95_voxels"} for r in rows.values())
    # class 1: each one-slice square is all border, one voxel from the other: HD95 1 voxel (3 mm in ours)
    assert rows[1] == {"class": 1, "dice": 0.0, "hd95_voxels": pytest.approx(1.0)}
    # class 2: half the border distances are 0, half 1 voxel, pooled over both directions
    assert rows[2] == {"class": 2, "dice": pytest.approx(0.5), "hd95_voxels": pytest.approx(1.0)}
    assert rows[3] == {"class": 3, "dice": 1.0, "hd95_voxels": 0.0}  # empty pair: a perfect score
    assert rows[4] == {"class": 4, "dice": 0.0, "hd95_voxels": 0.0}  # missed organ: HD95 0
    assert rows[5] == {"class": 5, "dice": 0.0, "hd95_voxels": 0.0}  # false positive: HD95 0

    # side by side on the same case: ours leaves the undefined distances out and counts them
    ours = [{"case": "a", **r} for r in case_metrics(pred, gt, 6, SPACING)]
    theirs = [{"case": "a", **r} for r in rows.values()]
    names = {c: str(c) for c in range(1, 6)}
    ours, theirs = summarize(ours, names, subset=range(1, 6)), summarize(theirs, names, subset=range(1, 6), convention="synapse_tables")
    assert theirs["convention"] == "synapse_tables" and "missed organ" in theirs["conventions"]
    assert theirs["synapse_8_organs"]["dice"]["mean"] == pytest.approx((0 + 0.5 + 1 + 0 + 0) / 5)
    assert theirs["synapse_8_organs"]["hd95_voxels"]["mean"] == pytest.approx((1 + 1 + 0 + 0 + 0) / 5)
    assert ours["synapse_8_organs"]["dice"]["mean"] == pytest.approx(0.3)
    assert ours["synapse_8_organs"]["hd95_mm"]["mean"] == pytest.approx(3.0)
    assert [ours["per_class"][str(c)]["hd95_mm"]["n_nan"] for c in range(1, 6)] == [0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="unknown metric convention 'nnunet'; choose one of default, synapse_tables"):
        case_metrics(pred, gt, 6, SPACING, convention="nnunet")


def test_hd95_voxels_is_medpys_hd95():
    from medpy.metric import binary  # the test extra installs medpy: a missing one fails, never skips

    pred, gt = _hand_made_case()
    assert hd95_voxels(pred.numpy() == 1, gt.numpy() == 1) == binary.hd95(pred.numpy() == 1, gt.numpy() == 1)
    rng = np.random.default_rng(0)
    for _ in range(10):  # blobs of several sizes, touching the array's faces now and then
        a, b = (ndimage.binary_dilation(rng.random((24, 20, 12)) > 0.98, iterations=2) for _ in range(2))
        assert hd95_voxels(a, b) == pytest.approx(binary.hd95(a, b), abs=1e-12)


def _engine_run(writer, items):
    engine = Engine(lambda engine, batch: batch)
    writer.attach(engine)
    engine.run([items], max_epochs=1)
    return engine


def _case_files(tmp_path, shape=(50, 30, 10)):
    affine = np.diag([*SPACING, 1.0])
    image = tmp_path / "images" / "case_007.nii.gz"
    image.parent.mkdir()
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), affine), image)
    return image, affine


def _item(pred, label, image_file, pred_affine, label_affine):
    label_file = str(image_file.parent.parent / "labels" / image_file.name)  # never read: the arrays are given
    return {
        "pred": MetaTensor(pred[None].float(), affine=torch.as_tensor(pred_affine)),
        "label": MetaTensor(label[None].float(), affine=torch.as_tensor(label_affine), meta={"filename_or_obj": label_file}),
        "image": MetaTensor(torch.zeros(1, *label.shape), meta={"filename_or_obj": str(image_file)}),
    }


def test_metrics_writer_in_the_synapse_tables_convention(tmp_path):
    pred, gt = _hand_made_case_with_false_positive()
    image, affine = _case_files(tmp_path)
    writer = MetricsWriter(str(tmp_path / "eval"), 12, {c: f"organ{c}" for c in range(1, 12)}, convention="synapse_tables")
    engine = _engine_run(writer, [_item(pred, gt, image, affine, affine)])
    with open(tmp_path / "eval" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["case", "class", "name", "dice", "hd95_voxels"] and len(rows) == 11
    by_class = {int(r["class"]): (float(r["dice"]), float(r["hd95_voxels"])) for r in rows}
    assert by_class[1] == (0.0, 1.0) and by_class[2] == (0.5, 1.0) and by_class[4] == (0.0, 0.0) and by_class[5] == (0.0, 0.0)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["convention"] == "synapse_tables"
    # the 8 organs 1, 2, 3, 4, 6, 7, 8, 11: Dice 0, 0.5, 1, 0 and four empty pairs (1)
    assert summary["synapse_8_organs"]["dice"]["mean"] == pytest.approx(5.5 / 8)
    assert summary["synapse_8_organs"]["hd95_voxels"]["mean"] == pytest.approx(2 / 8)
    assert engine.state.metrics["mean_dice"] == pytest.approx((0 + 0.5 + 1 + 0 + 0 + 6 * 1) / 11)
    with pytest.raises(ValueError, match="unknown metric convention"):
        MetricsWriter(str(tmp_path), 12, {}, convention="medpy")


@pytest.mark.parametrize("change", ["origin", "direction", "shape"])
def test_evaluation_refuses_a_label_on_another_grid(change, tmp_path):
    pred, gt = _hand_made_case()
    image, affine = _case_files(tmp_path)
    label_affine = affine.copy()
    if change == "origin":
        label_affine[:3, 3] += (0.0, 0.0, 3.0)  # one slice off
        match = r"^case case_007: the affine of the label map .*labels/case_007\.nii\.gz differs from the prediction's .* by up to 3 mm"
    elif change == "direction":
        label_affine[:3, :3] = np.diag(SPACING) @ np.diag([-1.0, 1.0, 1.0])  # left-right flipped
        match = r"^case case_007: the affine of the label map .* by up to 1\.6 mm"
    else:
        gt = gt[:, :, :8]
        match = r"^case case_007: the prediction \(50x30x10\) and the label map .*labels/case_007\.nii\.gz \(50x30x8\) differ in shape"
    writer = MetricsWriter(str(tmp_path / "eval"), 5, {})
    with pytest.raises(InvalidInputError, match=match) as error:
        _engine_run(writer, [_item(pred, gt, image, affine, label_affine)])
    assert len(str(error.value).splitlines()) == 1 and writer.rows == []


def test_evaluate_config_sets_the_convention(tiny_bundle):
    parser = ConfigParser(ConfigParser.load_config_files([tiny_bundle / "configs" / f for f in ("inference.json", "evaluate.json")]))
    assert parser["imports"][-1] == "$import dlka_monai.evaluation" and "$import dlka_monai.weights" in parser["imports"]
    parser["bundle_root"] = str(tiny_bundle)
    assert parser.get_parsed_content("metrics_writer").convention == "default"
    parser["metric_convention"] = "synapse_tables"
    assert parser.get_parsed_content("metrics_writer", lazy=False).convention == "synapse_tables"
