# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""``dlka-segment``: segment CT volumes from the command line with the bundle's inference config, or
dermoscopic photographs (JPG, PNG, BMP) with a skin model.

    dlka-segment -i scan.nii.gz -o scan_seg.nii.gz
    dlka-segment -i scans/ -o segmentations/ --model pancreas --tta
    dlka-segment -i dicom_series_folder/ -o out/ --model /path/to/bundle_or_model.pt
    dlka-segment -i scan.nii.gz -o scan_seg.nii.gz --model 'models/fold_*/model.pt'   # ensemble of folds
    dlka-segment -i photos/ -o masks/ --model models/skin/model.pt   # lesion masks, PNG at each photo's size

The model's plan (stored with its weights) gives the network, the preprocessing and the class names, so
any model the bundle trained, or the packer packed, segments as it is. The label maps (uint8 NIfTI) are in
the input's space: same shape, affine and orientation.
"""

from __future__ import annotations

import glob
import shutil
import sys
import tempfile
from argparse import ArgumentTypeError, RawDescriptionHelpFormatter
from pathlib import Path

import torch
from ignite.engine import Events
from ignite.handlers import ProgressBar
from monai.bundle import ConfigWorkflow

from dlka_monai.bundle_files import bundle_root
from dlka_monai.cli import ArgumentParser
from dlka_monai.data import NIFTI_SUFFIXES, InvalidInputError, SITKReader, check_output_dir, inference_datalist
from dlka_monai.plan import class_names
from dlka_monai.runtime import PRECISIONS, describe_precision
from dlka_monai.weights import load_model, model_files, model_plan

__all__ = ["MODEL_NAMES", "main", "resolve_model", "segment"]

MODEL_NAMES = {"synapse": "models/model.pt", "pancreas": "models/pancreas/model.pt", "2d": "models/2d/model.pt"}
"""``--model`` names: where the repository bundle's training configs write each model."""


class SegmentError(Exception):
    """A failure reported to the user as one line."""


def resolve_model(model: str) -> tuple[Path, Path]:
    """``--model`` -> (bundle root, model file).

    A name of :data:`MODEL_NAMES`: that model of the repository bundle; a folder: a bundle
    (``configs/inference.json``, ``models/model.pt``); a file: a model for the repository bundle's configs;
    a glob pattern (``"models/fold_*/model.pt"``): the ensemble of the models it matches, whose softmax
    probabilities are averaged.
    """
    if model in MODEL_NAMES:
        root = bundle_root()
        ckpt = root / MODEL_NAMES[model]
    elif Path(model).is_dir():
        root = Path(model).resolve()
        ckpt = root / "models" / "model.pt"
    elif Path(model).is_file():
        root, ckpt = bundle_root(), Path(model).resolve()
    elif glob.has_magic(model):
        root, ckpt = bundle_root(), Path(model).absolute()
        model_files(ckpt)  # matches something
        return root, ckpt
    else:
        raise SegmentError(
            f"--model {model}: not one of {', '.join(MODEL_NAMES)}, a bundle folder, a model file or a pattern of model files."
        )
    config = root / "configs" / "inference.json"
    if not config.is_file():
        raise SegmentError(f"bundle config not found: {config}.")
    if not ckpt.is_file():
        raise SegmentError(f"no trained model at {ckpt}: train the bundle first or pass --model MODEL_FILE.")
    return root, ckpt


def _output_target(output: Path, n_cases: int) -> tuple[Path, Path | None]:
    """(folder SaveImaged writes to, exact file name wanted or None)."""
    if output.name.endswith(NIFTI_SUFFIXES):
        if n_cases != 1:
            raise SegmentError(f"-o {output}: a file name, but the input has {n_cases} images; give a folder.")
        return output.parent, output
    return output, None


def _volumes(pred, names: dict[int, str]) -> str:
    """The volume of every label of a saved label map, in mL."""
    voxel_ml = abs(float(torch.linalg.det(pred.affine[:3, :3].double()))) / 1000.0
    labels, counts = torch.unique(pred.as_tensor().round().long(), return_counts=True)
    volumes = [f"{names.get(int(v), int(v))} {c * voxel_ml:.1f} mL" for v, c in zip(labels.tolist(), counts.tolist()) if v]
    return ", ".join(volumes) or "nothing found"


def _input_error(error: BaseException) -> InvalidInputError | None:
    """The InvalidInputError behind an error of the config parser (which wraps what its expressions raise)."""
    while error is not None and not isinstance(error, InvalidInputError):
        error = error.__cause__ or error.__context__
    return error


