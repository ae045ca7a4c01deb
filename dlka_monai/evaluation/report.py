# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""``report.html``: the evaluation as one self-contained page (no server, no external files: the overlay
PNGs are embedded as data URIs), rendered with jinja2 from ``templates/report.html.j2``."""

from __future__ import annotations

import base64
import datetime
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import jinja2
import numpy as np

import dlka_monai
from dlka_monai.evaluation.metrics import CONVENTION_METRICS, SYNAPSE_8_ORGANS, summarize

__all__ = ["METRIC_LABELS", "write_report"]

TEMPLATES = Path(__file__).resolve().parent / "templates"
METRIC_LABELS = {
    "dice": "Dice",
    "jaccard": "Jaccard",
    "hd95_mm": "HD95 (mm)",
    "asd_mm": "ASD (mm)",
    "hd95_voxels": "HD95 (voxels)",
}
"""Column headers of the metrics."""


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _dice_colour(value) -> str:
    """Red (0) through yellow to green (1); grey for no value."""
    if value is None or math.isnan(value):
        return "#e0e0e0"
    return f"hsl({round(120 * min(max(value, 0.0), 1.0))}, 75%, 78%)"


def _data_uri(path: Path) -> str | None:
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["number"] = _number
    env.filters["dice_colour"] = _dice_colour
    return env


def write_report(
    path: str | Path,
    rows: Mapping[str, Sequence[Mapping]],
    class_names: Mapping[int, str],
    images: Mapping[str, str | Path] | None = None,
    plan: Mapping | None = None,
    title: str = "D-LKA Net evaluation",
) -> Path:
    """Write the report: the per-case × per-class Dice table (worst case first, coloured), mean and std
    of every class and metric in each metric convention of ``rows``, every case with its overlay PNG
    (worst first), and the model's plan (and its training recipe, if the plan holds one).

    Args:
        path: the HTML file to write.
        rows: metric convention -> the rows of :func:`dlka_monai.evaluation.case_metrics` with ``case``
            added, for the same cases; the first convention orders the cases (by their mean Dice).
        class_names: class value -> name.
        images: case -> its overlay PNG (image | ground truth | prediction), embedded in the page.
        plan: the model's plan.
        title: the page's title.
    """
    conventions = list(rows)
    first = rows[conventions[0]]
    classes = sorted({int(r["class"]) for r in first})
    cases = sorted({r["case"] for r in first})
    dice = {(r["case"], int(r["class"])): float(r["dice"]) for r in first}
    case_mean = {case: float(np.mean([dice[(case, c)] for c in classes])) for case in cases}
    ordered = sorted(cases, key=lambda case: (case_mean[case], case))
    names = {c: class_names.get(c, str(c)) for c in classes}
    summaries = []
    for convention in conventions:
        summary = summarize(rows[convention], names, SYNAPSE_8_ORGANS, convention)
        groups = [(key, label) for key, label in (("synapse_8_organs", "8 Synapse organs (per-case mean)"), ("all_classes", "all classes (per-case mean)")) if key in summary]
        summaries.append(
            {
                "convention": convention,
                "notes": summary["conventions"],
                "metrics": [(m, METRIC_LABELS.get(m, m)) for m in CONVENTION_METRICS[convention]],
                "classes": [(names[c], summary["per_class"][names[c]]) for c in classes],
                "groups": [(label, summary[key]) for key, label in groups],
            }
        )
    images = {case: Path(p) for case, p in (images or {}).items()}
    recipe = (plan or {}).get("recipe")
    html = _environment().get_template("report.html.j2").render(
        title=title,
        created=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        version=dlka_monai.__version__,
        classes=[(c, names[c]) for c in classes],
        cases=[
            {
                "name": case,
                "mean_dice": case_mean[case],
                "dice": [dice[(case, c)] for c in classes],
                "image": _data_uri(images[case]) if case in images else None,
            }
            for case in ordered
        ],
        summaries=summaries,
        plan=json.dumps({k: v for k, v in plan.items() if k != "recipe"}, indent=2, default=str) if plan else None,
        preset=(plan or {}).get("preset"),
        recipe=json.dumps(recipe, indent=2, default=str) if recipe else None,
        legend=[(v, _dice_colour(v)) for v in (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)],
    )
    path = Path(path)
    path.write_text(html, encoding="utf-8")
    return path
