"""Peak memory of training steps of a 3D D-LKA preset, each configuration in a fresh process.

One step as ``configs/train.json`` runs it: forward in ``train()`` mode (the deep-supervision list),
``DeepSupervisionLoss(DiceCELoss)`` with the bundle's settings, backward, the bundle's SGD (momentum
0.99, Nesterov) step; AMP on CUDA as the bundle; gradients zeroed, not freed, as ``SupervisedTrainer``
does. ``--steps`` 2 by default, so that the second step runs with the gradients and momentum buffers
of the first already allocated.

Memory, measured in a fresh (spawned) process so that nothing allocated earlier hides in the figures:
CPU: the process's max RSS after ``import torch`` (baseline), after building the network, optimizer
and batch (setup), and after the steps (peak); the training memory is peak - baseline. CUDA: the
allocator's peak (``max_memory_allocated``) and the reserved peak. Target: <= 8 GiB at batch 2 on CPU.

    python benchmarks/bench_train_memory.py [--preset dlka3d_synapse] [--batch 2] [--devices cpu,cuda]
        [--size 64,128,128] [--net-kwargs '{"feature_size": 4}'] [--steps 2] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import time
from concurrent.futures import ProcessPoolExecutor

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss

from dlka_monai.networks import create_network
from dlka_monai.training import build_optimizer

TARGET_GIB = 8.0


def _max_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(
    preset: str, batch: int, size: list[int] | None, net_kwargs: dict, device: str, steps: int, threads: int | None
) -> dict:
    """Runs in a fresh process: build, train ``steps`` steps, report the memory high-water marks."""
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    cuda = dev.type == "cuda"  # and AMP, as the bundle trains on CUDA
    baseline = _max_rss_gib()
    if size is not None:
        net_kwargs = {**net_kwargs, "img_size": size}
    net = create_network(preset, **net_kwargs).to(dev).train()
    x = torch.rand(batch, net.in_channels, *net.img_size, device=dev)
    y = torch.randint(0, net.out_channels, (batch, 1, *net.img_size), device=dev).float()
    # the loss and optimizer of configs/train.json
    loss_fn = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=False, batch=True), weight_mode="exp")
    optimizer = build_optimizer("sgd", net.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler(dev.type, enabled=cuda)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    setup = _max_rss_gib()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=False)
        with torch.autocast(dev.type, enabled=cuda):
            loss = loss_fn(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = _max_rss_gib()
    row = dict(
        preset=preset,
        device=device,
        batch=batch,
        input=[batch, net.in_channels, *net.img_size],
        params=sum(p.numel() for p in net.parameters()),
        amp=cuda,
        threads=torch.get_num_threads(),
        steps=steps,
        step_s=times,
        rss_baseline_gib=baseline,
        rss_setup_gib=setup,
        rss_peak_gib=peak,
        train_mem_gib=peak - baseline,
        step_increase_gib=peak - setup,
    )
    if cuda:
        row.update(
            cuda_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
            cuda_reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="dlka3d_synapse")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", default=None, help="z,y,x input size (default: the preset's img_size)")
    parser.add_argument("--net-kwargs", default="{}", help="JSON of create_network overrides, e.g. a smaller net")
    parser.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    size = [int(s) for s in args.size.split(",")] if args.size else None
    print(f"torch={torch.__version__} {platform.processor()}")
    print(
        f"{'device':>6} {'input':>18} {'params M':>9} {'amp':>5} {'step s':>7} {'base GiB':>9} {'setup GiB':>10}"
        f" {'peak GiB':>9} {'train GiB':>10} {'CUDA GiB':>9}"
    )
    rows = []
    for device in args.devices.split(","):
        # spawn: a fresh interpreter, so max RSS starts from nothing but the imports
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            job = pool.submit(measure, args.preset, args.batch, size, json.loads(args.net_kwargs), device, args.steps, args.threads)
            row = job.result()
        rows.append(row)
        cuda = f"{row['cuda_allocated_gib']:>9.2f}" if "cuda_allocated_gib" in row else f"{'-':>9}"
        print(
            f"{device:>6} {'x'.join(map(str, row['input'])):>18} {row['params'] / 1e6:>9.2f} {str(row['amp']):>5}"
            f" {row['step_s'][-1]:>7.2f} {row['rss_baseline_gib']:>9.2f} {row['rss_setup_gib']:>10.2f}"
            f" {row['rss_peak_gib']:>9.2f} {row['train_mem_gib']:>10.2f} {cuda}",
            flush=True,
        )
    is_target = args.preset == "dlka3d_synapse" and args.batch == 2 and size is None and not json.loads(args.net_kwargs)
    for row in rows:
        if row["device"] == "cpu":
            verdict = ": " + ("met" if row["train_mem_gib"] <= TARGET_GIB else "missed") if is_target else ""
            target = f"target <= {TARGET_GIB:g} GiB for dlka3d_synapse at batch 2{verdict}"
            print(f"CPU training memory: {row['train_mem_gib']:.2f} GiB ({target})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(torch=torch.__version__, processor=platform.processor(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
