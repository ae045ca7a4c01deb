"""Whole-volume inference of a CT-sized volume through the bundle's ``configs/inference.json``.

Writes a synthetic CT (default 512x512x100 voxels of 0.7x0.7x2.5 mm, int16 HU, LPS-like affine; the
demo generator's anatomy resampled onto that grid) as NIfTI, or takes ``--input``, and runs the
inference config on it in-process (``ConfigWorkflow``, as ``dlka-segment`` does): read, reorient,
resample to ``pixdim``, sliding-window inference, softmax, ``Invertd`` back to the input grid, argmax,
save. The network has random weights unless ``--checkpoint`` is given (the compute is the same).

Reports: total seconds (config parsing and network construction included), the phases (load +
preprocess, sliding window, of which network forward, postprocess + save), the number of windows,
the resampled shape, peak memory (max RSS of this process; on CUDA also the allocator peak), against
the target: <= 60 s on 2 CPU cores.

    python benchmarks/bench_inference.py [--size 512,512,100] [--spacing 0.7,0.7,2.5] [--overlap 0.5]
        [--tta] [--device cpu|cuda] [--threads N] [--input CT.nii.gz] [--checkpoint model.pt] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.engines.utils import IterationEvents
from scipy import ndimage

from dlka_monai.data import generate_demo_dataset
from dlka_monai.data.demo import _save_nifti as save_nifti

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 60.0


def _triple(text: str, kind=float) -> tuple:
    values = tuple(kind(v) for v in text.split(","))
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated values, got {text!r}")
    return values


def write_phantom(path: Path, size: tuple[int, int, int], spacing: tuple[float, float, float], seed: int = 0) -> None:
    """A demo case (240x192x48 voxels of 1.25x1.25x3 mm) resampled onto ``size`` voxels of ``spacing`` mm,
    saved as int16 NIfTI with voxel axes to patient left, posterior, superior (as DICOM-converted CT often is).

    In-plane the anatomy keeps its size in mm (air around it, as in a real field of view); along z it is
    stretched over the whole volume so that every slice holds abdomen.
    """
    with tempfile.TemporaryDirectory() as tmp:
        demo = json.loads(generate_demo_dataset(tmp, num_cases=3, seed=seed).read_text())
        src = nib.load(Path(tmp) / demo["training"][0]["image"])
        src_array = np.asarray(src.dataobj, dtype=np.float32)
        src_spacing = src.header.get_zooms()
    n_src, n_dst = np.asarray(src_array.shape, float), np.asarray(size, float)
    scale = np.asarray(spacing) / np.asarray(src_spacing)
    scale[2] = (n_src[2] - 1) / (n_dst[2] - 1)
    offset = (n_src - 1) / 2 - scale * (n_dst - 1) / 2  # centre onto centre
    image = ndimage.affine_transform(src_array, scale, offset, output_shape=size, order=1, cval=-1000.0, output=np.float32)
    image += np.random.default_rng(seed).normal(0.0, 15.0, size).astype(np.float32)  # scanner noise, air included
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((n_dst - 1) / 2) + np.array([0.0, 0.0, -350.0])  # centre at the abdomen's height
    save_nifti(np.clip(np.rint(image), -1024, 3071).astype(np.int16), affine, path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_inference(image: Path, out_dir: Path, device: torch.device, args: argparse.Namespace) -> dict:
    overrides = dict(input=str(image), output_dir=str(out_dir), device=f"$torch.device('{device}')", tta=args.tta)
    if args.overlap is not None:
        overrides["overlap"] = args.overlap
    if args.checkpoint:
        overrides["ckpt_path"] = str(Path(args.checkpoint).resolve())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    workflow = ConfigWorkflow(
        config_file=str(ROOT / "configs" / "inference.json"),
        meta_file=str(ROOT / "configs" / "metadata.json"),
        workflow_type="infer",
        bundle_root=str(ROOT),
        **overrides,
    )
    if not args.checkpoint:
        # random weights of the default preset's plan (no model file): no checkpoint loader
        workflow.parser["base_handlers"] = "$[@stats_handler]"
    workflow.initialize()
    evaluator = workflow.parser.get_parsed_content("evaluator")

    # phase times from the engine's events: the dataloader runs the preprocessing (num_workers 0), the
    # inferer runs between GET_BATCH_COMPLETED and FORWARD_COMPLETED, the postprocessing is the
    # ITERATION_COMPLETED handler registered before this one
    stats = dict(load_s=0.0, sliding_window_s=0.0, network_s=0.0, postprocess_s=0.0, windows=0)
    marks = {}

    def now() -> float:
        _sync(device)
        return time.perf_counter()

    def phase(name: str, since: str | None = None):
        def handler(engine) -> None:
            marks[name] = now()
            if since is not None:
                stats[f"{name}_s"] += marks[name] - marks[since]

        return handler

    evaluator.add_event_handler(Events.GET_BATCH_STARTED, phase("batch"))
    evaluator.add_event_handler(Events.GET_BATCH_COMPLETED, phase("load", since="batch"))
    evaluator.add_event_handler(
        Events.GET_BATCH_COMPLETED, lambda e: stats.update(resampled_shape=list(e.state.batch["image"].shape[2:]))
    )
    evaluator.add_event_handler(IterationEvents.FORWARD_COMPLETED, phase("sliding_window", since="load"))
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, phase("postprocess", since="sliding_window"))

    def before_forward(module, inputs) -> None:
        stats["windows"] += inputs[0].shape[0]
        marks["net"] = now()

    def after_forward(module, inputs, output) -> None:
        stats["network_s"] += now() - marks["net"]

    evaluator.network.register_forward_pre_hook(before_forward)
    evaluator.network.register_forward_hook(after_forward)
    setup_s = time.perf_counter() - start
    workflow.run()
    workflow.finalize()
    total_s = time.perf_counter() - start
    if not list(out_dir.glob("*_seg.nii.gz")):
        raise RuntimeError(f"the inference config wrote no label map to {out_dir}")
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(
        **stats,
        setup_s=setup_s,
        total_s=total_s,
        overlap=workflow.parser.get_parsed_content("overlap"),
        roi_size=list(workflow.parser.get_parsed_content("img_size")),
        pixdim=list(workflow.parser.get_parsed_content("pixdim")),
        amp=bool(workflow.parser.get_parsed_content("amp")),
        s_per_window=stats["network_s"] / max(stats["windows"], 1),
        # max RSS is a high-water mark of the whole process: the phantom, written before, peaks far lower
        rss_before_gib=rss_before * 1024 / 2**30,
        peak_rss_gib=peak_rss / 2**30,
        peak_cuda_gib=torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=lambda s: _triple(s, int), default=(512, 512, 100), help="x,y,z voxels")
    parser.add_argument("--spacing", type=_triple, default=(0.7, 0.7, 2.5), help="x,y,z mm")
    parser.add_argument("--input", default=None, help="a NIfTI CT file to use instead of the synthetic volume")
    parser.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (default: the config's)")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation (8 passes)")
    parser.add_argument("--checkpoint", default=None, help="weights to load (default: random init)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} {platform.processor()}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.input:
            image = Path(args.input)
        else:
            image = Path(tmp) / "ct.nii.gz"
            write_phantom(image, args.size, args.spacing)
        header = nib.load(image).header
        size, spacing = list(header.get_data_shape()), [round(float(s), 4) for s in header.get_zooms()]
        row = run_inference(image, Path(tmp) / "out", device, args)
    row = dict(input=args.input or "synthetic", size=size, spacing=spacing, tta=args.tta, **row)

    print(
        f"{'input x,y,z':>14} {'resampled z,y,x':>16} {'windows':>8} {'setup s':>8} {'load s':>7} {'window s':>9}"
        f" {'net s':>7} {'s/win':>6} {'post s':>7} {'total s':>8} {'RSS GiB':>8}" + (" CUDA GiB" if device.type == "cuda" else "")
    )
    line = (
        f"{'x'.join(map(str, size)):>14} {'x'.join(map(str, row['resampled_shape'])):>16} {row['windows']:>8}"
        f" {row['setup_s']:>8.1f} {row['load_s']:>7.1f} {row['sliding_window_s']:>9.1f} {row['network_s']:>7.1f}"
        f" {row['s_per_window']:>6.2f} {row['postprocess_s']:>7.1f} {row['total_s']:>8.1f} {row['peak_rss_gib']:>8.2f}"
    )
    if device.type == "cuda":
        line += f" {row['peak_cuda_gib']:>8.2f}"
    print(line)
    spacing_text = "x".join(f"{s:g}" for s in spacing)
    print(
        f"spacing {spacing_text} mm -> pixdim {row['pixdim']}, roi {row['roi_size']}, overlap {row['overlap']},"
        f" tta {args.tta}, amp {row['amp']}"
    )
    target = f"target <= {TARGET_S:g} s for 512x512x~100 on 2 CPU cores"
    if device.type == "cpu" and size[:2] == [512, 512]:
        target += ": " + ("met" if row["total_s"] <= TARGET_S else "missed")
    threads = torch.get_num_threads()
    print(f"total {row['total_s']:.1f} s for {'x'.join(map(str, size))} on {device}, {threads} threads ({target})")
    if args.json:
        meta = dict(device=str(device), torch=torch.__version__, threads=torch.get_num_threads(), processor=platform.processor())
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, results=[row]), f, indent=1)


if __name__ == "__main__":
    main()
