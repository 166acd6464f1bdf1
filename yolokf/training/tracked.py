"""What a training step logs to MLflow (issue 25), inside the step: its parameters, every epoch's losses, metrics and
learning rates (live where the training runs in the step's process; results.csv's epochs caught up after, for
multi-GPU DDP, `--nodes` and a resumed training), the best weights' metrics, and the weights, report and run folder
as artifacts. Rank 0's results only, once: the step process logs, never the ranks. Where: `yolokf.tracking.step`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yolokf.core.settings import TrainConfig
from yolokf.tracking.step import StepRun, open_run
from yolokf.training.result import TrainResult, results_rows

RUN_FILES = (".csv", ".png", ".jpg", ".yaml")  # the run folder's curves, plots and args.yaml


def open_training_run(config: TrainConfig, mlflow: dict[str, Any], kfp_run: str, trial: str) -> StepRun | None:
    """The training's MLflow run (a sweep trial's own, nested), checked before training; None without tracking."""
    name = f"{Path(config.model).stem}-{Path(config.data.rstrip('/')).stem}"  # yolov8n-shapes
    run = open_run(mlflow, kfp_run, name=name, trial=trial)
    if run is not None:
        print(f"yolokf: logging to MLflow run {run.link}", flush=True)
    return run


def log_training(run: StepRun, result: TrainResult, config: TrainConfig, report: Path) -> None:
    """After the training: parameters, the epochs no live call logged, the best weights' metrics, artifacts."""
    run.log_params({**{k: v for k, v in config.parameters().items() if k != "train_args"}, **config.train_args})
    run.set_tags({"yolokf.task": result.task, "ultralytics_version": result.ultralytics_version})
    run.log_epochs(results_rows(result.save_dir))
    run.log_metrics({f"best/{name}": value for name, value in result.metrics.items()}, result.epochs_done)
    for weights in (result.best, result.last):
        if weights is not None:
            run.log_artifact(weights, "weights")
    run.log_artifact(report, "report")
    for path in sorted(result.save_dir.iterdir()) if result.save_dir.is_dir() else ():
        if path.suffix in RUN_FILES:
            run.log_artifact(path, "run")
    run.finish()
