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

``--ops`` times the depthwise deformable op itself instead, forward + backward (gradients of input,
offset and weight; random offsets of ~2 px): torchvision's ``deform_conv2d`` (groups = C), this
package's :func:`~dlka_monai.networks.layers.deform_conv2d_depthwise` and the plain depthwise
``nn.Conv2d(C, C, k, groups=C)``, interleaved, for each shape and the decoder's two kernels (5×5
padding 2; 7×7 dilation 3 padding 9); ``--train`` times one training iteration (forward, loss,
backward, SGD step) of ``dlka2d_synapse`` at 224², with the package's op vs torchvision's.

    python benchmarks/bench_2d_deform.py [--device cpu|cuda] [--batch N] [--shapes 96x56,192x28,384x14]
                                         [--net] [--ops] [--train] [--repeats R] [--warmup W] [--threads N]
                                         [--json PATH]
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
from torchvision.ops import deform_conv2d

from dlka_monai.networks import DeformableDepthwiseConv2d, DLKAttention, create_network
from dlka_monai.networks.blocks import dlka_attention
from dlka_monai.networks.layers import deform_conv2d_depthwise

KERNELS = dict(k5=(5, 2, 1), k7d3=(7, 9, 3))  # name: (kernel, padding, dilation) of the decoder's two convs

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


def time_calls(fns: dict, warmup: int, repeats: int, sync) -> dict:
    """Mean / best ms of each argument-less callable, interleaved (with autograd)."""
    times = {k: [] for k in fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    for _ in range(repeats):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[k].append(1e3 * (time.perf_counter() - start))
    return {k: dict(mean_ms=statistics.fmean(v), best_ms=min(v)) for k, v in times.items()}


def op_calls(channels: int, side: int, batch: int, kernel: int, padding: int, dilation: int, device) -> dict:
    """Forward + backward callables of torchvision's op, ours and the plain depthwise conv."""
    x = torch.randn(batch, channels, side, side, device=device, requires_grad=True)
    off = (2 * torch.randn(batch, 2 * kernel * kernel, side, side, device=device)).requires_grad_()
    plain = nn.Conv2d(channels, channels, kernel, padding=padding, dilation=dilation, groups=channels, bias=False)
    plain = plain.to(device)
    w = plain.weight

    def fwd_bwd(fn):
        def call():
            y = fn()
            y.backward(torch.ones_like(y))

        return call

    return dict(
        torchvision=fwd_bwd(lambda: deform_conv2d(x, off, w, None, 1, padding, dilation)),
        kernel=fwd_bwd(lambda: deform_conv2d_depthwise(x, off, w, None, 1, padding, dilation)),
        plain=fwd_bwd(lambda: plain(x)),
    )


def train_calls(batch: int, device) -> dict:
    """One SGD iteration of ``dlka2d_synapse`` with the package's op and with torchvision's."""
    net = create_network("dlka2d_synapse").to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, 224, 224, device=device)

    def step(op):
        def call():
            saved = dlka_attention.deform_conv2d_depthwise
            dlka_attention.deform_conv2d_depthwise = op
            try:
                out = net(x)
                loss = sum(o.float().square().mean() for o in (out if isinstance(out, (list, tuple)) else [out]))
                opt.zero_grad()
                loss.backward()
                opt.step()
            finally:
                dlka_attention.deform_conv2d_depthwise = saved

        return call

    return dict(kernel=step(deform_conv2d_depthwise), torchvision=step(deform_conv2d))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 16 (the paper's) on CUDA, 2 on CPU")
    parser.add_argument("--shapes", default="96x56,192x28,384x14", help="comma-separated CxS attention shapes ('' for none)")
    parser.add_argument("--net", action="store_true", help="also time the whole dlka2d_synapse network at 224x224")
    parser.add_argument("--ops", action="store_true", help="time the op itself (forward + backward) instead")
    parser.add_argument("--train", action="store_true", help="also time one training iteration of dlka2d_synapse")
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
    results = []
    header = f"{'what':>10} {'C':>4} {'size':>8} {'deform ms':>10} {'plain ms':>9} {'ratio':>6}  (mean; best)"

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

    if args.ops:
        print(
            f"{'C':>4} {'size':>6} {'kernel':>6} {'torchvision':>12} {'kernel':>9} {'plain':>9} {'kernel/plain':>12} "
            f"{'tv/plain':>9}  (forward + backward ms, mean; kernel/plain of the best times)"
        )
        for spec in filter(None, args.shapes.split(",")):
            channels, side = (int(v) for v in spec.lower().split("x"))
            for name, (kernel, padding, dilation) in KERNELS.items():
                fns = op_calls(channels, side, batch, kernel, padding, dilation, device)
                timed = time_calls(fns, warmup, repeats, sync)
                t = {k: v["mean_ms"] for k, v in timed.items()}
                row = dict(what="op", channels=channels, size=[side, side], kernel=name, **{f"{k}_ms": v for k, v in t.items()})
                row.update({f"{k}_best_ms": v["best_ms"] for k, v in timed.items()})
                row.update(kernel_over_plain=t["kernel"] / t["plain"], torchvision_over_plain=t["torchvision"] / t["plain"])
                row.update(kernel_over_plain_best=row["kernel_best_ms"] / row["plain_best_ms"])
                results.append(row)
                print(
                    f"{channels:>4} {side:>4}^2 {name:>6} {t['torchvision']:>12.1f} {t['kernel']:>9.1f} {t['plain']:>9.1f} "
                    f"{row['kernel_over_plain']:>12.2f} {row['torchvision_over_plain']:>9.2f}  ({row['kernel_over_plain_best']:.2f})"
                )
    else:
        print(header)
    for spec in filter(None, "" if args.ops else args.shapes.split(",")):
        channels, side = (int(v) for v in spec.lower().split("x"))
        deform = DLKAttention(2, channels).to(device).eval()
        plain = plain_depthwise(deform)
        x = torch.randn(batch, channels, side, side, device=device)
        report("attention", channels, [side, side], time_pair(dict(deformable=deform, plain=plain), x, warmup, repeats, sync))
        del deform, plain, x

    if args.net:
        if args.ops:
            print(header)
        deform = create_network("dlka2d_synapse").to(device).eval()
        plain = plain_depthwise(deform)
        x = torch.randn(batch, 1, 224, 224, device=device)
        report("net", None, [224, 224], time_pair(dict(deformable=deform, plain=plain), x, warmup, repeats, sync))

    if args.train:
        t = time_calls(train_calls(batch, device), warmup, repeats, sync)
        row = dict(what="train", size=[224, 224], **{f"{k}_ms": v["mean_ms"] for k, v in t.items()})
        results.append(row)
        print(
            f"dlka2d_synapse training iteration, batch {batch}, 224^2: {row['kernel_ms']:.0f} ms with deform_conv2d_depthwise, "
            f"{row['torchvision_ms']:.0f} ms with torchvision's op ({row['torchvision_ms'] / row['kernel_ms']:.2f}x)"
        )
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
