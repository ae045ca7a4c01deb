"""The README's main command, timed, and the Dice of the model it gives.

Copies the repository (without ``.git``, ``data``, ``models``, ``logs``) into a scratch folder, runs
``python -m monai.bundle run training --config_file configs/train.json`` there (the demo data is
generated afresh into its ``data/demo``), and reports:

* the wall time and the CPU time of the command, the load average, and the machine's speed as fp32
  matmul GFLOP/s (2 threads) just before and just after, with an estimate of the wall time on an idle
  machine: wall time × measured GFLOP/s / ``--reference-gflops`` (the idle figure of RESULTS.md); only
  meaningful when the load was steady;
* the validation Dice per epoch (mean over the 13 classes, the key metric, and over the 8 Synapse organs)
  from ``logs/progress.json``, and the per-organ Dice of the best epoch (the weights in ``models/model.pt``),

against the targets: <= 600 s on 2 CPU cores, mean Dice over the 8 organs >= 0.6.

``--contend`` then runs the same command again (in a second scratch copy) beside one competing busy
single-thread process and prints the wall time with it over the time alone, both from this run (target:
<= 1.5). The bundle picks its threads itself (``threads`` "auto", dlka_monai.runtime); unset
``OMP_NUM_THREADS`` first, else the bundle keeps that count. Compare policies with bundle arguments, e.g.
``-- --max_epochs 20 --threads 2`` (a fixed count) against ``-- --max_epochs 20`` (auto), and the OpenMP
wait policy with ``OMP_WAIT_POLICY=passive python benchmarks/bench_demo.py ...``.

    python benchmarks/bench_demo.py [--scratch DIR] [--json PATH] [--reference-gflops 132.3] [--contend] [-- --key value ...]

Arguments after ``--`` are passed on to the bundle command (e.g. ``-- --max_epochs 4``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TARGET_S, TARGET_DICE = 600.0, 0.6
SYNAPSE_8_ORGANS = {1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gallbladder", 6: "liver", 7: "stomach", 8: "aorta", 11: "pancreas"}


def matmul_gflops(threads: int = 2, n: int = 2048, repeats: int = 3) -> float:
    """Best fp32 matmul rate of ``repeats`` ``n``³ products, in GFLOP/s."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    torch.set_num_threads(previous)
    return 2 * n**3 / best / 1e9


def scratch_copy(dest: Path) -> None:
    """The repository without its outputs, so that the command starts as on a fresh clone."""
    top_level = {".git", ".venv", "data", "models", "logs", "eval", "dist"}  # dlka_monai/data is code: top level only

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        return skipped | (top_level & set(names) if Path(folder) == ROOT else set())

    shutil.copytree(ROOT, dest, ignore=ignore, dirs_exist_ok=True)


def run_command(cmd: list[str], scratch: Path, env: dict) -> tuple[float, float]:
    """Run ``cmd`` in ``scratch`` (console output to ``console.log`` there); returns (wall s, CPU s of the child)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(scratch / "console.log", "w", encoding="utf-8") as log:
        rc = subprocess.run(cmd, cwd=scratch, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        print((scratch / "console.log").read_text(encoding="utf-8", errors="replace")[-4000:])
        raise SystemExit(f"the training command failed (exit code {rc})")
    return wall, (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)


def contended_run(cmd: list[str], scratch: Path, env: dict) -> tuple[float, float]:
    """:func:`run_command` beside one busy single-thread process (started a few seconds before, killed after)."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(5)
        return run_command(cmd, scratch, env)
    finally:
        busy.kill()
        busy.wait()


def organ_dice(record: dict) -> dict[str, float]:
    return {name: record["class_dice"][str(c)] for c, name in SYNAPSE_8_ORGANS.items() if str(c) in record.get("class_dice", {})}


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, help="scratch folder (default: a temporary one, deleted after)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--reference-gflops", type=float, default=132.3, help="idle matmul GFLOP/s of the machine (RESULTS.md)")
    parser.add_argument("--contend", action="store_true", help="also run beside one busy process and print the ratio")
    args = parser.parse_args(own)

    tmp = None
    if args.scratch is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_demo_")
        args.scratch = Path(tmp.name)
    scratch = args.scratch.resolve()
    scratch_copy(scratch)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(scratch), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.json", *extra]

    gflops_before, load_before = matmul_gflops(), os.getloadavg()
    wall, cpu = run_command(cmd, scratch, env)
    gflops_after, load_after = matmul_gflops(), os.getloadavg()

    history = json.loads((scratch / "logs" / "progress.json").read_text(encoding="utf-8"))["epochs"]
    validated = [r for r in history if "dice" in r]
    best = max(validated, key=lambda r: r["dice"])
    organs = organ_dice(best)
    mean8 = sum(organs.values()) / len(organs)
    speed = (gflops_before + gflops_after) / 2
    idle_estimate = wall * speed / args.reference_gflops
    result = {
        "command": " ".join(cmd[1:]),
        "wall_s": wall,
        "cpu_s": cpu,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "matmul_gflops": [gflops_before, gflops_after],
        "idle_wall_estimate_s": idle_estimate,
        "epochs": len(history),
        "curve": [{"epoch": r["epoch"], "dice": r["dice"], "dice_8_organs": sum(organ_dice(r).values()) / max(1, len(organ_dice(r)))} for r in validated],
        "best_epoch": best["epoch"],
        "organ_dice": organs,
        "mean_dice_8_organs": mean8,
        "mean_dice_all_classes": best["dice"],
    }
    print(f"command: {result['command']}  (in {scratch})")
    print(f"wall {wall:.0f} s, CPU {cpu:.0f} s; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
          f"matmul {gflops_before:.0f} / {gflops_after:.0f} GFLOP/s (idle {args.reference_gflops:.0f})")
    print(f"estimated wall time on the idle machine: {idle_estimate:.0f} s (target <= {TARGET_S:.0f} s: "
          f"{'met' if idle_estimate <= TARGET_S else 'missed'})")
    print("validation Dice per epoch (all 13 classes / 8 organs): "
          + ", ".join(f"{c['epoch']}: {c['dice']:.3f} / {c['dice_8_organs']:.3f}" for c in result["curve"]))
    print(f"best epoch {best['epoch']}: " + ", ".join(f"{k} {v:.3f}" for k, v in organs.items()))
    print(f"mean Dice over the 8 organs {mean8:.3f} (target >= {TARGET_DICE}: {'met' if mean8 >= TARGET_DICE else 'missed'}); "
          f"over all 13 classes {best['dice']:.3f}")
    if args.contend:
        contended = scratch / "contended"
        scratch_copy(contended)
        env_c = {**env, "PYTHONPATH": env["PYTHONPATH"].replace(str(scratch), str(contended), 1)}
        wall_c, cpu_c = contended_run(cmd, contended, env_c)
        result.update(contended_wall_s=wall_c, contended_cpu_s=cpu_c, contended_ratio=wall_c / wall)
        print(f"with one busy process: wall {wall_c:.0f} s, CPU {cpu_c:.0f} s; alone {wall:.0f} s: ratio {wall_c / wall:.2f} "
              f"(target <= 1.5: {'met' if wall_c / wall <= 1.5 else 'missed'}), same run")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
