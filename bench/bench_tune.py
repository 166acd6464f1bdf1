"""Successive halving against the full sweep: the same trials (same space, sampler and seed), run locally.

    python bench/bench_tune.py [--trials 8] [--epochs 8] [--imgsz 128] [--eta 2]

Reports, for `yolokf tune` without and with `--halving ETA`: trial-epochs spent, the best trial's mAP50-95 and
fitness, and wall time. Goal (issue 11): halving spends at most half the trial-epochs of the full sweep, for a
best mAP50-95 within 0.02 of the full sweep's.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPACE = ["--space", "lr0=loguniform:1e-5:3e-3", "--space", "warmup_epochs=uniform:0:3"]


def sweep(args: argparse.Namespace, root: Path, halving: int | None) -> dict[str, float]:
    command = [sys.executable, "-m", "yolokf", "tune", "--model", "yolov8n.yaml", "--data", "shapes"]
    command += ["--epochs", str(args.epochs), "--imgsz", str(args.imgsz), "--set", "nbs=16"]
    command += ["--set", "optimizer=AdamW", "--set", "plots=false", "--workers", "0", *SPACE]
    command += ["--trials", str(args.trials), "--sampler", "sobol", "--seed", "0", "--metric", "mAP50-95"]
    command += ["--pipeline-root", str(root)] + (["--halving", str(halving)] if halving else [])
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    rows = dict(re.findall(r"^│ (\S+)\s+│\s+([\d.]+) │$", done.stdout, re.M))
    return {"trial_epochs": float(rows["trial_epochs"]), "mAP50-95": float(rows["mAP50-95"]),
            "fitness": float(rows["fitness"]), "seconds": seconds}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--eta", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="yolokf-bench-tune-") as tmp:
        full = sweep(args, Path(tmp) / "full", None)
        halved = sweep(args, Path(tmp) / "halving", args.eta)
    print(f"{args.trials} trials, {args.epochs} epochs, imgsz {args.imgsz}, sobol seed 0")
    print(f"{'':<12}{'trial-epochs':>14}{'best mAP50-95':>15}{'fitness':>10}{'wall s':>9}")
    for name, result in (("full", full), (f"halving {args.eta}", halved)):
        print(f"{name:<12}{result['trial_epochs']:>14.0f}{result['mAP50-95']:>15.4f}{result['fitness']:>10.4f}"
              f"{result['seconds']:>9.0f}")  # fmt: skip
    print(f"trial-epochs ratio {halved['trial_epochs'] / full['trial_epochs']:.2f} (goal <= 0.50), "
          f"best mAP50-95 difference {halved['mAP50-95'] - full['mAP50-95']:+.4f} (goal >= -0.02), "
          f"wall-time ratio {halved['seconds'] / full['seconds']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
