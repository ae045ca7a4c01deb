# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""``dlka-segment``: segment CT volumes from the command line with the bundle's inference config, or
dermoscopic photographs (JPG, PNG, BMP) with a skin model.

    dlka-segment -i scan.nii.gz -o scan_seg.nii.gz
    dlka-segment -i scans/ -o segmentations/ --model pancreas --tta
    dlka-segment -i dicom_series_folder/ -o out/ --model /path/to/bundle_or_model.pt
    dlka-segment -i scan.nii.gz -o scan_seg.nii.gz --model 'models/fold_*/model.pt'   # ensemble of folds
    dlka-segment -i photos/ -o masks/ --model models/skin/model.pt   # lesion masks, PNG at each photo's size
    dlka-segment -i dicom_series_folder/ -o out/ --output-type dicom_seg --statistics   # DICOM SEG + JSON

Paths are taken literally: a -i or --model path that exists is that file or folder, even if its name
holds glob characters (``run[1].pt``) or ``#``; only a pattern that names no existing file is expanded.
Outputs never replace an input, two inputs never write one output, and an existing output is replaced only
with --overwrite (for re-runs into the same folder). ``-o NAME.nii`` writes uncompressed NIfTI,
``-o NAME.nii.gz`` gzip-compressed.

The model's plan (stored with its weights) gives the network, the preprocessing and the class names, so
any model the bundle trained, or the packer packed, segments as it is. The label maps (uint8 NIfTI) are in
the input's space: same shape, affine and orientation. ``--output-type dicom_seg`` writes a DICOM
Segmentation object per DICOM series instead (the ``dicom`` extra); ``--statistics`` writes
``<name>_statistics.json`` beside each output (volume, voxel count, intensity, bounding box of each class).
"""

from __future__ import annotations

import gzip
import os
import shutil
import sys
import tempfile
from argparse import ArgumentTypeError, BooleanOptionalAction, RawDescriptionHelpFormatter
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events
from ignite.handlers import ProgressBar
from monai.bundle import ConfigWorkflow
from monai.transforms import LoadImage

from dlka_monai.bundle_files import bundle_root
from dlka_monai.cli import ArgumentParser, literal
from dlka_monai.data import NIFTI_SUFFIXES, InvalidInputError, SITKReader, check_output_dir, inference_datalist
from dlka_monai.inference.statistics import label_statistics, statistics_path, volume_summary, write_statistics
from dlka_monai.plan import class_names
from dlka_monai.runtime import PRECISIONS, describe_precision
from dlka_monai.weights import load_model, model_files, model_plan

__all__ = ["MODEL_NAMES", "main", "output_paths", "resolve_model", "segment"]

MODEL_NAMES = {"synapse": "models/model.pt", "pancreas": "models/pancreas/model.pt", "2d": "models/2d/model.pt"}
"""``--model`` names: where the repository bundle's training configs write each model."""


class SegmentError(Exception):
    """A failure reported to the user as one line."""


def resolve_model(model: str) -> tuple[Path, Path]:
    """``--model`` -> (bundle root, model file).

    A name of :data:`MODEL_NAMES`: that model of the repository bundle; a folder: a bundle
    (``configs/inference.json``, ``models/model.pt``); a file: a model for the repository bundle's configs;
    a glob pattern (``"models/fold_*/model.pt"``) that names no existing file: the ensemble of the models
    it matches, whose softmax probabilities are averaged. An existing path is always taken literally.
    """
    path = Path(model)
    if model in MODEL_NAMES:
        root = bundle_root()
        ckpt = root / MODEL_NAMES[model]
    elif path.is_dir():
        root = path.resolve()
        ckpt = root / "models" / "model.pt"
    elif path.is_file():
        root, ckpt = bundle_root(), path.resolve()
    elif not os.path.lexists(model) and model_files(path.absolute()) != [str(path.absolute())]:
        return bundle_root(), path.absolute()  # a pattern that matches model files
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


