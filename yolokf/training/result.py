"""What one training produced (`TrainResult`), read from its run folder, and carried across torchrun as JSON.

Plain Python: the launcher, the report and the step's outputs read it without torch.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from yolokf.core.tasks import readable_metrics


@dataclass
class TrainResult:
    """What one training produced."""

    save_dir: Path
    best: Path | None
    last: Path | None
    metrics: dict[str, float]
    task: str
    names: dict[int, str]
    epochs: int
    ultralytics_version: str
    resumed_from_epoch: int | None = None
    epochs_done: int = 0  # epochs trained so far: fewer than `epochs` after a stop at a sweep round's budget
    val_loss: float | None = None  # the last epoch's validation loss (a sweep's tie-breaker)
    extra: dict[str, Any] = field(default_factory=dict)


def results_rows(save_dir: Path) -> list[dict[str, str]]:
    """A run folder's results.csv, one row per epoch (ultralytics appends to it on resume); [] when absent."""
    results = save_dir / "results.csv"
    if not results.exists():
        return []
    with results.open() as handle:
        return [{key.strip(): value for key, value in row.items()} for row in csv.DictReader(handle)]


def validation_metrics(values: dict[str, Any]) -> dict[str, float]:
    """The validation metrics among an epoch's values (a results.csv row, `trainer.metrics`), not the losses."""
    return readable_metrics({key: value for key, value in values.items() if key.startswith("metrics/")})


def final_metrics(results: Any, rows: list[dict[str, str]]) -> dict[str, float]:
    """The metrics of a finished training, fitness included, the same on one device as under DDP.

    On one device `YOLO.train` returns the final validation's metrics object; under DDP the training runs in
    ultralytics' subprocesses and `YOLO.train` returns the `train_metrics` dict it saved in best.pt (the same
    `metrics/...` keys and `fitness`, beside the validation losses), which is also what a finished checkpoint
    found again reports. results.csv, which has no fitness, is the last resort: a run that returned neither.
    """
    if hasattr(results, "results_dict"):
        values = dict(results.results_dict)
    elif isinstance(results, dict):
        values = {key: value for key, value in results.items() if key.startswith("metrics/") or key == "fitness"}
    else:
        values = {}
    return readable_metrics(values) or (validation_metrics(rows[-1]) if rows else {})


def validation_loss(row: dict[str, str]) -> float | None:
    """An epoch's total validation loss (box + cls + dfl, or the task's own terms).

    A sweep ranks trials by it when their metric ties: in the first epochs every mAP is often 0, while the loss
    already tells a learning trial from one that is not (yolokf.sweeps.select.rank).
    """
    losses = [float(value) for key, value in row.items() if key.startswith("val/") and value]
    return round(sum(losses), 6) if losses else None


def result_json(result: TrainResult) -> dict[str, Any]:
    """A TrainResult as JSON (paths as text), for the launcher on the other side of torchrun."""
    values = asdict(result)
    for key in ("save_dir", "best", "last"):
        values[key] = str(values[key]) if values[key] is not None else None
    values["names"] = {str(k): v for k, v in values["names"].items()}
    return values


def result_from_json(values: dict[str, Any]) -> TrainResult:
    values = dict(values)
    for key in ("save_dir", "best", "last"):
        values[key] = Path(values[key]) if values[key] is not None else None
    values["names"] = {int(k): v for k, v in values["names"].items()}
    return TrainResult(**values)
