"""Slow ops of the D-LKA block vs ``nn.Conv3d(C, C, 3, padding=1)`` at the four stage shapes (batch 1).

Ops: reference ``deform_conv3d`` (pure autograd), ``deform_conv3d_fast`` (the default: numba kernels on
CPU when numba is installed, Triton kernels on CUDA when triton is), its pure-PyTorch autograd function
(``deform_torch``),
the depthwise 7^3 dilation-3 conv as plain ``nn.Conv3d`` and as ``FastDilatedDepthwiseConv3d``.
For each: forward and forward+backward time divided by those of the dense 3^3 conv (best of
``--repeats``, all in this one run), and the bytes autograd saves for backward (summed with
``torch.autograd.graph.saved_tensors_hooks``; on CUDA also the peak allocated memory of fwd+bwd).

    python benchmarks/bench_ops.py [--repeats 3] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torch import nn

from dlka_monai.networks.layers.deform_conv import deform_conv3d
from dlka_monai.networks.layers.deform_conv_fast import (
    FastDilatedDepthwiseConv3d,
    _DeformConv3dFn,
    deform_conv3d_fast,
    numba_kernels,
    triton_kernels,
)

STAGES = [(32, (32, 32, 32)), (64, (16, 16, 16)), (128, (8, 8, 8)), (256, (4, 4, 4))]


def _best(fn, repeats, sync):
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _saved_bytes(fn) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--stages", default="0,1,2,3", help="indices into the stage list")
    parser.add_argument("--ops", default=None, help="comma-separated subset of the ops (conv3x3 always runs)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(0)
    default_path = "pure PyTorch"
    if device.type == "cpu" and (kernels := numba_kernels()) is not None:
        default_path = f"numba {kernels.numba.__version__}"
    elif cuda and (kernels := triton_kernels()) is not None:
        default_path = f"triton {kernels.triton.__version__}"
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} {platform.processor()} deform_fast={default_path}")
    head = f"{'C':>4} {'size':>8} {'op':>14} {'fwd ms':>9} {'fwd x':>7} {'f+b ms':>9} {'f+b x':>7} {'saved MiB':>10}"
    if cuda:
        head += f" {'peak MiB':>9}"
    print(head)
    results = []
    for si in map(int, args.stages.split(",")):
        ch, size = STAGES[si]
        x = torch.randn(1, ch, *size, device=device, requires_grad=True)
        conv = nn.Conv3d(ch, ch, 3, padding=1).to(device)
        weight = nn.Parameter(conv.weight.detach().clone())
        bias = nn.Parameter(conv.bias.detach().clone())
        offset = (2 * torch.randn(1, 81, *size, device=device)).requires_grad_()
        dw = nn.Conv3d(ch, ch, 7, padding=9, dilation=3, groups=ch).to(device)
        dw_fast = FastDilatedDepthwiseConv3d(ch, ch, 7, padding=9, dilation=3, groups=ch).to(device)
        dw_fast.load_state_dict(dw.state_dict())
        ops = {
            "conv3x3": lambda: conv(x),
            "deform_ref": lambda: deform_conv3d(x, offset, weight, bias, 1, 1),
            "deform_fast": lambda: deform_conv3d_fast(x, offset, weight, bias, 1, 1),
            "deform_torch": lambda: _DeformConv3dFn.apply(x, offset, weight, bias, (1,) * 3, (1,) * 3, (1,) * 3),
            "dw7_dil3": lambda: dw(x),
            "dw7_dil3_fast": lambda: dw_fast(x),
        }
        if args.ops:
            keep = {"conv3x3", *args.ops.split(",")}
            ops = {k: v for k, v in ops.items() if k in keep}
        base = {}
        for name, fwd in ops.items():
            with torch.no_grad():
                t_f = _best(fwd, args.repeats, sync)

            def fb():
                fwd().sum().backward()

            t_fb = _best(fb, args.repeats, sync)
            saved = _saved_bytes(fwd)
            peak = None
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                fb()
                sync()
                peak = torch.cuda.max_memory_allocated() - before
            if name == "conv3x3":
                base = dict(fwd=t_f, fb=t_fb)
            row = dict(
                channels=ch,
                size=list(size),
                op=name,
                fwd_s=t_f,
                fwd_bwd_s=t_fb,
                fwd_ratio=t_f / base["fwd"],
                fwd_bwd_ratio=t_fb / base["fb"],
                saved_bytes=saved,
                peak_bytes=peak,
            )
            results.append(row)
            line = (
                f"{ch:>4} {'x'.join(map(str, size)):>8} {name:>14} {1e3 * t_f:>9.1f} {row['fwd_ratio']:>7.1f}"
                f" {1e3 * t_fb:>9.1f} {row['fwd_bwd_ratio']:>7.1f} {saved / 2**20:>10.1f}"
            )
            if cuda:
                line += f" {peak / 2**20:>9.1f}"
            print(line, flush=True)
    if args.json:
        meta = dict(
            device=str(device), torch=torch.__version__, threads=torch.get_num_threads(), repeats=args.repeats, deform_fast=default_path
        )
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, results=results), f, indent=1)


if __name__ == "__main__":
    main()
