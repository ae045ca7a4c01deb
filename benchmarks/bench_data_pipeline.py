# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Training throughput of a recipe: the data pipeline alone (batches/s out of ``train#dataloader``, with the
recipe's sampling and augmentation) next to the network step (forward, loss, backward, optimizer step on
such batches), measured in one run, and their ratio (above 1: the loader keeps the device busy).

Usage::

    python benchmarks/bench_data_pipeline.py                     # dlka3d_synapse's recipe on the demo data
    python benchmarks/bench_data_pipeline.py --recipe demo --workers 0
    python benchmarks/bench_data_pipeline.py --dataset_dir /data/Synapse --device cuda
    python benchmarks/bench_data_pipeline.py --small             # a quick check: a small net on 32×64×64 patches

The demo volumes are generated under ``data/demo`` if absent. The loader's cache (``CacheDataset``) is
filled before timing: what is timed is the random part of the pipeline, as in every epoch after the first.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="dlka3d_synapse", help="recipe name (default: dlka3d_synapse)")
    parser.add_argument("--config", default="configs/train.json", help="training config, or a list separated by commas")
    parser.add_argument("--dataset_dir", default=None, help="dataset folder (default: the demo data)")
    parser.add_argument("--batches", type=int, default=20, help="loader batches timed")
    parser.add_argument("--steps", type=int, default=3, help="network steps timed")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: the recipe's / the machine's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="a small net on 32×64×64 patches (a quick check)")
    args = parser.parse_args()

    config = ConfigParser()
    config.read_config([str(ROOT / f) for f in args.config.split(",")])
    overrides = {"bundle_root": str(ROOT), "recipe_name": args.recipe, "device": f"$torch.device('{args.device}')"}
    if args.dataset_dir:
        overrides["dataset_dir"] = args.dataset_dir
    if args.workers is not None:
        overrides["train#num_workers"] = args.workers
    if args.small:
        overrides.update({"img_size": [32, 64, 64], "network_def#feature_size": 8, "network_def#depths": [1, 1, 1, 1]})
    config.update(overrides)
    if not args.dataset_dir and config.get_parsed_content("demo"):
        from dlka_monai.data import generate_demo_dataset

        if not Path(config.get_parsed_content("demo_dir")).exists():
            generate_demo_dataset(config.get_parsed_content("demo_dir"))

    recipe = config.get_parsed_content("recipe")
    loader = config.get_parsed_content("train#dataloader")
    workers = loader.num_workers

    def batches():
        while True:
            yield from loader

    stream = batches()
    batch = next(stream)  # starts the workers
    start = time.perf_counter()
    for _ in range(args.batches):
        batch = next(stream)
    data_rate = args.batches / (time.perf_counter() - start)

    device = torch.device(args.device)
    network, loss_fn, optimizer = (config.get_parsed_content(k) for k in ("network", "loss", "optimizer"))
    network.train()
    images, labels = batch["image"].to(device), batch["label"].to(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(network(images), labels)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: kernels compiled, memory allocated
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    net_rate = args.steps / (time.perf_counter() - start)

    print(f"recipe {recipe.name}: batches of {tuple(images.shape)} (cases × crops: {recipe.batch_size} × {recipe.samples_per_case})")
    print(f"data pipeline: {data_rate:.2f} batches/s with {workers} worker(s), {torch.get_num_threads()} thread(s)")
    print(f"network step:  {net_rate:.2f} steps/s on {device}")
    print(f"data / network: {data_rate / net_rate:.2f} (above 1: the loader keeps up)")


if __name__ == "__main__":
    main()
