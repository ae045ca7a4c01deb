"""Whole-volume inference of a CT-sized volume through the bundle's ``configs/inference.json``.

Writes a synthetic CT (default 512x512x100 voxels of 0.7x0.7x2.5 mm, int16 HU, LPS-like affine; the
demo generator's anatomy resampled onto that grid) as NIfTI, or takes ``--input``, and runs the
inference config on it in-process (``ConfigWorkflow``, as ``dlka-segment`` does): read, reorient,
resample to ``pixdim``, sliding-window inference, softmax, ``Invertd`` back to the input grid, argmax,
save. The network has random weights unless ``--checkpoint`` is given (the compute is the same).

Reports: total seconds (config parsing and network construction included), the phases (load +
preprocess, sliding window, of which network forward, postprocess + save), the number of windows,
the resampled shape, peak memory (max RSS of this process; on CUDA also the allocator peak), against
the target: <= 30 s on 2 CPU cores. The network runs in the config's ``precision`` (``--precision``,
default ``auto``: bf16 autocast where the CPU or GPU computes it natively). Beside the time: the FLOP
limit, the GEMM/conv FLOPs of all windows (counted by ``torch.utils.flop_counter`` on one window) over
the fp32 (and bf16) matmul rate measured in this run at its thread count: the least time the network's
arithmetic could take.

``--precisions fp32,bf16`` runs the config once per precision on the same volume and weights and adds a
table: time and the voxel agreement of each label map with the first one's (use a trained
``--checkpoint``: with random weights the logits are nearly tied and agreement means little).

``--peer`` then runs MONAI's SwinUNETR on the same file with the settings of the MONAI model zoo's
``swin_unetr_btcv_segmentation`` bundle (feature size 48, RAS, 1.5x1.5x2 mm bilinear, HU -175..250 to
0..1, 96^3 windows with overlap 0.5 and a batch of 4, softmax, ``Invertd``, argmax, save; random
weights, the same engine) and prints our total time over its total time, both from this run. The
phases are timed the same way for both. ``--skip_ours`` runs the peer alone. The "net grid" column is the
resampled volume in each network's axis order: z-first for ours, RAS x, y, z for SwinUNETR.

    python benchmarks/bench_inference.py [--size 512,512,100] [--spacing 0.7,0.7,2.5] [--overlap 0.5]
        [--tta] [--device cpu|cuda] [--threads N] [--input CT.nii.gz] [--checkpoint model.pt]
        [--precision auto|fp32|bf16|fp16] [--precisions fp32,bf16] [--peer] [--json PATH]
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
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import SwinUNETR
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    Invertd,
    LoadImaged,
    Orientationd,
    SaveImaged,
    ScaleIntensityRanged,
    Spacingd,
)
from scipy import ndimage

from dlka_monai.data import generate_demo_dataset
from dlka_monai.data.demo import _save_nifti as save_nifti
from dlka_monai.networks.layers.deform_conv_fast import deform_conv3d_fast, numba_kernels
from dlka_monai.runtime import PRECISIONS, describe_precision

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 30.0


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


def _timed_run(evaluator, device: torch.device, start: float, run) -> dict:
    """Run ``run()`` (which runs ``evaluator``) and time its phases from the engine's events.

    The dataloader runs the preprocessing (num_workers 0), the inferer runs between GET_BATCH_COMPLETED
    and FORWARD_COMPLETED, the postprocessing is the ITERATION_COMPLETED handler registered before these.
    """
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
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stats["setup_s"] = time.perf_counter() - start
    run()
    stats["total_s"] = time.perf_counter() - start
    stats["s_per_window"] = stats["network_s"] / max(stats["windows"], 1)
    # max RSS is a high-water mark of the whole process: what ran before in it may have peaked higher
    stats["rss_before_gib"] = rss_before / 2**20
    stats["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    stats["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return stats


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 3, device: torch.device = torch.device("cpu")) -> float:
    """Best rate of ``repeats`` ``n``³ matmuls in ``dtype`` at the current thread count, in GFLOP/s."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up (oneDNN/cuBLAS kernel selection)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def window_gflop(network: torch.nn.Module, roi_size, device: torch.device) -> float:
    """GEMM and convolution GFLOPs of one forward pass of ``network`` on one window (fp32, no grad)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        network(torch.zeros(1, 1, *roi_size, device=device))
    return counter.get_total_flops() / 1e9


def run_inference(image: Path, out_dir: Path, device: torch.device, args: argparse.Namespace, precision: str | None = None) -> dict:
    precision = precision or args.precision
    overrides = dict(input=str(image), output_dir=str(out_dir), device=f"$torch.device('{device}')", tta=args.tta, precision=precision)
    overrides["threads"] = args.threads or "auto"  # the config's thread policy, unless --threads fixes the count
    if args.overlap is not None:
        overrides["overlap"] = args.overlap
    if args.checkpoint:
        overrides["ckpt_path"] = str(Path(args.checkpoint).resolve())
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

    def run() -> None:
        workflow.run()
        workflow.finalize()

    stats = _timed_run(evaluator, device, start, run)
    if not list(out_dir.glob("*_seg.nii.gz")):
        raise RuntimeError(f"the inference config wrote no label map to {out_dir}")
    roi_size = list(workflow.parser.get_parsed_content("img_size"))
    return dict(
        model="dlka3d_synapse",
        **stats,
        overlap=workflow.parser.get_parsed_content("overlap"),
        roi_size=roi_size,
        pixdim=list(workflow.parser.get_parsed_content("pixdim")),
        precision=describe_precision(precision, device),
        window_gflop=window_gflop(evaluator.network, roi_size, device),
    )


# the MONAI model zoo's swin_unetr_btcv_segmentation inference settings
PEER = dict(pixdim=(1.5, 1.5, 2.0), hu_range=(-175.0, 250.0), roi_size=(96, 96, 96), sw_batch_size=4, overlap=0.5)


def run_peer(image: Path, out_dir: Path, device: torch.device) -> dict:
    """MONAI's SwinUNETR (random weights) on ``image`` with the model zoo bundle's inference settings, in
    the same engine as ours (``SupervisedEvaluator``, one case, no workers). Its bundle enables AMP, which
    only changes CUDA runs; the CPU runs here are float32 for both."""
    start = time.perf_counter()
    preprocessing = Compose(
        [
            LoadImaged("image"),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=PEER["pixdim"], mode="bilinear"),
            ScaleIntensityRanged("image", *PEER["hu_range"], 0.0, 1.0, clip=True),
            EnsureTyped("image"),
        ]
    )
    postprocessing = Compose(
        [
            Activationsd("pred", softmax=True),
            Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=False, to_tensor=True),
            AsDiscreted("pred", argmax=True),
            SaveImaged("pred", output_dir=str(out_dir), output_postfix="seg", separate_folder=False, print_log=False),
        ]
    )
    network = SwinUNETR(in_channels=1, out_channels=14, feature_size=48).to(device)
    evaluator = SupervisedEvaluator(
        device=device,
        val_data_loader=DataLoader(Dataset([{"image": str(image)}], preprocessing), batch_size=1, num_workers=0),
        network=network,
        inferer=SlidingWindowInferer(PEER["roi_size"], sw_batch_size=PEER["sw_batch_size"], overlap=PEER["overlap"]),
        postprocessing=postprocessing,
        amp=device.type == "cuda",
    )
    stats = _timed_run(evaluator, device, start, evaluator.run)
    if not list(out_dir.glob("*_seg.nii.gz")):
        raise RuntimeError(f"the SwinUNETR run wrote no label map to {out_dir}")
    return dict(model="SwinUNETR (model zoo settings)", **stats, overlap=PEER["overlap"], roi_size=list(PEER["roi_size"]),
                pixdim=list(PEER["pixdim"]), precision="fp16 autocast on cuda" if device.type == "cuda" else "fp32")


def _warm_up_kernels(device: torch.device) -> str:
    """Load (and on a fresh checkout compile) the deformable conv's kernels before timing; returns the path."""
    x = torch.zeros(1, 2, 3, 3, 3, device=device)
    deform_conv3d_fast(x, torch.zeros(1, 81, 3, 3, 3, device=device), torch.zeros(2, 2, 3, 3, 3, device=device), None, 1, 1, 1)
    if device.type == "cpu":
        kernels = numba_kernels()
        return f"numba {kernels.numba.__version__} kernels" if kernels is not None else "pure PyTorch (numba not installed)"
    return "CUDA"


