# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""After cross-validation, as nnU-Net: decide the plan's connected-component postprocessing on the folds'
validation predictions and summarise the folds' validation Dice::

    python -m dlka_monai.plan.postprocess --plan plan.json --datalist dataset.json \\
        --predictions "eval/fold_*" --summary eval/cv_summary.json

Every ``<case>_seg.nii.gz`` in the prediction folders (as the evaluate config writes them) is compared with
the label map of the datalist case whose image is ``<case>.nii.gz``; the plan file is rewritten with the
decision. A folder's ``metrics.csv`` (the evaluate config's) goes into the summary, its fold read from the
folder name's trailing number. Bad arguments or inputs are reported in one line with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from monai.transforms import LoadImage

from dlka_monai.data.datalist import NIFTI_SUFFIXES, load_datalist
from dlka_monai.data.validation import InvalidInputError
from dlka_monai.evaluation.folds import summarize_folds
from dlka_monai.evaluation.postprocessing import largest_component_scores
from dlka_monai.plan.format import class_names, read_plan_file, write_plan_file

__all__ = ["prediction_pairs", "main"]

_POSTFIX = "_seg"


def _stem(path: str) -> str:
    name = os.path.basename(path)
    return next((name[: -len(s)] for s in NIFTI_SUFFIXES if name.endswith(s)), name)


def prediction_pairs(folders: Sequence[str], datalist: str, dataset_dir: str | None = None) -> list[tuple[str, str]]:
    """``(prediction, label)`` file pairs: each ``<case>_seg.nii.gz`` in ``folders`` with the label map of the
    labelled datalist case whose image is ``<case>.nii.gz``.

    Raises:
        InvalidInputError: no prediction, or predictions of no labelled case (named).
    """
    lists = load_datalist(dataset_dir=dataset_dir, datalist=datalist, val_fraction=0.0, check=False)
    labels = {}
    for e in lists["training"] + lists["validation"]:
        image = e["image"][0] if isinstance(e["image"], (list, tuple)) else e["image"]
        labels[_stem(str(image))] = str(e["label"])
    predictions = sorted(p for f in folders for s in NIFTI_SUFFIXES for p in glob.glob(os.path.join(f, f"*{_POSTFIX}{s}")))
    if not predictions:
        raise InvalidInputError(f"no *{_POSTFIX}.nii.gz prediction in {', '.join(folders) or 'the folders given'}.")
    unknown = [p for p in predictions if _stem(p)[: -len(_POSTFIX)] not in labels]
    if unknown:
        raise InvalidInputError(f"predictions of no labelled case of {datalist}: {', '.join(unknown[:3])}" + (f" and {len(unknown) - 3} more." if len(unknown) > 3 else "."))
    return [(p, labels[_stem(p)[: -len(_POSTFIX)]]) for p in predictions]


def _fold(folder: str, index: int) -> int:
    found = re.search(r"(\d+)$", os.path.basename(os.path.normpath(folder)))
    return int(found.group(1)) if found else index


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlka_monai.plan.postprocess", description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", required=True, help="plan file to update")
    parser.add_argument("--datalist", required=True, help="the dataset json of the labels")
    parser.add_argument("--dataset_dir", default=None, help="folder the json's paths are relative to")
    parser.add_argument("--predictions", required=True, nargs="+", help="folders (or glob patterns) of the folds' validation predictions")
    parser.add_argument("--summary", default=None, help="write the folds' summary (JSON) here, from their metrics.csv")
    args = parser.parse_args(argv)
    try:
        plan = read_plan_file(args.plan)
        folders = sorted(f for pattern in args.predictions for f in glob.glob(pattern) if os.path.isdir(f))
        pairs = prediction_pairs(folders, args.datalist, args.dataset_dir)
        load = LoadImage(image_only=True, ensure_channel_first=True)
        predictions, labels = [], []
        for pred_file, label_file in pairs:
            pred, label = load(pred_file), load(label_file)
            if pred.shape != label.shape:
                raise InvalidInputError(f"{pred_file}: shape {tuple(pred.shape[1:])} differs from its label map {label_file}'s {tuple(label.shape[1:])}.")
            predictions.append(pred.long())
            labels.append(label.long())
        names = class_names(plan)
        scores = largest_component_scores(predictions, labels, len(names))
        plan["postprocessing"] = {**plan.get("postprocessing", {}), "largest_component": [c for c, (b, a) in scores.items() if a > b]}
        write_plan_file(plan, args.plan)
        summary = None
        if args.summary:
            metrics = {_fold(f, i): Path(f) / "metrics.csv" for i, f in enumerate(folders) if (Path(f) / "metrics.csv").is_file()}
            if not metrics:
                raise InvalidInputError(f"no metrics.csv in {', '.join(folders)} for the summary.")
            summary = summarize_folds(metrics, names, args.summary)
    except (InvalidInputError, ValueError, OSError, RuntimeError) as e:
        print(f"dlka_monai.plan.postprocess: error: {e}", file=sys.stderr)
        return 1
    for c, (before, after) in scores.items():
        verdict = "largest component" if c in plan["postprocessing"]["largest_component"] else "as predicted"
        print(f"{names[c]}: Dice {before:.4f} as predicted, {after:.4f} largest component -> {verdict}")
    print(f"wrote {args.plan}: largest_component {plan['postprocessing']['largest_component']} ({len(pairs)} validation cases)")
    if summary is not None:
        print(f"wrote {args.summary}: mean Dice {summary['mean_dice']:.4f} ± {summary['std_dice']:.4f} over {summary['num_folds']} folds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
