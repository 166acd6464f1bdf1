"""Benchmarks for issue 2, each a ratio against a named baseline measured in the same run.

    python bench/bench_core.py [--repeat 5] [--epochs 15]

1. `yolokf compile` vs a bare kfp script compiling the same one-step pipeline, /dev/shm mount included
   (goal <= 1.15x)
2. `yolokf --help` wall time (goal < 0.3 s), next to bare `python -c pass`
3. local `yolokf run` vs `yolo train` with the same arguments on the shapes data (goal <= 1.10x)
4. final metrics of both with the same seed (goal: equal)
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

BARE_KFP = textwrap.dedent(
    """
    import sys
    from kfp import compiler, dsl, kubernetes
    from kfp.dsl import HTML, Artifact, Metrics, Model, Output

    @dsl.component(base_image="yolokf:bench", install_kfp_package=False)
    def yolo_train(model: str, data: str, epochs: int, imgsz: int, batch: int, device: str, workers: int,
                   seed: int, train_args: dict, weights: Output[Model], metrics: Output[Metrics],
                   report: Output[HTML], run_dir: Output[Artifact]):
        from yolokf.steps.train import train_step
        train_step(**locals())

    @dsl.pipeline(name="yolov8-train")
    def yolov8_train(model: str = "yolov8n.pt", data: str = "coco128.yaml", epochs: int = 100, imgsz: int = 640,
                     batch: int = 16, device: str = "", workers: int = 8, seed: int = 0, train_args: dict = {}):
        task = yolo_train(model=model, data=data, epochs=epochs, imgsz=imgsz, batch=batch, device=device,
                          workers=workers, seed=seed, train_args=train_args)
        task.set_display_name("train")
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit="8Gi")

    compiler.Compiler().compile(yolov8_train, package_path=sys.argv[1])
    """
)


def timed(cmd: list[str], repeat: int, **kwargs) -> float:
    """Median wall time of `cmd` over `repeat` runs (after one warm-up)."""
    subprocess.run(cmd, check=True, capture_output=True, **kwargs)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, **kwargs)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def last_epoch(results_csv: Path) -> dict[str, str]:
    with results_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    return {k.strip(): v.strip() for k, v in rows[-1].items() if k.strip().startswith("metrics/")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="yolokf-bench-"))
    yolokf = shutil.which("yolokf") or sys.exit("install yolokf first (scripts/setup)")
    rows = []

    bare_script = work / "bare.py"
    bare_script.write_text(BARE_KFP)
    bare = timed([sys.executable, str(bare_script), str(work / "bare.yaml")], args.repeat)
    ours = timed([yolokf, "compile", "--out", str(work / "ours.yaml"), "--image", "yolokf:bench"], args.repeat)
    rows.append(("yolokf compile / bare kfp compile script", f"{ours:.3f} s / {bare:.3f} s", ours / bare, "<= 1.15"))

    python = timed([sys.executable, "-c", "pass"], args.repeat)
    helptime = timed([yolokf, "--help"], args.repeat)
    rows.append(("yolokf --help (python -c pass)", f"{helptime:.3f} s ({python:.3f} s)", None, "< 0.3 s"))

    if not args.skip_train:
        from yolokf.datasets import builtin_dataset

        data = str(builtin_dataset("shapes"))
        common = [f"epochs={args.epochs}", "imgsz=128", "batch=16", "workers=8", "seed=0", "nbs=16"]
        start = time.perf_counter()
        yolo = shutil.which("yolo") or sys.exit("ultralytics' yolo command is missing")
        subprocess.run(
            [yolo, "train", "model=yolov8n.yaml", f"data={data}", *common, f"project={work}", "name=bare"],
            check=True,
            capture_output=True,
        )
        bare_train = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run(
            [yolokf, "run", "--model", "yolov8n.yaml", "--data", "shapes", "--epochs", str(args.epochs)]
            + ["--imgsz", "128", "--batch", "16", "--workers", "8", "--seed", "0", "--set", "nbs=16"]
            + ["--pipeline-root", str(work / "kfp")],
            check=True,
            capture_output=True,
        )
        ours_train = time.perf_counter() - start
        rows.append(
            ("yolokf run / yolo train", f"{ours_train:.1f} s / {bare_train:.1f} s", ours_train / bare_train, "<= 1.10")
        )
        bare_metrics = last_epoch(work / "bare" / "results.csv")
        (ours_csv,) = (work / "kfp").glob("yolov8-train-*/yolo-train/run_dir/results.csv")
        ours_metrics = last_epoch(ours_csv)
        same = "equal" if bare_metrics == ours_metrics else "DIFFERENT"
        shown = ", ".join(f"{k.removeprefix('metrics/')}={v}" for k, v in ours_metrics.items())
        rows.append(("final metrics, same seed", f"{same}: {shown}", None, "equal"))

    print("| measure | values | ratio | goal |")
    print("| --- | --- | --- | --- |")
    for name, values, ratio, goal in rows:
        print(f"| {name} | {values} | {'' if ratio is None else f'{ratio:.2f}x'} | {goal} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