def segment(
    input: str,
    output: str,
    model: str = "synapse",
    device: str = "auto",
    tta: bool = False,
    series: str | None = None,
    precision: str = "auto",
    threads: int | str = "auto",
) -> list[Path]:
    """Segment ``input`` into ``output``; prints one line per case (the file written and the volume of each
    class, named as the model's plan names them); returns the written files.

    Raises:
        SegmentError, InvalidInputError: with a one-line message.
    """
    root, ckpt = resolve_model(model)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise SegmentError("--device cuda: no CUDA device available.")
    try:
        precision_line = describe_precision(precision, device)
    except ValueError as e:
        raise SegmentError(str(e)) from e
    plan = model_plan(model_files(ckpt)[0])
    if plan["spatial_dims"] == 2 and plan["axcodes"] is None:
        return _segment_photos(input, output, ckpt, plan, device)
    names = class_names(plan)
    try:
        cases = inference_datalist(input=input, series_uid=series)
    except FileNotFoundError as e:
        raise SegmentError(str(e)) from e
    folder, exact = _output_target(Path(output), len(cases))
    check_output_dir(folder)

    with tempfile.TemporaryDirectory(dir=folder, prefix=".dlka-segment-") as staging:
        # every value is passed as a Python object or an absolute path, never as a config string that the
        # parser would evaluate ($), resolve (@) or expand (%): command-line values are data
        workflow = ConfigWorkflow(
            config_file=str(root / "configs" / "inference.json"),
            meta_file=str(root / "configs" / "metadata.json"),
            workflow_type="infer",
            bundle_root=str(root),
            ckpt_path=str(ckpt),
            data=cases,  # checked above: not again by the config
            output_dir=staging,
            device=torch.device(device),
            tta=tta,
            image_reader=[SITKReader(series_uid=series), "NibabelReader"],
            precision=precision,
            threads=threads,
        )
        print(f"dlka-segment: precision {precision_line}", flush=True)
        staged: list[tuple[Path, str]] = []

        def report(engine) -> None:
            for item in engine.state.output:
                pred = item["pred"]
                staged.append((Path(pred.meta["saved_to"]), _volumes(pred, names)))

        try:
            workflow.initialize()
            evaluator = workflow.parser.get_parsed_content("evaluator")
            ProgressBar(desc="cases", persist=True).attach(evaluator)
            evaluator.add_event_handler(Events.ITERATION_COMPLETED, report)
            workflow.run()
            workflow.finalize()
        except Exception as e:
            raise _input_error(e) or e

        # results are moved out of the staging folder only when every case succeeded
        written = []
        for (path, volumes), case in zip(staged, cases):
            target = exact if exact is not None else folder / path.name
            shutil.move(str(path), target)
            written.append(target)
            print(f"{Path(case['image']).name} -> {target}: {volumes}", flush=True)
    return written


def _segment_photos(input: str, output: str, ckpt: Path, plan: dict, device: str) -> list[Path]:
    """A photograph model (e.g. ``dlka2d_skin``): binary mask PNGs at the inputs' own sizes in ``output``."""
    from dlka_monai.inference.skin import image_files, segment_images

    if glob.has_magic(str(ckpt)):
        raise SegmentError(f"--model {ckpt}: ensembles of photograph models are not supported; give one model.")
    files = image_files(input)
    if Path(output).suffix:
        raise SegmentError(f"-o {output}: give a folder for the masks of a photograph model.")
    check_output_dir(output)
    network, _ = load_model(ckpt)
    written = segment_images(files, network, output, plan["normalization"], device=device)
    for image, mask in zip(files, written):
        print(f"{image.name} -> {mask}", flush=True)
    return written


def _threads(value: str) -> int | str:
    if value == "auto" or (value.isdigit() and int(value) > 0):
        return value if value == "auto" else int(value)
    raise ArgumentTypeError(f"expected auto or a count, got {value!r}")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="dlka-segment", description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument(
        "-i", "--input", required=True,
        help="NIfTI file, folder of NIfTI files, DICOM series folder, or glob; for a photograph model a JPG, PNG or BMP image or a folder of them",
    )
    parser.add_argument("-o", "--output", required=True, help="output .nii.gz file (one input) or folder")
    parser.add_argument(
        "--model",
        default="synapse",
        help=f"{' | '.join(MODEL_NAMES)} | bundle folder | model file | quoted pattern of model files, e.g. "
        "'models/fold_*/model.pt' for the ensemble of the folds (default: synapse)",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--tta", action="store_true", help="average over the 8 axis-flip combinations (8x slower)")
    parser.add_argument("--series", help="SeriesInstanceUID to read from a DICOM folder holding several series")
    parser.add_argument(
        "--precision", default="auto", choices=PRECISIONS,
        help="the network's precision; auto: bf16 where the CPU (AMX-BF16, AVX512-BF16) or GPU computes it natively, else fp32 (default: auto)",
    )
    parser.add_argument(
        "--threads", default="auto", type=_threads,
        help="CPU threads: a count, or auto (one per CPU not kept busy by other processes; one for small work) (default: auto)",
    )
    args = parser.parse_args(argv)
    try:
        written = segment(args.input, args.output, args.model, args.device, args.tta, args.series, args.precision, args.threads)
    except (SegmentError, InvalidInputError) as e:
        print(f"dlka-segment: error: {e}", file=sys.stderr)
        return 1
    print(f"dlka-segment: wrote {len(written)} label map(s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