OUTPUT_TYPES = {"nifti": NIFTI_SUFFIXES, "dicom_seg": (".dcm",)}
"""``--output-type`` -> the file name endings of its outputs."""


def _output_target(output: Path, n_cases: int, suffixes: tuple[str, ...] = NIFTI_SUFFIXES) -> tuple[Path, Path | None]:
    """(folder SaveImaged writes to, exact file name wanted or None)."""
    if output.name.endswith(suffixes):
        if n_cases != 1:
            raise SegmentError(f"-o {output}: a file name, but the input has {n_cases} images; give a folder.")
        return output.parent, output
    return output, None


def _stem(image: str | os.PathLike) -> str:
    """The name MONAI's ``SaveImaged`` derives from an input path: its file name without the extension
    (``.nii.gz`` counting as one)."""
    stem, ext = os.path.splitext(os.path.basename(os.path.normpath(image)))
    return os.path.splitext(stem)[0] if ext == ".gz" else stem


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.realpath(a) == os.path.realpath(b) or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def output_paths(inputs: list[Path], targets: list[Path], overwrite: bool = False) -> list[Path]:
    """Check the planned outputs ``targets`` of ``inputs`` (one each, in order): no output is an input, no
    two inputs write one output, and none exists unless ``overwrite``. Returns ``targets``.

    Raises:
        SegmentError: in one line, naming the files.
    """
    for image, target in zip(inputs, targets):
        for other in inputs:
            if _same_file(target, other):
                raise SegmentError(
                    f"the output of {image} would be written over the input {other}; choose another -o "
                    "(an output folder apart from the inputs)."
                )
    first: dict[str, Path] = {}
    for image, target in zip(inputs, targets):
        key = os.path.realpath(target)
        if key in first:
            raise SegmentError(f"{first[key]} and {image} would both be written to {target}; segment them into separate -o folders.")
        first[key] = image
    if not overwrite:
        existing = [str(t) for t in targets if os.path.lexists(t)]
        if existing:
            more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
            raise SegmentError(
                f"{', '.join(existing[:3])}{more} exist(s), e.g. from an earlier run: pass --overwrite to replace "
                "the outputs (as a re-run does), or choose another -o."
            )
    for target in targets:
        if target.is_dir():
            raise SegmentError(f"{target} is a folder; it cannot be replaced by a label map.")
    return targets


