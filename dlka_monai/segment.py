# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""``dlka-segment``: segment CT volumes from the command line with the bundle's inference config.

    dlka-segment -i scan.nii.gz -o scan_seg.nii.gz
    dlka-segment -i scans/ -o segmentations/ --model pancreas --tta
    dlka-segment -i dicom_series_folder/ -o out/ --model /path/to/bundle_or_checkpoint.pt

The label maps (uint8 NIfTI) are in the input's space: same shape, affine and orientation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from ignite.engine import Events
from ignite.handlers import ProgressBar
from monai.bundle import ConfigWorkflow

from dlka_monai.data import NIFTI_SUFFIXES, InvalidInputError, check_output_dir, inference_datalist
from dlka_monai.weights import safe_load

__all__ = ["main", "resolve_model"]

PRESET_OVERLAYS = {"synapse": [], "pancreas": ["inference_pancreas.json"]}


class SegmentError(Exception):
    """A failure reported to the user as one line."""


def _repo_bundle_root() -> Path:
    return Path(__file__).resolve().parents[1]


def _checkpoint_overlay(ckpt: Path) -> list[str]:
    """The overlays of the preset whose network the state dict ``ckpt`` fits."""
    state = safe_load(ckpt, mmap=True)  # only the head's shape is read here
    state = state.get("model", state) if isinstance(state, dict) else state
    head = state.get("out1.conv.conv.weight") if isinstance(state, dict) else None
    classes = None if head is None else head.shape[0]
    for name, n in (("synapse", 14), ("pancreas", 2)):
        if classes == n:
            return PRESET_OVERLAYS[name]
    raise SegmentError(
        f"{ckpt}: does not fit dlka3d_synapse (14 classes) or dlka3d_pancreas (2 classes); it has "
        f"{'no out1 head' if classes is None else f'{classes} classes'}."
    )


def resolve_model(model: str) -> tuple[Path, list[str], Path]:
    """``--model`` -> (bundle root, config files, checkpoint).

    ``synapse`` / ``pancreas``: this repository's bundle and its trained ``models/model.pt``
    (``models/pancreas/model.pt``); a folder: a bundle (``configs/inference.json``,
    ``models/model.pt``); a file: a checkpoint for this repository's configs.
    """
    if model in PRESET_OVERLAYS:
        root, overlays = _repo_bundle_root(), PRESET_OVERLAYS[model]
        ckpt = root / "models" / ("model.pt" if model == "synapse" else "pancreas/model.pt")
    elif Path(model).is_dir():
        root, overlays = Path(model).resolve(), []
        ckpt = root / "models" / "model.pt"
    elif Path(model).is_file():
        root, ckpt = _repo_bundle_root(), Path(model).resolve()
        overlays = _checkpoint_overlay(ckpt)
    else:
        raise SegmentError(f"--model {model}: not 'synapse', 'pancreas', a bundle folder or a checkpoint file.")
    configs = [root / "configs" / name for name in ["inference.json", *overlays]]
    missing = [str(c) for c in configs if not c.is_file()]
    if missing:
        raise SegmentError(f"bundle config not found: {', '.join(missing)}.")
    if not ckpt.is_file():
        raise SegmentError(f"no trained weights at {ckpt}: train the bundle first or pass --model CHECKPOINT.")
    return root, [str(c) for c in configs], ckpt


def _output_target(output: Path, n_cases: int) -> tuple[Path, Path | None]:
    """(folder SaveImaged writes to, exact file name wanted or None)."""
    if output.name.endswith(NIFTI_SUFFIXES):
        if n_cases != 1:
            raise SegmentError(f"-o {output}: a file name, but the input has {n_cases} images; give a folder.")
        return output.parent, output
    return output, None


def _label_names(root: Path) -> dict[int, str]:
    meta = json.loads((root / "configs" / "metadata.json").read_text(encoding="utf-8"))
    channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    return {int(k): v for k, v in channels.items()}


def _report(names: dict[int, str], saved: list[str]):
    """ignite handler: one summary line per case (volume of every label in mL)."""

    def handler(engine) -> None:
        for item in engine.state.output:
            pred = item["pred"]
            voxel_ml = abs(float(torch.linalg.det(pred.affine[:3, :3].double()))) / 1000.0
            labels, counts = torch.unique(pred.as_tensor().round().long(), return_counts=True)
            volumes = ", ".join(
                f"{names.get(int(v), int(v))} {c * voxel_ml:.1f} mL" for v, c in zip(labels.tolist(), counts.tolist()) if v
            )
            saved.append(pred.meta["saved_to"])
            print(f"{Path(pred.meta['filename_or_obj']).name} -> {pred.meta['saved_to']}: {volumes or 'nothing found'}", flush=True)

    return handler


def _input_error(error: BaseException) -> InvalidInputError | None:
    """The InvalidInputError behind an error of the config parser (which wraps what its expressions raise)."""
    while error is not None and not isinstance(error, InvalidInputError):
        error = error.__cause__ or error.__context__
    return error


def segment(
    input: str, output: str, model: str = "synapse", device: str = "auto", tta: bool = False, series: str | None = None
) -> list[Path]:
    """Segment ``input`` into ``output``; returns the written files. Raises :class:`SegmentError` or
    :class:`InvalidInputError` with a one-line message."""
    root, configs, ckpt = resolve_model(model)
    try:
        cases = inference_datalist(input=input, series_uid=series)
    except FileNotFoundError as e:
        raise SegmentError(str(e)) from e
    folder, exact = _output_target(Path(output), len(cases))
    check_output_dir(folder)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise SegmentError("--device cuda: no CUDA device available.")

    with tempfile.TemporaryDirectory(dir=folder, prefix=".dlka-segment-") as staging:
        workflow = ConfigWorkflow(
            config_file=configs,
            meta_file=str(root / "configs" / "metadata.json"),
            workflow_type="infer",
            bundle_root=str(root),
            ckpt_path=str(ckpt),
            data=cases,  # checked above: not again by the config
            output_dir=staging,
            device=f"$torch.device('{device}')",
            tta=tta,
            series_uid=series,
        )
        staged: list[str] = []
        try:
            workflow.initialize()
            evaluator = workflow.parser.get_parsed_content("evaluator")
            ProgressBar(desc="cases", persist=True).attach(evaluator)
            evaluator.add_event_handler(Events.ITERATION_COMPLETED, _report(_label_names(root), staged))
            workflow.run()
            workflow.finalize()
        except Exception as e:
            raise _input_error(e) or e

        # results are moved out of the staging folder only when every case succeeded
        written = []
        for path in map(Path, staged):
            target = exact if exact is not None else folder / path.name
            shutil.move(str(path), target)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dlka-segment", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", required=True, help="NIfTI file, folder of NIfTI files, DICOM series folder, or glob")
    parser.add_argument("-o", "--output", required=True, help="output .nii.gz file (one input) or folder")
    parser.add_argument("--model", default="synapse", help="synapse | pancreas | bundle folder | checkpoint file (default: synapse)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--tta", action="store_true", help="average over the 8 axis-flip combinations (8x slower)")
    parser.add_argument("--series", help="SeriesInstanceUID to read from a DICOM folder holding several series")
    args = parser.parse_args(argv)
    try:
        written = segment(args.input, args.output, args.model, args.device, args.tta, args.series)
    except (SegmentError, InvalidInputError) as e:
        print(f"dlka-segment: error: {e}", file=sys.stderr)
        return 1
    print(f"dlka-segment: wrote {len(written)} label map(s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
