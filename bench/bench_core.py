"""Core benchmarks, each a ratio against a named baseline measured in the same run.

    python bench/bench_core.py [--repeat 5] [--epochs 15] [--tasks detect,segment,pose,obb,classify]

1. `yolokf compile` with a config file read (a profile in it: issue 26's yolokf.yaml) vs a bare kfp script compiling
   the same one-step pipeline, /dev/shm mount included (goal <= 1.30x)
2. `yolokf --help` and `yolokf run --help` wall time (goal < 0.3 s, median of 11), paired with bare `python -c pass`
3. per task, local `yolokf run` vs `yolo TASK train` with the same arguments on the task's built-in data
   (goal <= 1.10x), and the last epoch's metrics of both with the same seed (goal: equal)
"""

from __future__ import annotations

import argparse
import csv
import os
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
        from yolokf.training.train import train_step
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

# What compile reads (docs/config.md): the file's own values and a profile, here with the cluster keys of `run`
# that a user's profile holds, which compile has not (checked against the command that has them). The values are
# the defaults, and the profile's image the bare script's, so both sides compile the same pipeline.
CONFIG = textwrap.dedent(
    """
    epochs: 100
    shm-size: 8Gi
    compile:
      out: yolov8_train.yaml
    profiles:
      bench:
        host: http://localhost:8080
        namespace: kubeflow
        image: yolokf:bench
    """
)


def bytecode_env(work: Path) -> dict[str, str]:
    """This environment, with Python's bytecode cache on and kept under `work` (the warm-up runs fill it): both
    sides of a pair run from bytecode, as an installed package does (pip compiles it). Under PYTHONDONTWRITEBYTECODE
    an editable install compiles from source, on every run, each yolokf module edited since its __pycache__ was
    written (about 20 ms of compile's imports on 2026-12-07, more or less as files are edited), while kfp runs from
    its bytecode: `--from-source` times it that way."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": str(work / "pycache")}


def timed_pair(
    first: list[str], second: list[str], repeat: int, env: dict[str, str] | None = None
) -> tuple[float, float]:
    """Median wall times of two commands run alternately (after one warm-up each), so drift hits both alike."""
    for cmd in (first, second):
        subprocess.run(cmd, check=True, capture_output=True, env=env)
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for cmd, times in zip((first, second), samples, strict=True):
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env=env)
            times.append(time.perf_counter() - start)
    return statistics.median(samples[0]), statistics.median(samples[1])


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


def _ultralytics_without_mlflow(yolo: str, work: Path) -> dict[str, str]:
    """An environment whose ultralytics settings (a copy of this user's, fonts included) turn its MLflow callback
    off: with mlflow installed (issue 25's dev extra) `yolo train` would log every run to ./mlflow.db and pay for it,
    which yolokf's step never does; both sides then train alike."""
    from ultralytics.utils import USER_CONFIG_DIR

    config = work / "ultralytics-config"
    shutil.copytree(USER_CONFIG_DIR, config, dirs_exist_ok=True)
    env = {**os.environ, "YOLO_CONFIG_DIR": str(config)}
    subprocess.run([yolo, "settings", "mlflow=False"], env=env, check=True, capture_output=True)
    return env


def compare_training(task: str, epochs: int, work: Path, yolokf: str) -> list[tuple[str, str, float | None, str]]:
    """A local `yolokf run` against plain `yolo train` with the same arguments, on the task's built-in data."""
    from yolokf.data.datasets import builtin_dataset
    from yolokf.data.shapes import TASK_DATASET

    name = TASK_DATASET[task]
    model = {"detect": "yolov8n.yaml"}.get(task, f"yolov8n-{name.removeprefix('shapes-')}.yaml")
    data = str(builtin_dataset(name))
    common = [f"epochs={epochs}", "imgsz=128", "batch=16", "workers=8", "seed=0", "nbs=16"]
    yolo = shutil.which("yolo") or sys.exit("ultralytics' yolo command is missing")
    env = _ultralytics_without_mlflow(yolo, work)
    start = time.perf_counter()
    subprocess.run(
        [yolo, task, "train", f"model={model}", f"data={data}", *common, f"project={work}", f"name=bare-{task}"],
        check=True,
        capture_output=True,
        env=env,
        cwd=work,
    )
    bare_train = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run(
        [yolokf, "run", "--model", model, "--data", name, "--epochs", str(epochs)]
        + ["--imgsz", "128", "--batch", "16", "--workers", "8", "--seed", "0", "--set", "nbs=16"]
        + ["--pipeline-root", str(work / f"kfp-{task}")],
        check=True,
        capture_output=True,
        env=env,
        cwd=work,
    )
    ours_train = time.perf_counter() - start
    bare_metrics = last_epoch(work / f"bare-{task}" / "results.csv")
    (ours_csv,) = (work / f"kfp-{task}").glob("yolov8-train-*/yolo-train/run_dir/results.csv")
    ours_metrics = last_epoch(ours_csv)
    same = "equal" if bare_metrics == ours_metrics else "DIFFERENT"
    shown = ", ".join(f"{k.removeprefix('metrics/')}={v}" for k, v in ours_metrics.items())
    return [
        (
            f"{task}: yolokf run / yolo train",
            f"{ours_train:.1f} s / {bare_train:.1f} s",
            ours_train / bare_train,
            "<= 1.10",
        ),
        (f"{task}: last epoch's metrics, same seed", f"{same}: {shown}", None, "equal"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--help-repeat", type=int, default=11, help="runs of each --help, paired with python -c pass")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--tasks", default="detect", help="comma-separated: detect,segment,pose,obb,classify")
    parser.add_argument(
        "--from-source", action="store_true", help="time the pairs with this environment's bytecode settings"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="yolokf-bench-"))
    yolokf = shutil.which("yolokf") or sys.exit("install yolokf first (scripts/setup)")
    rows = []

    env = None if args.from_source else bytecode_env(work)
    bare_script = work / "bare.py"
    bare_script.write_text(BARE_KFP)
    config = work / "yolokf.yaml"
    config.write_text(CONFIG)
    bare, ours = timed_pair(
        [sys.executable, str(bare_script), str(work / "bare.yaml")],
        [yolokf, "compile", "--out", str(work / "ours.yaml"), "--config", str(config), "--profile", "bench"],
        args.repeat,
        env,
    )
    name = "yolokf compile (config file, profile) / bare kfp compile script"
    rows.append((name, f"{ours:.3f} s / {bare:.3f} s", ours / bare, "<= 1.30"))

    for argv in (["--help"], ["run", "--help"]):
        python, helptime = timed_pair([sys.executable, "-c", "pass"], [yolokf, *argv], args.help_repeat, env)
        name = f"yolokf {' '.join(argv)} (python -c pass)"
        rows.append((name, f"{helptime:.3f} s ({python:.3f} s)", None, "< 0.3 s"))

    if not args.skip_train:
        for task in args.tasks.split(","):
            rows += compare_training(task, args.epochs, work, yolokf)

    print("| measure | values | ratio | goal |")
    print("| --- | --- | --- | --- |")
    for name, values, ratio, goal in rows:
        print(f"| {name} | {values} | {'' if ratio is None else f'{ratio:.2f}x'} | {goal} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
