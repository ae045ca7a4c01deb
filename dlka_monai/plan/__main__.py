# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""``python -m dlka_monai.plan --datalist dataset.json --preset dlka3d_synapse --out plan.json``: the plan of
a dataset, from its fingerprint (:mod:`dlka_monai.plan.planner`). Bad arguments or inputs are reported in
one line with a non-zero exit code."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from dlka_monai.data.validation import InvalidInputError
from dlka_monai.networks import list_networks
from dlka_monai.plan.fingerprint import FOREGROUND_SAMPLES, datalist_fingerprint
from dlka_monai.plan.format import write_plan_file
from dlka_monai.plan.planner import MIN_COVERAGE, plan_from_fingerprint

__all__ = ["main"]


def _summary(plan: dict) -> str:
    norm = plan["normalization"]
    if norm["scheme"] == "ct":
        intensity = f"ct (clip {norm['clip'][0]:.4g}..{norm['clip'][1]:.4g}, mean {norm['mean']:.4g}, std {norm['std']:.4g})"
    else:
        intensity = norm["scheme"]
    pixdim = ", ".join(f"{v:.3g}" for v in plan["pixdim"])
    return (
        f"{plan['preset']}, {len(plan['dataset']['cases'])} cases, {plan['modality']}, {plan['network']['in_channels']} channel(s), "
        f"{len(plan['class_names'])} classes, axcodes {plan['axcodes']}, pixdim ({pixdim}) mm, normalization {intensity}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlka_monai.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--datalist", required=True, help="Decathlon/MONAI dataset.json with a 'training' list")
    parser.add_argument("--dataset_dir", default=None, help="folder the json's paths are relative to (default: the json's)")
    parser.add_argument("--preset", default="dlka3d_synapse", choices=list_networks(), help="network preset")
    parser.add_argument("--modality", default=None, help="e.g. CT or MR; replaces the json's 'modality'")
    parser.add_argument("--out", default="plan.json", help="plan file to write")
    parser.add_argument("--foreground_samples", type=int, default=FOREGROUND_SAMPLES, help="CT foreground voxels sampled")
    parser.add_argument("--min_coverage", type=float, default=MIN_COVERAGE, help="warn below this patch coverage")
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            fingerprint = datalist_fingerprint(
                args.datalist, args.dataset_dir, args.modality, foreground_samples=args.foreground_samples
            )
            plan = plan_from_fingerprint(fingerprint, args.preset, min_coverage=args.min_coverage)
            try:
                path = write_plan_file(plan, args.out)
            except OSError as e:
                raise InvalidInputError(f"{args.out}: cannot write the plan ({e.strerror or e}).") from e
        except (InvalidInputError, ValueError, OSError) as e:
            print(f"dlka_monai.plan: error: {e}", file=sys.stderr)
            return 1
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"dlka_monai.plan: warning: {w.message}", file=sys.stderr)
    print(f"wrote {path}: {_summary(plan)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
