"""The code that runs inside the training step: plain functions, callable and testable without KFP.

`train()` runs `YOLO(model).train(...)` and returns what it produced; `write_outputs()` turns that
into the step's KFP artifacts; `training_step()` is what every training component does around a training (a
sweep trial's folder and budget, the summary), `train_step()` the one-pod component's entry.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from yolokf.core import offline
from yolokf.core.devices import check_node_device, check_visible
from yolokf.core.errors import TrainingError
from yolokf.core.settings import TrainConfig
from yolokf.data.datasets import resolve_data, step_data
from yolokf.data.task_fit import check_task
from yolokf.training.checkpoint import default_run_key, find_checkpoint, keep_saves_whole, set_aside
from yolokf.training.distributed import distributed_trainer, world
from yolokf.training.report import render_report
from yolokf.training.result import TrainResult, final_metrics, results_rows, validation_loss, validation_metrics
from yolokf.training.tracked import log_training, open_training_run
from yolokf.training.trial import round_stop, sweep_key, trial_name

RUN_NAME = "train"
STOPPED_METRICS = "yolokf-stopped-metrics.json"  # the metrics at a sweep round's stop, next to results.csv
DEVICE_ADVICE = "Set device to cpu, or compile with --gpus N so that the step's pod gets GPUs."


class _BudgetReached(Exception):
    """Raised from ultralytics' epoch-end callback once a sweep round's epochs are trained.

    Leaving this way (not with `trainer.stop`) skips ultralytics' final_eval, which strips the optimizer from
    `last.pt`: the checkpoint stays resumable, and the next round continues it on the same schedule.
    """

    def __init__(self, metrics: dict[str, float]):
        super().__init__("budget reached")
        self.metrics = metrics


def _stop_after(epochs: int) -> Any:
    def on_fit_epoch_end(trainer: Any) -> None:
        done = trainer.epoch + 1
        if epochs <= done < trainer.epochs:
            # Under torchrun every rank runs this at the same epoch and stops with the others; only rank 0
            # validated (the other ranks' metrics and fitness are None) and only its metrics are reported.
            fitness = {"fitness": round(float(trainer.fitness), 6)} if trainer.fitness is not None else {}
            raise _BudgetReached({**validation_metrics(trainer.metrics or {}), **fitness})

    return on_fit_epoch_end


def _log_epochs(on_epoch: EpochLogger) -> Any:
    def on_fit_epoch_end(trainer: Any) -> None:
        # Under torchrun only rank 0 validated and logs; ultralytics' final validation of best.pt calls this again at
        # epoch epochs + 1, which is logged as best/... after the training instead.
        if world()[1] == 0 and trainer.epoch < trainer.epochs:
            losses = trainer.label_loss_items(trainer.tloss, prefix="train")
            on_epoch(trainer.epoch + 1, {**losses, **(trainer.metrics or {}), **(trainer.lr or {})})

    return on_fit_epoch_end


def _without_ultralytics_mlflow(trainer: Any) -> None:
    """yolokf logs to MLflow itself (yolokf.tracking.step): ultralytics' own MLflow callback, on whenever mlflow
    imports, would set another experiment and fail on the run KFP's plugin injected, or log the same curves twice."""
    theirs = "ultralytics.utils.callbacks.mlflow"
    for event, callbacks in trainer.callbacks.items():
        trainer.callbacks[event] = [c for c in callbacks if getattr(c, "__module__", "") != theirs]


# A training epoch's values (losses, metrics, learning rates) as ultralytics names them, at epoch 1, 2, ...
EpochLogger = Callable[[int, dict[str, Any]], None]


