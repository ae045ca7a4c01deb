"""DLKANet3D vs MONAI's SwinUNETR, UNETR and DynUNet (nnU-Net 3d_fullres-like), all measured in one run.

For each network at its input size (batch 1): parameters, forward FLOPs (``torch.utils.flop_counter``;
the deformable conv's GEMMs are counted, its gathers are not), forward latency, training-step latency
(forward + DiceCE loss + backward + SGD step), peak memory of the training step (CUDA: allocator
peak; CPU: growth of the process's max RSS, coarse), achieved forward GFLOP/s and that as % of a large
fp32 matmul's GFLOP/s measured in the same run.

    python benchmarks/bench_nets.py [--device cpu|cuda] [--repeats 2] [--nets dlka3d_synapse,swin_unetr] [--json PATH]
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

SYNAPSE = (64, 128, 128)
PANCREAS = (96, 96, 96)


def _dynunet(out_channels: int) -> DynUNet:
    # nnU-Net 3d_fullres-like plan for a (64, 128, 128) patch of anisotropic CT
    kernels = [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    return DynUNet(3, 1, out_channels, kernels, strides, strides[1:], filters=[32, 64, 128, 256, 320, 320], norm_name="instance")


NETS = {
    "dlka3d_synapse": (lambda: create_network("dlka3d_synapse"), SYNAPSE, 14),
    "dlka3d_pancreas": (lambda: create_network("dlka3d_pancreas"), PANCREAS, 2),
    "swin_unetr": (lambda: SwinUNETR(in_channels=1, out_channels=14, feature_size=48), SYNAPSE, 14),
    "unetr": (lambda: UNETR(1, 14, img_size=SYNAPSE), SYNAPSE, 14),
    "dynunet": (lambda: _dynunet(14), SYNAPSE, 14),
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


def bench(name: str, device: torch.device, repeats: int) -> dict:
    build, size, classes = NETS[name]
    net = build().to(device)
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
    parser.add_argument("--nets", default=",".join(NETS), help=f"comma-separated, from {', '.join(NETS)}")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    peak = matmul_gflops(device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} {platform.processor()}")
    print(f"fp32 matmul 2048^3: {peak:.1f} GFLOP/s")
    header = f"{'net':>16} {'input':>12} {'params M':>9} {'GFLOPs':>8} {'fwd s':>7} {'train s':>8} {'mem GiB':>8} {'GFLOP/s':>8} {'% mm':>6}"
    print(header)
    rows = []
    for name in args.nets.split(","):
        row = bench(name, device, args.repeats)
        row["pct_of_matmul"] = 100 * row["achieved_gflops_per_s"] / peak
        rows.append(row)
        print(
            f"{name:>16} {'x'.join(map(str, row['input'])):>12} {row['params'] / 1e6:>9.2f} {row['gflops']:>8.1f}"
            f" {row['forward_s']:>7.2f} {row['train_step_s']:>8.2f} {row['peak_mem_gib']:>8.2f}"
            f" {row['achieved_gflops_per_s']:>8.1f} {row['pct_of_matmul']:>6.1f}",
            flush=True,
        )
    by_name = {r["name"]: r for r in rows}
    if "dlka3d_synapse" in by_name and "swin_unetr" in by_name:
        ratio = by_name["dlka3d_synapse"]["forward_s"] / by_name["swin_unetr"]["forward_s"]
        print(f"DLKANet3D Synapse forward / SwinUNETR forward: {ratio:.2f} (target <= 0.5)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=str(device), torch=torch.__version__, matmul_gflops=peak, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
