# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""The summary of a cross-validation: each fold's validation Dice and the pooled result (every labelled
case once, since the folds' validation lists are disjoint), as nnU-Net's ``summary.json``."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dlka_monai.evaluation.metrics import summarize

__all__ = ["read_metrics", "summarize_folds"]


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a ``metrics.csv`` written by :class:`~dlka_monai.evaluation.MetricsWriter`, with numbers
    (empty cells, i.e. undefined distances, as NaN)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    numeric = lambda v: math.nan if v in ("", "nan", "None") else float(v)  # noqa: E731
    return [
        {"case": r["case"], "class": int(r["class"]), "name": r.get("name", ""), **{k: numeric(v) for k, v in r.items() if k not in ("case", "class", "name")}}
        for r in rows
    ]


def _case_dice(rows: Sequence[Mapping]) -> list[float]:
    cases = sorted({r["case"] for r in rows})
    return [float(np.mean([r["dice"] for r in rows if r["case"] == c])) for c in cases]


def summarize_folds(
    folds: Mapping[int, str | os.PathLike | Sequence[Mapping]],
    class_names: Mapping[Any, str],
    path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Summarise the validation of every fold.

    Args:
        folds: fold -> its validation results: the rows of
            :func:`~dlka_monai.evaluation.case_metrics` with a ``case`` key, or the ``metrics.csv`` holding them.
        class_names: class value -> name.
        path: if given, the summary is written there as JSON (undefined values as null).

    Returns:
        ``num_folds``; ``folds``: per fold its ``cases``, ``mean_dice`` (mean over its cases of the mean over
        the foreground classes) and ``dice_per_class``; ``mean_dice`` and ``std_dice`` over the folds; and
        ``cross_validation``: :func:`~dlka_monai.evaluation.summarize` of all folds' rows together.
    """
    if not folds:
        raise ValueError("summarize_folds needs the validation results of at least one fold.")
    names = {int(k): v for k, v in class_names.items()}
    results = {int(k): (read_metrics(v) if isinstance(v, (str, os.PathLike)) else list(v)) for k, v in folds.items()}
    seen: dict[str, int] = {}
    for k, rows in sorted(results.items()):
        for case in {r["case"] for r in rows}:
            if case in seen:
                raise ValueError(f"case {case} is in the validation of folds {seen[case]} and {k}: folds must be disjoint.")
            seen[case] = k
    per_fold = {}
    for k, rows in sorted(results.items()):
        classes = sorted({int(r["class"]) for r in rows})
        per_fold[str(k)] = {
            "cases": sorted({r["case"] for r in rows}),
            "mean_dice": float(np.mean(_case_dice(rows))),
            "dice_per_class": {names.get(c, str(c)): float(np.mean([r["dice"] for r in rows if int(r["class"]) == c])) for c in classes},
        }
    means = [f["mean_dice"] for f in per_fold.values()]
    pooled = [r for rows in results.values() for r in rows]
    summary = {
        "num_folds": len(per_fold),
        "folds": per_fold,
        "mean_dice": float(np.mean(means)),
        "std_dice": float(np.std(means)),
        "cross_validation": summarize(pooled, names, subset=()),
    }
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(summary, indent=2, default=lambda v: None)
        Path(path).write_text(text.replace("NaN", "null") + "\n", encoding="utf-8")  # JSON has no NaN
    return summary