def train(
    config: TrainConfig,
    workdir: Path,
    *,
    data: str | None = None,
    checkpoint_dir: str | None = None,
    run_key: str | None = None,
    stop_after: int | None = None,
    distributed: bool = False,
    on_epoch: EpochLogger | None = None,
) -> TrainResult:
    """Train `config` with ultralytics, writing the run folder under `workdir`.

    `data` overrides `config.data` with an already resolved local dataset (the download step's output).
    With `checkpoint_dir` the run folder is `<checkpoint_dir>/<run key>` instead, and an unfinished
    `last.pt` there is resumed rather than started over (docs/cluster.md, "Resume").
    `stop_after` ends this attempt once that many of `config.epochs` are trained, keeping `last.pt` resumable
    (a sweep round's budget, docs/tune.md).
    `distributed`: one rank of a multi-node training under torchrun (yolokf.training.distributed, issue 19).
    `on_epoch`: called after each epoch in this process (MLflow's live curves, issue 25).
    """
    offline.prepare_environment()
    if distributed:  # torchrun's processes on this node (LOCAL_WORLD_SIZE), each on the GPU `device` lists for it
        check_node_device(config.device, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    # A device edited in the run form may name GPUs this pod was not given (compiled --gpus): say so, not CUDA.
    check_visible(config.device, where="this step", flag="device", advice=DEVICE_ADVICE)
    offline.check_model(config.model)
    data_path = data or resolve_data(config.data)

    import ultralytics
    from ultralytics import YOLO
    from ultralytics.utils import USER_CONFIG_DIR

    offline.place_fonts(Path(USER_CONFIG_DIR))
    project, name = (
        (Path(checkpoint_dir), run_key or default_run_key(config)) if checkpoint_dir else (workdir, RUN_NAME)
    )
    save_dir = project / name
    ckpt = find_checkpoint(save_dir, config.epochs) if checkpoint_dir else None
    budget = stop_after if stop_after and stop_after < config.epochs else None
    trainer: Any = None
    leader = not distributed or world()[1] == 0  # under torchrun only rank 0 clears a stale run folder
    results, budget_metrics, saved_metrics = None, None, None
    try:
        if ckpt is not None and ckpt.finished:
            print(f"yolokf: {save_dir} already holds a finished training; reporting it.", flush=True)
            model = YOLO(str(ckpt.path))
            # The metrics it reported then, fitness included: those ultralytics saved with the best weights.
            best = save_dir / "weights" / "best.pt"
            saved_metrics = (YOLO(str(best)) if best.is_file() else model).ckpt.get("train_metrics")
        elif ckpt is not None and budget and ckpt.epochs_done >= budget:
            print(f"yolokf: {save_dir} has trained {ckpt.epochs_done} epochs already; reporting it.", flush=True)
            model = YOLO(str(ckpt.path))
            stopped = save_dir / STOPPED_METRICS
            budget_metrics = json.loads(stopped.read_text()) if stopped.exists() else None
        elif ckpt is not None:
            print(f"yolokf: resuming {ckpt.path} after epoch {ckpt.epochs_done} of {config.epochs}.", flush=True)
            model = YOLO(str(ckpt.path))
            _add_callbacks(model, on_epoch)
            if budget:
                model.add_callback("on_fit_epoch_end", _stop_after(budget))
            if distributed:
                trainer = distributed_trainer(model.task_map[str(model.task)]["trainer"])
            # Only what ultralytics lets a resume change: this attempt's dataset path, device and workers.
            kwargs = config.train_kwargs()
            results = model.train(
                resume=True,
                data=data_path,
                device=kwargs["device"],
                workers=kwargs["workers"],
                save_dir=str(save_dir),
                trainer=trainer,
            )
        else:
            if checkpoint_dir and leader:
                set_aside(save_dir)
            model = YOLO(config.model)
            check_task(str(model.task), Path(data_path), config.model)  # before ultralytics builds anything
            _add_callbacks(model, on_epoch)
            if budget:
                model.add_callback("on_fit_epoch_end", _stop_after(budget))
            if distributed:
                trainer = distributed_trainer(model.task_map[str(model.task)]["trainer"])
            results = model.train(
                data=data_path, project=str(project), name=name, exist_ok=True, trainer=trainer, **config.train_kwargs()
            )
    except _BudgetReached as stop:
        budget_metrics = stop.metrics
        save_dir = Path(model.trainer.save_dir) if model.trainer is not None else save_dir
        if leader:
            (save_dir / STOPPED_METRICS).write_text(json.dumps(budget_metrics))  # for a retry that finds it done
        print(f"yolokf: stopped after epoch {budget} of {config.epochs}; {save_dir} continues later.", flush=True)
    except (FileNotFoundError, ConnectionError) as exc:
        raise TrainingError(f"Training could not start: {exc}") from exc
    if results is not None and model.trainer is None:
        raise TrainingError("ultralytics returned without a trainer; see the log above.")
    if model.trainer is not None:
        save_dir = Path(model.trainer.save_dir)
    rows = results_rows(save_dir)
    metrics = budget_metrics or final_metrics(results if results is not None else saved_metrics, rows)
    kpt_shape = (getattr(model.trainer, "data", None) or {}).get("kpt_shape") if model.trainer is not None else None
    kpt_shape = kpt_shape or getattr(getattr(model, "model", None), "kpt_shape", None)
    weights = save_dir / "weights"
    return TrainResult(
        save_dir=save_dir,
        best=weights / "best.pt" if (weights / "best.pt").exists() else None,
        last=weights / "last.pt" if (weights / "last.pt").exists() else None,
        metrics=metrics,
        task=str(model.task),
        names={int(k): str(v) for k, v in (model.names or {}).items()},
        epochs=config.epochs,
        ultralytics_version=ultralytics.__version__,
        resumed_from_epoch=ckpt.epochs_done if ckpt is not None and not ckpt.finished else None,
        epochs_done=len(rows),
        val_loss=validation_loss(rows[-1]) if rows else None,
        extra={
            **({"checkpoint": str(save_dir), "already_finished": True} if ckpt is not None and ckpt.finished else {}),
            **({"kpt_shape": list(kpt_shape)} if kpt_shape else {}),
        },
    )


def _add_callbacks(model: Any, on_epoch: EpochLogger | None) -> None:
    """yolokf's callbacks on every training, added before the budget's stop so that the epoch a sweep round stops
    at is logged too. Checkpoints are saved whole or not at all (issue 24: a kill during a save costs that epoch).
    ultralytics' own MLflow callback is off in every yolokf training: with mlflow-skinny installed (the train extra)
    it would otherwise log each run to ./runs/mlflow unasked; yolokf logs when `--mlflow` asks (the image's
    settings keep it unimported)."""
    model.add_callback("on_pretrain_routine_start", _without_ultralytics_mlflow)
    model.add_callback("on_pretrain_routine_start", keep_saves_whole)
    if on_epoch is not None:
        model.add_callback("on_fit_epoch_end", _log_epochs(on_epoch))


def write_outputs(
    result: TrainResult, config: TrainConfig, *, weights: Any, metrics: Any, report: Any, run_dir: Any
) -> None:
    """Fill the step's artifacts: weights (Model), metrics (Metrics), report (HTML), run folder (Artifact)."""

    weights_dir = Path(weights.path)
    weights_dir.mkdir(parents=True, exist_ok=True)
    for source in (result.best, result.last):
        if source is not None:
            shutil.copy2(source, weights_dir / source.name)
    weights.metadata.update(
        {
            "framework": "ultralytics",
            "task": result.task,
            "names": {str(k): v for k, v in result.names.items()},
            "imgsz": config.imgsz,
            "epochs": result.epochs,
            "epochs_done": result.epochs_done,
            "model": config.model,
            "parameters": config.parameters(),  # the training fields this step received
            "ultralytics_version": result.ultralytics_version,
            "metrics": result.metrics,
            "files": sorted(p.name for p in weights_dir.iterdir()),
            **({"resumed_from_epoch": result.resumed_from_epoch} if result.resumed_from_epoch else {}),
            **result.extra,
        }
    )
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    Path(report.path).parent.mkdir(parents=True, exist_ok=True)
    Path(report.path).write_text(render_report(result, config))
    shutil.copytree(result.save_dir, run_dir.path, ignore=shutil.ignore_patterns("weights"), dirs_exist_ok=True)
    run_dir.metadata.update({"files": sorted(p.name for p in Path(run_dir.path).iterdir())})


@dataclass(frozen=True)
class Attempt:
    """Where a training step trains and how far: its checkpoint folder and run key ('' and '' without one), and
    the epoch a sweep round stops at (0: train to the run's `epochs`)."""

    checkpoint_dir: str
    run_key: str
    stop_after: int = 0
    on_epoch: EpochLogger | None = None  # MLflow's live curves, where the training runs in this process


# How a training step trains once its attempt is decided: in its own pod (`train_step`) or across nodes
# (`yolokf.training.launch.launch_step`); `workdir` is the step's scratch folder.
Trains = Callable[[TrainConfig, Path, Attempt], TrainResult]


def training_step(
    trains: Trains,
    *,
    weights: Any,
    metrics: Any,
    report: Any,
    run_dir: Any,
    summary: str | None = None,
    checkpoint_dir: str = "",
    run_key: str = "",
    trial: dict[str, Any] | None = None,
    trials: list[Any] | None = None,
    sweep: dict[str, Any] | None = None,
    mlflow: dict[str, Any] | None = None,
    kfp_run: str = "",
    **parameters: Any,
) -> None:
    """What every training component does around `trains`: `parameters` are its training fields.

    A sweep trial (`trial`: its index and values, `trials`: the run's whole list, `sweep`: its round) trains in
    `<checkpoint_dir>/<sweep key>/trial-NN`, the key and the round's stop epoch derived here from the values
    this run received; a trial that fails is recorded as failed in `summary`, so the sweep goes on.
    `mlflow` (`--mlflow`, compiled in) and `kfp_run` (the KFP run's id): the MLflow run it logs into, opened and
    checked before training (yolokf.tracking.step), with KFP's plugin's injected run first.
    """
    config = TrainConfig.from_parameters(parameters)
    record: dict[str, Any] = {}
    attempt = Attempt(checkpoint_dir, run_key)
    if trial:
        spec, every = sweep or {}, list(trials or [trial])
        record = {"trial": int(trial["trial"]), "values": dict(trial["values"])}
        attempt = Attempt(
            str(Path(checkpoint_dir) / sweep_key(config, every, spec)),
            trial_name(trial),
            round_stop(spec, len(every), config.epochs),
        )
    tracked = open_training_run(config, mlflow or {}, kfp_run, attempt.run_key if trial else "")
    if tracked is not None:
        attempt = replace(attempt, on_epoch=tracked.on_epoch)
    try:
        if trial:
            config = config.with_values(trial["values"])
        with tempfile.TemporaryDirectory(prefix="yolokf-train-") as workdir:
            result = trains(config, Path(workdir), attempt)
            write_outputs(result, config, weights=weights, metrics=metrics, report=report, run_dir=run_dir)
            if tracked is not None:
                log_training(tracked, result, config, Path(report.path))
                weights.metadata["mlflow_run"] = tracked.top_link
    except Exception as exc:
        if tracked is not None:
            tracked.finish(failed=True)
        if not trial:
            raise
        import traceback

        traceback.print_exc()
        print(f"yolokf: {attempt.run_key} failed: {exc}", flush=True)
        error = f"{type(exc).__name__}: {exc}"
        _write_failed_outputs(error, weights=weights, report=report, run_dir=run_dir)
        record.update(status="failed", error=error[:500], metrics={}, epochs=0, weights="")
    else:
        best = result.best or result.last
        if tracked is not None:
            record["mlflow_run"] = tracked.top_link  # a sweep's report hands it on (yolokf.sweeps.select)
        record.update(
            status="succeeded",
            metrics=result.metrics,
            epochs=result.epochs_done,
            parameters=config.parameters(),
            **({"val_loss": result.val_loss} if result.val_loss is not None else {}),  # KFP parameters hold no None
            # The checkpoint folder outlives the step (the sweep's selection reads it); else the artifact's copy.
            weights=str(best if attempt.checkpoint_dir else Path(weights.path) / best.name) if best is not None else "",
        )
        print("yolokf-metrics " + json.dumps(result.metrics), flush=True)
    if summary is not None:
        Path(summary).parent.mkdir(parents=True, exist_ok=True)
        Path(summary).write_text(json.dumps(record))


def train_step(*, dataset: Any = None, **inputs: Any) -> None:
    """Entry point of the pipeline's training component: one pod trains (`training_step` has the inputs)."""

    def in_this_pod(config: TrainConfig, workdir: Path, attempt: Attempt) -> TrainResult:
        return train(
            config,
            workdir,
            data=step_data(config.data, dataset, workdir),
            checkpoint_dir=attempt.checkpoint_dir or None,
            run_key=attempt.run_key or None,
            stop_after=attempt.stop_after or None,
            on_epoch=attempt.on_epoch,
        )

    training_step(in_this_pod, **inputs)


def _write_failed_outputs(error: str, *, weights: Any, report: Any, run_dir: Any) -> None:
    """A failed trial's artifacts: present (a backend uploads every declared output) and saying what failed."""
    import html

    for artifact in (weights, run_dir):
        Path(artifact.path).mkdir(parents=True, exist_ok=True)
        (Path(artifact.path) / "FAILED.txt").write_text(error + "\n")
    weights.metadata.update({"status": "failed", "error": error})
    Path(report.path).parent.mkdir(parents=True, exist_ok=True)
    Path(report.path).write_text(f"<html><body><h2>Trial failed</h2><pre>{html.escape(error)}</pre></body></html>")