def _table(rows: list[dict], device: torch.device) -> None:
    print(
        f"{'model':>32} {'input x,y,z':>14} {'net grid':>12} {'windows':>8} {'setup s':>8} {'load s':>7} {'window s':>9}"
        f" {'net s':>7} {'s/win':>6} {'post s':>7} {'total s':>8} {'RSS GiB':>8}" + (" CUDA GiB" if device.type == "cuda" else "")
    )
    for row in rows:
        line = (
            f"{row['model']:>32} {'x'.join(map(str, row['size'])):>14} {'x'.join(map(str, row['resampled_shape'])):>12}"
            f" {row['windows']:>8} {row['setup_s']:>8.1f} {row['load_s']:>7.1f} {row['sliding_window_s']:>9.1f}"
            f" {row['network_s']:>7.1f} {row['s_per_window']:>6.2f} {row['postprocess_s']:>7.1f} {row['total_s']:>8.1f}"
            f" {row['peak_rss_gib']:>8.2f}"
        )
        if device.type == "cuda":
            line += f" {row['peak_cuda_gib']:>8.2f}"
        print(line)
        spacing_text = "x".join(f"{s:g}" for s in row["spacing"])
        print(
            f"{'':>32} spacing {spacing_text} mm -> pixdim {row['pixdim']}, roi {row['roi_size']},"
            f" overlap {row['overlap']}, {row['precision']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=lambda s: _triple(s, int), default=(512, 512, 100), help="x,y,z voxels")
    parser.add_argument("--spacing", type=_triple, default=(0.7, 0.7, 2.5), help="x,y,z mm")
    parser.add_argument("--input", default=None, help="a NIfTI CT file to use instead of the synthetic volume")
    parser.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (default: the config's)")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation (8 passes)")
    parser.add_argument("--checkpoint", default=None, help="weights to load (default: random init)")
    parser.add_argument("--peer", action="store_true", help="also run MONAI's SwinUNETR with the model zoo's settings")
    parser.add_argument("--skip_ours", action="store_true", help="with --peer: run only SwinUNETR")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the config's policy, threads auto)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="the config's precision (default: auto)")
    parser.add_argument(
        "--precisions", default=None, type=lambda v: v.split(","),
        help="comma-separated precisions to run one after the other (e.g. fp32,bf16): a table of time and label agreement",
    )
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    for p in args.precisions or []:
        if p not in PRECISIONS:
            parser.error(f"--precisions: {p!r} is not one of {', '.join(PRECISIONS)}")
    if args.skip_ours and not args.peer:
        parser.error("--skip_ours needs --peer")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    path = _warm_up_kernels(device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} {platform.processor()}")
    print(f"deformable conv path: {path}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.input:
            image = Path(args.input)
        else:
            image = Path(tmp) / "ct.nii.gz"
            write_phantom(image, args.size, args.spacing)
        header = nib.load(image).header
        size, spacing = list(header.get_data_shape()), [round(float(s), 4) for s in header.get_zooms()]
        case = dict(input=args.input or "synthetic", size=size, spacing=spacing, tta=args.tta)
        if not args.skip_ours:
            rows.append(dict(case, **run_inference(image, Path(tmp) / "out", device, args)))
        if args.peer:
            rows.append(dict(case, **run_peer(image, Path(tmp) / "peer", device)))
        precision_rows = _precision_table(image, Path(tmp), device, args, case) if args.precisions else []
    _table(rows, device)
    threads = torch.get_num_threads()
    rates = {"fp32": matmul_gflops(torch.float32, device=device), "bf16": matmul_gflops(torch.bfloat16, device=device)}
    print(f"matmul 2048^3 at {threads} threads: fp32 {rates['fp32']:.0f} GFLOP/s, bf16 {rates['bf16']:.0f} GFLOP/s (this run)")
    for row in rows:
        if "window_gflop" in row:
            total = row["window_gflop"] * row["windows"]
            row["gflop"], row["flop_limit_s"] = total, {k: total / v for k, v in rates.items()}
            print(
                f"{row['model']}: {row['windows']} windows x {row['window_gflop']:.1f} GFLOP = {total:.0f} GFLOP; "
                f"FLOP limit fp32 {row['flop_limit_s']['fp32']:.1f} s, bf16 {row['flop_limit_s']['bf16']:.1f} s; "
                f"network {row['network_s']:.1f} s ({row['precision']}), total {row['total_s']:.1f} s"
            )
    if not args.skip_ours:
        ours = rows[0]
        target = f"target <= {TARGET_S:g} s for 512x512x~100 on 2 CPU cores"
        if device.type == "cpu" and size[:2] == [512, 512]:
            target += ": " + ("met" if ours["total_s"] <= TARGET_S else "missed")
        print(f"total {ours['total_s']:.1f} s for {'x'.join(map(str, size))} on {device}, {threads} threads, tta {args.tta} ({target})")
        if args.peer:
            peer = rows[1]
            print(
                f"dlka3d_synapse / SwinUNETR (model zoo settings), same run: total {ours['total_s'] / peer['total_s']:.2f},"
                f" network {ours['network_s'] / peer['network_s']:.2f}"
            )
    if precision_rows:
        print(f"{'precision':>36} {'network s':>10} {'s/win':>6} {'total s':>8} {'agreement':>10}")
        for row in precision_rows:
            print(f"{row['precision']:>36} {row['network_s']:>10.1f} {row['s_per_window']:>6.2f} {row['total_s']:>8.1f} {row['agreement']:>10.5f}")
        print(f"agreement: fraction of voxels whose label equals the {precision_rows[0]['precision']} run's")
    if args.json:
        meta = dict(device=str(device), torch=torch.__version__, threads=threads, processor=platform.processor(), deform_conv=path, matmul_gflops=rates)
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, results=rows, precisions=precision_rows), f, indent=1)


def _precision_table(image: Path, tmp: Path, device: torch.device, args: argparse.Namespace, case: dict) -> list[dict]:
    """One run of the config per precision of ``--precisions``; agreement of each label map with the first's."""
    rows, first = [], None
    for precision in args.precisions:
        out = tmp / f"precision_{precision}"
        row = dict(case, **run_inference(image, out, device, args, precision=precision))
        labels = np.asarray(nib.load(next(out.glob("*_seg.nii.gz"))).dataobj)
        first = labels if first is None else first
        row["agreement"] = float((labels == first).mean())
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
