"""fp32 against bf16 (and fp16) inference of a trained demo model on the demo's held-out cases.

Runs the shipped ``configs/inference.json`` + ``configs/evaluate.json`` once per precision on the demo
dataset's test cases (as ``tests/test_precision_guard.py`` does) and prints, per precision, the wall time
of the run (config parsing and network construction included), the voxels whose label equals the first
precision's, and the 8-organ Dice; with the fp32 and bf16 matmul rates of this machine measured in the
same run, since bf16 is fast only where the CPU computes it natively (AMX-BF16 / AVX512-BF16).

Then, the training step of the demo recipe (its network, batch of crops, loss with deep supervision and
optimizer; random data) in fp32 and under bf16 autocast, each the best of ``--steps`` steps, and their
ratio: whether bf16 training pays on this CPU.

The model: ``--bundle_root`` (a bundle root holding ``models/model.pt`` and ``data/demo``, e.g. this
repository after the README's main command); without it, the shipped ``configs/train.json`` is run for
``--epochs`` epochs in a scratch folder first (as the tests' demo model).

    python benchmarks/bench_precision.py [--bundle_root .] [--epochs 10] [--precisions fp32,bf16] [--steps 10] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigWorkflow

from bench_inference import matmul_gflops
from dlka_monai.data import generate_demo_dataset
from dlka_monai.plan import build_network
from dlka_monai.runtime import autocast, cpu_has_native_bf16
from dlka_monai.training.recipe import get_recipe, recipe_loss, recipe_optimizer, training_plan

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def train_demo(root: Path, epochs: int) -> None:
    """The README's training command for ``epochs`` epochs with ``root`` as the bundle root."""
    generate_demo_dataset(root / "data" / "demo")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json")]
    subprocess.run([*cmd, "--bundle_root", str(root), "--max_epochs", str(epochs)], cwd=root, check=True, capture_output=True)


def infer_and_evaluate(root: Path, precision: str, out: Path) -> tuple[float, dict]:
    """Wall seconds of the inference + evaluation configs in ``precision`` on the demo's test cases, and
    the evaluation summary."""
    start = time.perf_counter()
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "inference.json"), str(CONFIGS / "evaluate.json")],
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type="infer",
        bundle_root=str(root),
        demo_dir=str(root / "data" / "demo"),
        output_dir=str(out),
        precision=precision,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return time.perf_counter() - start, json.loads((out / "summary.json").read_text(encoding="utf-8"))


def training_step_seconds(precision: str, steps: int, recipe: str = "demo") -> float:
    """Best wall seconds of ``steps`` training steps of ``recipe``'s network in ``precision`` (random data)."""
    r = get_recipe(recipe)
    plan = training_plan(r, r.preset)
    torch.manual_seed(0)
    net = build_network(plan, out_channels=14).train()
    loss_fn, optimizer = recipe_loss(r), recipe_optimizer(r, net.parameters())
    size = plan["network"]["img_size"]
    x = torch.randn(r.batch_size * r.samples_per_case, 1, *size)
    y = torch.randint(0, 14, (x.shape[0], 1, *size)).float()  # labels as the loader gives them
    best = float("inf")
    for i in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        optimizer.zero_grad()
        with autocast(precision, "cpu"):
            loss = loss_fn([out.float() for out in net(x)], y)
        loss.backward()
        optimizer.step()
        if i >= 2:
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle_root", type=Path, help="a trained bundle root (default: train the demo in a scratch folder)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the demo training without --bundle_root")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per precision")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    precisions = args.precisions.split(",")

    with tempfile.TemporaryDirectory(prefix="bench_precision_") as tmp:
        root = args.bundle_root.resolve() if args.bundle_root else Path(tmp) / "bundle"
        if args.bundle_root is None:
            root.mkdir()
            start = time.perf_counter()
            train_demo(root, args.epochs)
            print(f"trained the demo for {args.epochs} epochs in {time.perf_counter() - start:.0f} s")
        rates = {p: matmul_gflops(dtype) for p, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
        cases = [Path(e["image"]).name.replace(".nii.gz", "_seg.nii.gz") for e in json.loads((root / "data" / "demo" / "dataset.json").read_text())["test"]]
        rows, labels = [], {}
        for precision in precisions:
            out = Path(tmp) / precision
            seconds, summary = infer_and_evaluate(root, precision, out)
            labels[precision] = [np.asarray(nib.load(out / case).dataobj) for case in cases]
            same = sum(int((a == b).sum()) for a, b in zip(labels[precision], labels[precisions[0]]))
            total = sum(a.size for a in labels[precision])
            rows.append(dict(precision=precision, seconds=seconds, agreement=same / total, dice_8_organs=summary["synapse_8_organs"]["dice"]["mean"]))

    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}")
    print(f"matmul 2048^3: fp32 {rates['fp32']:.0f} GFLOP/s, bf16 {rates['bf16']:.0f} GFLOP/s (this run)")
    print(f"{len(cases)} held-out demo cases, model {root / 'models' / 'model.pt'}")
    print(f"{'precision':>9} {'time s':>7} {'agreement':>10} {'8-organ Dice':>13}")
    for r in rows:
        print(f"{r['precision']:>9} {r['seconds']:>7.1f} {r['agreement']:>10.5f} {r['dice_8_organs']:>13.4f}")
    train = {p: training_step_seconds(p, args.steps) for p in ("fp32", "bf16")}
    print(f"demo recipe training step: fp32 {1e3 * train['fp32']:.0f} ms, bf16 autocast {1e3 * train['bf16']:.0f} ms, "
          f"bf16 / fp32 {train['bf16'] / train['fp32']:.2f} (best of {args.steps} steps each)")
    if args.json:
        result = dict(matmul_gflops=rates, native_bf16=cpu_has_native_bf16(), rows=rows, training_step_s=train)
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
