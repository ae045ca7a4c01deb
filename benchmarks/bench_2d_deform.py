"""2D D-LKA forward time with its deformable depthwise convs vs the same with plain depthwise convs.

The paper's ablation (as cited in the project's issue): 17.38 ms vs 8.01 ms per batch of 16 on a GPU,
a ratio of 2.17. Here, in one run and on one device:

* ``attention``: ``DLKAttention(2, C)`` (two :class:`DeformableDepthwiseConv2d`, each with its dense
  offset conv) vs a copy whose deformable convs are replaced by ``nn.Conv2d(C, C, k, groups=C)`` with
  the same kernel, padding, dilation and weights (and no offset conv): D-LKA vs LKA. One row per
  ``--shapes`` entry ``CxS`` (``C`` channels, ``S×S`` pixels; the defaults are the three decoder
  stages of the 224×224 D-LKA Net).
* ``net`` (``--net``): the whole ``dlka2d_synapse`` network, deformable vs plain decoder convs.

Forward only, eval mode, ``torch.no_grad``; mean (and best) milliseconds per batch over ``--repeats``
timed calls after ``--warmup`` untimed ones, the two variants interleaved call by call.

    python benchmarks/bench_2d_deform.py [--device cpu|cuda] [--batch N] [--shapes 96x56,192x28,384x14]
                                         [--net] [--repeats R] [--warmup W] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch
import torchvision
from torch import nn

from dlka_monai.networks import DeformableDepthwiseConv2d, DLKAttention, create_network

PAPER = dict(deformable_ms=17.38, plain_ms=8.01, batch=16, device="GPU")


def plain_depthwise(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every :class:`DeformableDepthwiseConv2d` replaced by the plain depthwise
    conv with the same geometry and weights (the offset conv dropped)."""
    module = copy.deepcopy(module)
    for name, child in list(module.named_modules()):
        if isinstance(child, DeformableDepthwiseConv2d):
            dc = child.deform_conv
            conv = nn.Conv2d(
                dc.in_channels,
                dc.out_channels,
                dc.kernel_size,
                stride=dc.stride,
                padding=dc.padding,
                dilation=dc.dilation,
                groups=dc.groups,
                bias=False,
            ).to(dc.weight.device)
            conv.weight.data.copy_(dc.weight.data)
            parent_name, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, attr, conv)
    return module


def time_pair(fns: dict, x: torch.Tensor, warmup: int, repeats: int, sync) -> dict:
    """Mean / best ms of each callable on ``x``, interleaved."""
    times = {k: [] for k in fns}
    with torch.no_grad():
        for _ in range(warmup):
            for fn in fns.values():
                fn(x)
        sync()
        for _ in range(repeats):
            for k, fn in fns.items():
                start = time.perf_counter()
                fn(x)
                sync()
                times[k].append(1e3 * (time.perf_counter() - start))
    return {k: dict(mean_ms=statistics.fmean(v), best_ms=min(v)) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 16 (the paper's) on CUDA, 2 on CPU")
    parser.add_argument("--shapes", default="96x56,192x28,384x14", help="comma-separated CxS attention shapes ('' for none)")
    parser.add_argument("--net", action="store_true", help="also time the whole dlka2d_synapse network at 224x224")
    parser.add_argument("--repeats", type=int, default=None, help="default: 50 on CUDA, 3 on CPU")
    parser.add_argument("--warmup", type=int, default=None, help="default: 10 on CUDA, 1 on CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (16 if cuda else 2)
    repeats = args.repeats or (50 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(0)
    dev_name = torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine())
    print(
        f"device={device} ({dev_name}) torch={torch.__version__} torchvision={torchvision.__version__} "
        f"threads={torch.get_num_threads()} batch={batch} repeats={repeats} warmup={warmup}"
    )
    print(f"{'what':>10} {'C':>4} {'size':>8} {'deform ms':>10} {'plain ms':>9} {'ratio':>6}  (mean; best)")

    results = []

    def report(what, channels, size, t):
        d, p = t["deformable"], t["plain"]
        row = dict(
            what=what,
            channels=channels,
            size=size,
            deformable_ms=d["mean_ms"],
            plain_ms=p["mean_ms"],
            deformable_best_ms=d["best_ms"],
            plain_best_ms=p["best_ms"],
            ratio=d["mean_ms"] / p["mean_ms"],
        )
        results.append(row)
        print(
            f"{what:>10} {channels if channels else '-':>4} {'x'.join(map(str, size)):>8} {d['mean_ms']:>10.2f} "
            f"{p['mean_ms']:>9.2f} {row['ratio']:>6.2f}  ({d['best_ms']:.2f}; {p['best_ms']:.2f})"
        )

    for spec in filter(None, args.shapes.split(",")):
        channels, side = (int(v) for v in spec.lower().split("x"))
        deform = DLKAttention(2, channels).to(device).eval()
        plain = plain_depthwise(deform)
        x = torch.randn(batch, channels, side, side, device=device)
        report("attention", channels, [side, side], time_pair(dict(deformable=deform, plain=plain), x, warmup, repeats, sync))
        del deform, plain, x

    if args.net:
        deform = create_network("dlka2d_synapse").to(device).eval()
        plain = plain_depthwise(deform)
        x = torch.randn(batch, 1, 224, 224, device=device)
        report("net", None, [224, 224], time_pair(dict(deformable=deform, plain=plain), x, warmup, repeats, sync))

    print(
        f"paper ablation ({PAPER['device']}, batch {PAPER['batch']}): {PAPER['deformable_ms']} ms vs "
        f"{PAPER['plain_ms']} ms, ratio {PAPER['deformable_ms'] / PAPER['plain_ms']:.2f}"
    )
    if args.json:
        meta = dict(
            device=str(device),
            device_name=dev_name,
            torch=torch.__version__,
            torchvision=torchvision.__version__,
            threads=torch.get_num_threads(),
            batch=batch,
            repeats=repeats,
            warmup=warmup,
        )
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, paper=PAPER, results=results), f, indent=2)


if __name__ == "__main__":
    main()
