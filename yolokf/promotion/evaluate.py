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
from typing import TYPE_CHECKING, Any

from yolokf.core.offline import prepare_environment
from yolokf.core.tasks import readable_metrics
from yolokf.data.datasets import dataset_spec, step_data, step_dataset_hash
from yolokf.tracking.step import open_run

if TYPE_CHECKING:  # the component's types: pipeline.py generates yolo_evaluate from this signature (issue 15)
    from kfp.dsl import ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output, OutputPath


@dataclass(frozen=True)
class WeightsInfo:
    """What a weights file says about itself (its checkpoint), never its file name or a CLI default (issue 16)."""

    task: str
    epochs: int  # epochs trained (results rows), else the epochs it was configured for
    imgsz: int


def weights_info(weights: str | Path) -> WeightsInfo:
    """The task, trained epochs and image size recorded in an ultralytics checkpoint (`train_args`, `train_results`)."""
    prepare_environment()
    from ultralytics.nn.tasks import guess_model_task, torch_safe_load

    checkpoint, _ = torch_safe_load(str(weights))
    args = dict(checkpoint.get("train_args") or {})
    model = checkpoint.get("model")
    task = str(args.get("task") or getattr(model, "task", "") or guess_model_task(model))
    results = checkpoint.get("train_results") or {}
    trained = len(results.get("epoch") or [])  # one row per epoch trained (early stopping, --halving rounds)
    epochs = trained or int(args.get("epochs") or 0)
    imgsz = args.get("imgsz") or 640
    return WeightsInfo(task=task, epochs=epochs, imgsz=int(max(imgsz) if isinstance(imgsz, list) else imgsz))


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
    settings: dict[str, Any] = field(default_factory=dict)  # validation_settings: what produced these figures


# How the .pt is validated, once per run, for the evaluation, the exports' reference, the gate and the registry
# (issue 26: one number for one model on one split): a square letterbox (rect=False), as a static export must be
# validated, so the exports differ from it by their runtime only.
RECT = False


def held_out_split(data: str, spec: dict[str, Any] | None = None) -> str:
    """`test` when the dataset has a test split (a YAML `test:` entry, or a classification `test/` folder), as
    ultralytics resolves the dataset (any name, YAML or folder training accepts); the one place this is decided."""
    return "test" if (spec if spec is not None else dataset_spec(data)).get("test") else "val"


def validation_settings(imgsz: int, batch: int, device: str) -> dict[str, Any]:
    """The settings one validation of the .pt ran with, as the evaluation records them and the exports compare."""
    return {"imgsz": int(imgsz), "batch": int(batch), "rect": RECT, "device": device}


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
    results = validate(
        weights, data, split=split, imgsz=imgsz, batch=batch, device=device, workdir=workdir, plots=True, rect=RECT
    )
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
    if evaluation.settings:
        s = evaluation.settings
        lines += [f"imgsz {s['imgsz']}, batch {s['batch']}, square letterbox (as the exports are checked)", ""]
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
    weights: Input[Model],
    data: str,
    batch: int,
    device: str,
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    classes: Output[Markdown],
    summary: OutputPath(str),  # type: ignore[valid-type]
    dataset: Input[Dataset] = None,
    mlflow: dict = {},  # noqa: B006 (a component input's default; never changed)
    kfp_run: str = "",
) -> None:
    """Evaluate weights on the dataset's held-out split (yolokf), at the image size they were trained at.

    The summary (for the gate and the registration step) carries what the weights and the data say of themselves:
    the task, trained epochs and image size from the checkpoint, and the dataset's content hash. With MLflow
    (`mlflow`, or KFP's plugin) the metrics and the per-class table go to the run's MLflow run as eval/... .
    """
    tracked = open_run(mlflow, kfp_run, name=Path(data.rstrip("/")).stem)  # checked before the work

    with tempfile.TemporaryDirectory(prefix="yolokf-evaluate-") as workdir:
        local = step_data(data, dataset, Path(workdir))
        best = weights_file(weights)
        info = weights_info(best)
        evaluation = evaluate(best, local, imgsz=info.imgsz, batch=batch, device=device, workdir=Path(workdir))
        evaluation.settings = validation_settings(info.imgsz, batch, device)
        digest = step_dataset_hash(local, dataset)
    for name, value in evaluation.metrics.items():
        metrics.log_metric(name, value)
    metrics.metadata["split"] = evaluation.split
    metrics.metadata["settings"] = evaluation.settings
    if evaluation.matrix:
        confusion.log_confusion_matrix(evaluation.categories, evaluation.matrix)
    Path(classes.path).parent.mkdir(parents=True, exist_ok=True)
    Path(classes.path).write_text(class_table(evaluation))
    record = {
        "split": evaluation.split,
        "metrics": evaluation.metrics,
        "task": info.task,
        "epochs": info.epochs,
        "imgsz": info.imgsz,
        "dataset_hash": digest,
        "settings": evaluation.settings,
    }
    Path(summary).parent.mkdir(parents=True, exist_ok=True)
    Path(summary).write_text(json.dumps(record))
    print(
        f"yolokf: evaluated on the {evaluation.split} split at imgsz {info.imgsz}: " + json.dumps(evaluation.metrics),
        flush=True,
    )
    if tracked is not None:
        tracked.log_metrics({f"eval/{name}": value for name, value in evaluation.metrics.items()})
        tracked.set_tags({"yolokf.eval_split": evaluation.split, "yolokf.dataset_hash": digest})
        tracked.log_dict({"split": evaluation.split, "classes": evaluation.classes}, "evaluation/classes.json")
        tracked.log_text(class_table(evaluation), "evaluation/classes.md")
        tracked.finish()
        metrics.metadata["mlflow_run"] = tracked.top_link


def weights_file(weights: Any) -> Path:
    """The `best.pt` (else `last.pt`) in a Model artifact's folder."""
    folder = Path(weights.path)
    if folder.is_file():  # imported weights (`yolokf evaluate --model`): the file itself
        return folder
    for name in ("best.pt", "last.pt"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"No best.pt or last.pt in the weights artifact {folder}.")
