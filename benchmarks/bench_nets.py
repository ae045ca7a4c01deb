"""DLKANet3D vs MONAI's SwinUNETR, UNETR and DynUNet (nnU-Net 3d_fullres-like), all measured in one run.

Each D-LKA preset is compared with the baselines built for its input size and classes (Synapse:
64x128x128, 14 classes; Pancreas: 96x96x96, 2 classes). For each network (batch 1): parameters,
forward FLOPs (``torch.utils.flop_counter``; the deformable conv's GEMMs are counted, its gathers are
not), forward latency, training-step latency (forward + DiceCE loss + backward + SGD step), peak memory
of the training step (CUDA: allocator peak; CPU: growth of the process's max RSS, coarse), achieved
forward GFLOP/s and that as % of a large fp32 matmul's GFLOP/s measured in the same run.

    python benchmarks/bench_nets.py [--device cpu|cuda] [--repeats 2] [--presets dlka3d_synapse,dlka3d_pancreas]
        [--baselines swin_unetr,unetr,dynunet] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.networks.nets import DynUNet, SwinUNETR, UNETR
from torch.utils.flop_counter import FlopCounterMode

from dlka_monai.networks import create_network

PRESETS = {"dlka3d_synapse": ((64, 128, 128), 14), "dlka3d_pancreas": ((96, 96, 96), 2)}


# nnU-Net 3d_fullres-like plans: the anisotropic Synapse patch is not pooled along z at first
_DYNUNET_PLANS = {
    (64, 128, 128): ([[1, 3, 3]] + [[3, 3, 3]] * 5, [[1, 1, 1], [1, 2, 2]] + [[2, 2, 2]] * 4),
    (96, 96, 96): ([[3, 3, 3]] * 6, [[1, 1, 1]] + [[2, 2, 2]] * 5),
}


def _dynunet(size, out_channels: int) -> DynUNet:
    kernels, strides = _DYNUNET_PLANS[tuple(size)]
    return DynUNet(3, 1, out_channels, kernels, strides, strides[1:], filters=[32, 64, 128, 256, 320, 320], norm_name="instance")


BASELINES = {
    "swin_unetr": lambda size, classes: SwinUNETR(in_channels=1, out_channels=classes, feature_size=48),
    "unetr": lambda size, classes: UNETR(1, classes, img_size=size),
    "dynunet": _dynunet,
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _best(fn, repeats: int, device: torch.device) -> float:
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 3) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n**3 / _best(lambda: a @ b, repeats, device) / 1e9


def bench(name: str, preset: str, device: torch.device, repeats: int) -> dict:
    """``name``: the preset itself or a baseline, built for the preset's input size and classes."""
    size, classes = PRESETS[preset]
    net = (create_network(preset) if name == preset else BASELINES[name](size, classes)).to(device)
    x = torch.rand(1, 1, *size, device=device)
    y = torch.randint(0, classes, (1, 1, *size), device=device).float()
    params = sum(p.numel() for p in net.parameters())
    net.eval()
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            net(x)
        flops = counter.get_total_flops()
        forward_s = _best(lambda: net(x), repeats, device)
    net.train()
    loss_fn = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    train_s = _best(step, repeats, device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024  # growth only
    return dict(
        name=name,
        preset=preset,
        input=list(size),
        params=params,
        gflops=flops / 1e9,
        forward_s=forward_s,
        train_step_s=train_s,
        peak_mem_gib=peak / 2**30,
        achieved_gflops_per_s=flops / 1e9 / forward_s,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--presets", default=",".join(PRESETS), help=f"comma-separated, from {', '.join(PRESETS)}")
    parser.add_argument(
        "--baselines", default=",".join(BASELINES), help=f"comma-separated, from {', '.join(BASELINES)} (may be empty)"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    presets = [p for p in args.presets.split(",") if p]
    baselines = [b for b in args.baselines.split(",") if b]
    for name, known in [(p, PRESETS) for p in presets] + [(b, BASELINES) for b in baselines]:
        if name not in known:
            parser.error(f"unknown network {name!r}; choose from {', '.join(known)}")
    device = torch.device(args.device)
    peak = matmul_gflops(device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} {platform.processor()}")
    print(f"fp32 matmul 2048^3: {peak:.1f} GFLOP/s")
    header = f"{'net':>16} {'input':>12} {'params M':>9} {'GFLOPs':>8} {'fwd s':>7} {'train s':>8} {'mem GiB':>8} {'GFLOP/s':>8} {'% mm':>6}"
    print(header)
    rows = []
    for preset in presets:
        by_name = {}
        for name in [preset, *baselines]:
            row = bench(name, preset, device, args.repeats)
            row["pct_of_matmul"] = 100 * row["achieved_gflops_per_s"] / peak
            rows.append(row)
            by_name[name] = row
            print(
                f"{name:>16} {'x'.join(map(str, row['input'])):>12} {row['params'] / 1e6:>9.2f} {row['gflops']:>8.1f}"
                f" {row['forward_s']:>7.2f} {row['train_step_s']:>8.2f} {row['peak_mem_gib']:>8.2f}"
                f" {row['achieved_gflops_per_s']:>8.1f} {row['pct_of_matmul']:>6.1f}",
                flush=True,
            )
        if "swin_unetr" in by_name:
            ratio = by_name[preset]["forward_s"] / by_name["swin_unetr"]["forward_s"]
            target = " (target <= 0.5)" if preset == "dlka3d_synapse" else ""
            print(f"{preset} forward / SwinUNETR forward at {'x'.join(map(str, PRESETS[preset][0]))}: {ratio:.2f}{target}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=str(device), torch=torch.__version__, matmul_gflops=peak, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
