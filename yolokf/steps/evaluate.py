"""The code inside the evaluation step: validate weights on a held-out split and report it the way the KFP UI shows.

The split is the dataset's `test:` when it has one, else `val:` (the outputs say which). Outputs: the metrics
(the same readable names as training), a per-class Markdown table, and the confusion matrix as KFP
`ClassificationMetrics`, which the UI draws.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yolokf.datasets import load_data_yaml
from yolokf.steps.train import prepare_environment, readable_metrics


@dataclass
class Evaluation:
    """What one validation of a weights file produced."""

    split: str
    metrics: dict[str, float]
    task: str
    names: dict[int, str]
    classes: list[dict[str, Any]] = field(default_factory=list)  # one row per class (ultralytics' summary())
    categories: list[str] = field(default_factory=list)  # confusion-matrix labels (+ background for boxes)
    matrix: list[list[int]] = field(default_factory=list)  # rows: the true class, columns: the predicted one


def held_out_split(data: str) -> str:
    """`test` when the dataset has a test split (a YAML `test:` entry, or a classification `test/` folder)."""
    path = Path(data)
    if path.is_dir():
        return "test" if (path / "test").is_dir() else "val"
    return "test" if load_data_yaml(path).get("test") else "val"


def validate(
    weights: str | Path,
    data: str,
    *,
    split: str,
    imgsz: int,
    batch: int,
    device: str,
    workdir: Path,
    task: str | None = None,
    rect: bool = True,
    plots: bool = False,
) -> Any:
    """ultralytics' own validation of `weights` (a .pt or an exported model) on `split`; its metrics object.

    `rect=False` letterboxes every image to a square, as a static export must: compare exports with the .pt so.
    `plots=True` also fills the confusion matrix (ultralytics counts it only when plotting).
    """
    prepare_environment()
    from ultralytics import YOLO

    model = YOLO(str(weights), task=task)
    return model.val(
        data=data,
        split=split,
        imgsz=imgsz,
        batch=batch,
        device=device or None,
        plots=plots,
        verbose=False,
        project=str(workdir),
        name=f"val-{Path(weights).stem}",
        exist_ok=True,
        rect=rect,
    )


def evaluate(weights: Path, data: str, *, imgsz: int, batch: int, device: str, workdir: Path) -> Evaluation:
    """Validate `weights` on the held-out split of `data` (a local dataset YAML or classification folder)."""
    split = held_out_split(data)
    results = validate(weights, data, split=split, imgsz=imgsz, batch=batch, device=device, workdir=workdir, plots=True)
    names = {int(k): str(v) for k, v in (results.names or {}).items()}
    task = str(getattr(results, "task", "") or "detect")
    confusion = getattr(results, "confusion_matrix", None)
    categories: list[str] = []
    matrix: list[list[int]] = []
    if confusion is not None and getattr(confusion, "matrix", None) is not None:
        counts = confusion.matrix  # [predicted, true]; boxes add a background row and column
        categories = [names[i] for i in range(len(names))] + (["background"] if len(counts) > len(names) else [])
        matrix = [[int(round(counts[p][t])) for p in range(len(categories))] for t in range(len(categories))]
    return Evaluation(
        split=split,
        metrics=readable_metrics(results.results_dict),
        task=task,
        names=names,
        classes=list(results.summary()),
        categories=categories,
        matrix=matrix,
    )


def class_table(evaluation: Evaluation) -> str:
    """The per-class table as Markdown (the KFP UI renders Markdown artifacts)."""
    rows = evaluation.classes
    lines = [f"# Evaluation on the {evaluation.split} split", ""]
    lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in evaluation.metrics.items()]
    if rows:
        header = list(rows[0])
        lines += ["", "## Per class", "", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(_cell(row.get(h)) for h in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def evaluate_step(
    *,
    weights: Any,
    metrics: Any,
    confusion: Any,
    classes: Any,
    summary: str,
    data: str,
    imgsz: int,
    batch: int,
    device: str,
    dataset: Any = None,
) -> None:
    """Entry point of the pipeline's evaluation component: `weights` is the training step's Model artifact."""
    from yolokf.datasets import dataset_hash, step_data

    with tempfile.TemporaryDirectory(prefix="yolokf-evaluate-") as workdir:
        local = step_data(data, dataset, Path(workdir))
        best = weights_file(weights)
        evaluation = evaluate(best, local, imgsz=imgsz, batch=batch, device=device, workdir=Path(workdir))
        digest = dataset_hash(local)
    for name, value in evaluation.metrics.items():
        metrics.log_metric(name, value)
    metrics.metadata["split"] = evaluation.split
    if evaluation.matrix:
        confusion.log_confusion_matrix(evaluation.categories, evaluation.matrix)
    Path(classes.path).parent.mkdir(parents=True, exist_ok=True)
    Path(classes.path).write_text(class_table(evaluation))
    record = {"split": evaluation.split, "metrics": evaluation.metrics, "task": evaluation.task, "dataset_hash": digest}
    Path(summary).parent.mkdir(parents=True, exist_ok=True)
    Path(summary).write_text(json.dumps(record))
    print(f"yolokf: evaluated on the {evaluation.split} split: " + json.dumps(evaluation.metrics), flush=True)


def weights_file(weights: Any) -> Path:
    """The `best.pt` (else `last.pt`) in a Model artifact's folder."""
    folder = Path(weights.path)
    if folder.is_file():  # imported weights (`yolokf evaluate --model`): the file itself
        return folder
    for name in ("best.pt", "last.pt"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"No best.pt or last.pt in the weights artifact {folder}.")
