"""report.html of the evaluation: parsed as HTML, one table row per case (worst first), both conventions'
summaries, every overlay image embedded and decodable, the model's plan; no external resource."""

import base64
import io
import json
import re
from html.parser import HTMLParser

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from PIL import Image

from dlka_monai.evaluation import MetricsWriter
from dlka_monai.evaluation.report import write_report
from dlka_monai.plan import make_plan

SPACING = (0.8, 0.8, 3.0)


class ReportParser(HTMLParser):
    """What a reader sees of the report: the Dice table's rows, the summary tables, the images, and every
    attribute that could load something from elsewhere."""

    def __init__(self):
        super().__init__()
        self.case_rows, self.conventions, self.images, self.links, self.pre = [], [], [], [], []
        self._row = self._pre = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and attrs.get("class") == "case-row":
            self._row = []
            self.case_rows.append(self._row)
        if tag == "table" and "data-convention" in attrs:
            self.conventions.append(attrs["data-convention"])
        if tag == "img":
            self.images.append(attrs)
        if tag == "pre":
            self._pre = []
        for key in ("src", "href"):
            if key in attrs:
                self.links.append(attrs[key])

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None
        if tag == "pre" and self._pre is not None:
            self.pre.append("".join(self._pre))
            self._pre = None

    def handle_data(self, data):
        if self._row is not None and data.strip():
            self._row.append(data.strip())
        if self._pre is not None:
            self._pre.append(data)


def parse_report(path):
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _case(tmp_path, name, shift):
    """A case whose prediction is its ground truth moved by ``shift`` voxels along x (worse as it grows)."""
    gt = torch.zeros(40, 30, 12, dtype=torch.long)
    gt[5:25, 5:20, 2:10] = 6  # liver
    gt[28:36, 10:18, 4:8] = 1  # spleen
    pred = torch.roll(gt, shift, dims=0)
    affine = np.diag([*SPACING, 1.0])
    image = tmp_path / "images" / f"{name}.nii.gz"
    image.parent.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image((gt.numpy() * 40 - 100).astype(np.float32), affine), image)
    return {
        "pred": MetaTensor(pred[None].float(), affine=torch.as_tensor(affine)),
        "label": MetaTensor(gt[None].float(), affine=torch.as_tensor(affine), meta={"filename_or_obj": str(tmp_path / "labels" / f"{name}.nii.gz")}),
        "image": MetaTensor(torch.zeros(1, *gt.shape), meta={"filename_or_obj": str(image)}),
    }


@pytest.fixture
def evaluated(tmp_path):
    """MetricsWriter run over three cases of increasing error, with a plan holding a recipe."""
    plan = make_plan("dlka3d_synapse")
    plan["recipe"] = {"optimizer": "SGD", "learning_rate": 0.01}
    names = {int(k): v for k, v in plan["class_names"].items()}
    writer = MetricsWriter(str(tmp_path / "eval"), 14, names, plan=plan)
    engine = Engine(lambda engine, batch: batch)
    writer.attach(engine)
    shifts = {"good_case": 0, "bad_case": 6, "middle_case": 2}
    engine.run([[_case(tmp_path, name, shift)] for name, shift in shifts.items()], max_epochs=1)
    return tmp_path / "eval", writer, plan


def test_report_has_one_row_per_case_worst_first_and_embeds_the_overlays(evaluated):
    out, writer, plan = evaluated
    report = parse_report(out / "report.html")
    # one row per case, worst first: the case mean Dice (second cell) ascends
    assert [row[0] for row in report.case_rows] == ["bad_case", "middle_case", "good_case"]
    means = [float(row[1]) for row in report.case_rows]
    assert means == sorted(means) and means[-1] == 1.0 and means[0] < means[1] < 1
    assert all(len(row) == 2 + 13 for row in report.case_rows)  # case, mean and the 13 classes
    dice = {(r["case"], r["name"]): r["dice"] for r in writer.rows}
    assert report.case_rows[0][2 + 5] == f"{dice[('bad_case', 'liver')]:.3f}"  # column of class 6

    # both conventions, whatever the CSV's
    assert report.conventions == ["default", "synapse_tables"]
    # every image is embedded and decodes to the PNG written for its case; nothing is loaded from elsewhere
    assert [img["alt"].split(":")[0] for img in report.images] == ["bad_case", "middle_case", "good_case"]
    for img in report.images:
        assert img["src"].startswith("data:image/png;base64,")
        png = base64.b64decode(img["src"].split(",", 1)[1])
        assert png == (out / f"{img['alt'].split(':')[0]}.png").read_bytes()
        assert Image.open(io.BytesIO(png)).size[0] > 3 * 30
    assert all(link.startswith(("data:", "#")) for link in report.links)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"(src|href)=\"(https?:)?//", html) and "<script" not in html and "@import" not in html
    # the plan and its recipe
    shown = json.loads(report.pre[0])
    assert shown["preset"] == "dlka3d_synapse" and shown["class_names"] == plan["class_names"] and "recipe" not in shown
    assert json.loads(report.pre[1]) == {"optimizer": "SGD", "learning_rate": 0.01}


def test_report_summaries_are_the_summary_numbers(evaluated):
    out, writer, _ = evaluated
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    html = (out / "report.html").read_text(encoding="utf-8")
    liver = summary["per_class"]["liver"]
    assert f"{liver['dice']['mean']:.3f} ± {liver['dice']['std']:.3f}" in html
    assert f"{liver['hd95_mm']['mean']:.3f} ± {liver['hd95_mm']['std']:.3f}" in html
    # the other convention, computed for the report only: HD95 in voxels
    assert len(writer.report_rows["synapse_tables"]) == len(writer.rows) == 3 * 13
    assert "HD95 (voxels)" in html and "HD95 (mm)" in html
    # Dice cells are coloured by their value: 1 green, 0 red
    assert "hsl(120, 75%, 78%)" in html and "hsl(0, 75%, 78%)" in html


def test_overlay_png_names_its_columns(evaluated):
    out, _, _ = evaluated
    png = np.asarray(Image.open(out / "good_case.png"))
    # a white title strip with dark text in each third, above the three panels
    strip = png[:16]
    thirds = np.array_split(strip.min(axis=2) < 100, 3, axis=1)
    assert all(t.any() for t in thirds) and (png[:2] == 255).all()


def test_write_report_without_plan_or_images(tmp_path):
    rows = {"default": [{"case": "a", "class": 1, "dice": 0.5, "jaccard": 1 / 3, "hd95_mm": float("nan"), "asd_mm": 1.0}]}
    path = write_report(tmp_path / "r.html", rows, {1: "spleen"})
    report = parse_report(path)
    assert report.case_rows == [["a", "0.500", "0.500"]]
    assert report.images == [] and report.conventions == ["default"] and "No plan was given." in path.read_text(encoding="utf-8")