def _place(staged: Path, target: Path) -> None:
    """Move a staged output (a ``.nii.gz`` label map or a DICOM SEG) to ``target``; a label map uncompressed
    when the name ends in ``.nii``."""
    if target.name.endswith(".nii"):
        partial = staged.with_suffix(".part")
        with gzip.open(staged, "rb") as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
        staged = partial
    os.replace(staged, target)


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
    tta: bool | None = None,
    series: str | None = None,
    overwrite: bool = False,
    output_type: str = "nifti",
    statistics: bool = False,
    precision: str = "auto",
    threads: int | str = "auto",
) -> list[Path]:
    """Segment ``input`` into ``output``; prints one line per case (the file written and the volume of each
    class, named as the model's plan names them); returns the written files.

    Every path is taken literally (see :func:`resolve_model`, :func:`output_paths`); ``overwrite``
    replaces outputs of an earlier run, never an input. ``output_type="dicom_seg"`` writes a DICOM
    Segmentation object per DICOM series input (none for a series where nothing was found); ``statistics``
    writes ``<name>_statistics.json`` beside each output
    (:func:`dlka_monai.inference.statistics.label_statistics`, the numbers the console prints). ``tta``
    None mirrors as the model's recipe says (the authors' recipes do, ours do not); ``precision`` and
    ``threads`` are :mod:`dlka_monai.runtime`'s settings.

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
    files = model_files(ckpt)
    plan = model_plan(files[0])
    if plan["spatial_dims"] == 2 and plan["axcodes"] is None:
        if output_type != "nifti" or statistics:
            raise SegmentError("--output-type dicom_seg and --statistics are for volumes, not for a photograph model.")
        return _segment_photos(input, output, files, plan, device, overwrite)
    names = class_names(plan)
    if output_type == "dicom_seg":
        from dlka_monai.inference.dicom_seg import check_highdicom

        try:
            check_highdicom()
        except ImportError as e:
            raise SegmentError(str(e)) from e
    try:
        cases = inference_datalist(input=input, series_uid=series)
    except (FileNotFoundError, OSError) as e:
        raise SegmentError(str(e)) from e
    if output_type == "dicom_seg":
        not_series = [case["image"] for case in cases if not Path(case["image"]).is_dir()]
        if not_series:
            raise SegmentError(f"--output-type dicom_seg needs DICOM series folders as input, not {', '.join(map(str, not_series))}.")
    folder, exact = _output_target(Path(output), len(cases), OUTPUT_TYPES[output_type])
    inputs = [Path(case["image"]) for case in cases]
    suffix = ".dcm" if output_type == "dicom_seg" else ".nii.gz"
    targets = output_paths(inputs, [exact or folder / f"{_stem(i)}_seg{suffix}" for i in inputs], overwrite)
    check_output_dir(folder)

    with tempfile.TemporaryDirectory(dir=folder, prefix=".dlka-segment-") as staging:
        # every value is passed as a Python object or literal(): never a config string that the parser would
        # evaluate ($), resolve (@), expand (%) or rewrite (# -> ::): command-line values are data
        workflow = ConfigWorkflow(
            config_file=str(root / "configs" / "inference.json"),
            meta_file=str(root / "configs" / "metadata.json"),
            workflow_type="infer",
            bundle_root=literal(str(root)),
            ckpt_path=literal(str(ckpt)),
            data=literal(cases),  # checked above: not again by the config
            output_dir=literal(staging),
            device=torch.device(device),
            **({} if tta is None else {"tta": tta}),  # None: the model's recipe decides
            image_reader=[SITKReader(series_uid=series), "NibabelReader"],
            precision=precision,
            threads=threads,
        )
        trained = f"; the model was trained in {plan['training_precision']}" if plan.get("training_precision") else ""
        print(f"dlka-segment: precision {precision_line}{trained}", flush=True)
        staged: list[tuple[Path, dict]] = []
        # the input's intensities, on the grid of the label map, for the statistics
        load = LoadImage(reader=[SITKReader(series_uid=series), "NibabelReader"], image_only=True) if statistics else None

        def report(engine) -> None:
            for item in engine.state.output:
                pred = item["pred"]
                image = load(pred.meta["filename_or_obj"]) if load else None
                staged.append((Path(pred.meta["saved_to"]), label_statistics(pred, names, image)))

        try:
            workflow.initialize()
            evaluator = workflow.parser.get_parsed_content("evaluator")
            ProgressBar(desc="cases", persist=True).attach(evaluator)
            evaluator.add_event_handler(Events.ITERATION_COMPLETED, report)
            workflow.run()
            workflow.finalize()
        except Exception as e:
            raise _input_error(e) or e

        if len({path for path, _ in staged}) != len(cases):  # a name MONAI derives otherwise than _stem
            raise SegmentError(f"two inputs were saved under one name in {folder}; segment them into separate -o folders.")
        if output_type == "dicom_seg":
            staged = [(_dicom_seg(path, case["image"], series, names, plan), stats) for (path, stats), case in zip(staged, cases)]
        # results are moved out of the staging folder only when every case succeeded
        written = []
        for (path, stats), case, target in zip(staged, cases, targets):
            if path is None:
                print(f"{Path(case['image']).name}: nothing found, no DICOM SEG written", flush=True)
                continue
            _place(path, target)
            written.append(target)
            if statistics:
                write_statistics(statistics_path(target), stats, image=case["image"], segmentation=target, preset=plan["preset"])
            print(f"{Path(case['image']).name} -> {target}: {volume_summary(stats)}", flush=True)
    return written


def _dicom_seg(label_file: Path, series_folder: str, series: str | None, names: dict[int, str], plan: dict) -> Path | None:
    """The staged NIfTI label map ``label_file`` as a DICOM SEG of its series, beside it; None if empty."""
    import nibabel as nib

    from dlka_monai.inference.dicom_seg import write_dicom_seg

    label_map = np.asanyarray(nib.load(label_file).dataobj)
    target = label_file.with_name(label_file.name.removesuffix(".gz").removesuffix(".nii") + ".dcm")
    try:
        return write_dicom_seg(label_map, SITKReader(series_uid=series).series_files(series_folder), names, target, plan)
    except (AttributeError, ValueError) as e:  # source slices that lack what a DICOM SEG must copy from them
        raise SegmentError(f"{series_folder}: cannot be written as DICOM SEG: {e}") from e


def _segment_photos(input: str, output: str, files: list[str], plan: dict, device: str, overwrite: bool) -> list[Path]:
    """A photograph model (e.g. ``dlka2d_skin``): binary mask PNGs at the inputs' own sizes in ``output``."""
    from dlka_monai.inference.skin import image_files, segment_images

    if len(files) != 1:
        raise SegmentError(f"--model matches {len(files)} files: ensembles of photograph models are not supported; give one model.")
    images = image_files(input)
    if Path(output).suffix:
        raise SegmentError(f"-o {output}: give a folder for the masks of a photograph model.")
    output_paths(images, [Path(output) / f"{p.stem}_segmentation.png" for p in images], overwrite)
    check_output_dir(output)
    network, _ = load_model(files[0])
    written = segment_images(images, network, output, plan["normalization"], device=device)
    for image, mask in zip(images, written):
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
        help="NIfTI file, folder of NIfTI files, DICOM series folder, or quoted glob pattern (expanded only when "
        "no file has that very name); for a photograph model a JPG, PNG or BMP image or a folder of them",
    )
    parser.add_argument(
        "-o", "--output", required=True,
        help="output .nii.gz (compressed) or .nii file (one input), or folder; never an input",
    )
    parser.add_argument(
        "--model",
        default="synapse",
        help=f"{' | '.join(MODEL_NAMES)} | bundle folder | model file | quoted pattern of model files, e.g. "
        "'models/fold_*/model.pt' for the ensemble of the folds, expanded only when no file has that very name "
        "(default: synapse)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing outputs (e.g. of an earlier run); inputs are never replaced"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--tta", action=BooleanOptionalAction, default=None,
        help="average over the axis flips (8 passes for 3 axes, 8x slower); default: as the model's recipe "
        "(the authors' recipes mirror, ours do not)",
    )
    parser.add_argument("--series", help="SeriesInstanceUID to read from a DICOM folder holding several series")
    parser.add_argument(
        "--output-type", default="nifti", choices=list(OUTPUT_TYPES),
        help="nifti: uint8 label maps (default); dicom_seg: a DICOM Segmentation object per DICOM series input "
        "(pip install \"dlka_monai[dicom]\")",
    )
    parser.add_argument(
        "--statistics", action="store_true",
        help="write <name>_statistics.json beside each output: volume, voxel count, mean and std intensity, bounding box of each class",
    )
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
        written = segment(
            args.input, args.output, args.model, args.device, args.tta, args.series, args.overwrite, args.output_type,
            args.statistics, args.precision, args.threads,
        )
    except (SegmentError, InvalidInputError, OSError) as e:
        print(f"dlka-segment: error: {e}", file=sys.stderr)
        return 1
    kind = "DICOM SEG file(s)" if args.output_type == "dicom_seg" else "label map(s)"
    print(f"dlka-segment: wrote {len(written)} {kind}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
