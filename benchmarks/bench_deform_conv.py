"""DeformConv3d vs nn.Conv3d of the same shape, at the four stage shapes of the Synapse model.

Prints forward and forward+backward time of DeformConv3d (random offsets of a few voxels) divided by
those of ``nn.Conv3d(C, C, 3, padding=1)``, both measured in this one run, and writes them as JSON.
DeformConv3d runs whatever ``deform_conv3d_fast`` picks on the device (numba on CPU, Triton on CUDA,
when installed; else pure PyTorch); the header line says which.

    python benchmarks/bench_deform_conv.py [--device cuda] [--repeats 3] [--json benchmarks/bench_deform_conv.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torch import nn

from dlka_monai.networks import DeformConv3d
from dlka_monai.networks.layers.deform_conv_fast import numba_kernels, triton_kernels

# (channels, spatial size) of the four encoder stages of dlka3d_synapse (input 64×128×128, patch 2×4×4)
STAGES = [(32, (32, 32, 32)), (64, (16, 16, 16)), (128, (8, 8, 8)), (256, (4, 4, 4))]


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _path(device: torch.device) -> str:
    """Which implementation ``deform_conv3d_fast`` (inside DeformConv3d) runs on ``device``."""
    if device.type == "cpu" and (kernels := numba_kernels()) is not None:
        return f"numba {kernels.numba.__version__}"
    if device.type == "cuda" and (kernels := triton_kernels()) is not None:
        return f"triton {kernels.triton.__version__}"
    return "pure PyTorch"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    rows = []
    path = _path(device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} {platform.processor()} deform={path}")
    print(f"{'C':>4} {'size':>10} {'conv fwd ms':>12} {'deform fwd x':>13} {'conv f+b ms':>12} {'deform f+b x':>13}")
    for channels, size in STAGES:
        x = torch.randn(1, channels, *size, device=device, requires_grad=True)
        conv = nn.Conv3d(channels, channels, 3, padding=1).to(device)
        deform = DeformConv3d(channels, channels, 3, padding=1).to(device)
        offset = (2 * torch.randn(1, 81, *size, device=device)).requires_grad_()

        def run(fwd, backward):
            def step():
                out = fwd()
                if backward:
                    out.sum().backward()
                sync()

            return step

        t = {}
        for label, fwd in (("conv", lambda: conv(x)), ("deform", lambda: deform(x, offset))):
            t[label, "fwd"] = _time(run(fwd, False), args.repeats)
            t[label, "fb"] = _time(run(fwd, True), args.repeats)
        row = dict(
            channels=channels,
            size=list(size),
            conv_fwd_s=t["conv", "fwd"],
            deform_fwd_s=t["deform", "fwd"],
            conv_fwd_bwd_s=t["conv", "fb"],
            deform_fwd_bwd_s=t["deform", "fb"],
            fwd_ratio=t["deform", "fwd"] / t["conv", "fwd"],
            fwd_bwd_ratio=t["deform", "fb"] / t["conv", "fb"],
        )
        rows.append(row)
        print(
            f"{channels:>4} {'x'.join(map(str, size)):>10} {1e3 * row['conv_fwd_s']:>12.1f} {row['fwd_ratio']:>13.1f}"
            f" {1e3 * row['conv_fwd_bwd_s']:>12.1f} {row['fwd_bwd_ratio']:>13.1f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=str(device), torch=torch.__version__, deform=path, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
