"""Ultralytics' tasks: which one a model is for (from its name, as ultralytics reads it: `yolov8n-seg.yaml`,
`yolo11n-pose.pt`), the metrics each reports and under which names, and the metric that ranks its models.
Whether a dataset fits a task is `yolokf.data.task_fit`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

TASKS = ("detect", "segment", "classify", "pose", "obb")
_NAME_SUFFIXES = {"-seg": "segment", "-cls": "classify", "-pose": "pose", "-obb": "obb"}
EXAMPLE_DATA = {
    "detect": "shapes",
    "segment": "shapes-seg",
    "classify": "shapes-cls",
    "pose": "shapes-pose",
    "obb": "shapes-obb",
}


_BOX = ("precision", "recall", "mAP50", "mAP50-95")


def task_metrics(task: str | None) -> tuple[str, ...]:
    """The metric names a training step of `task` reports (readable_metrics); () if unknown."""
    if task is None:
        return ()
    if task == "classify":
        return ("top1_accuracy", "top5_accuracy", "fitness")
    prefix = {"segment": "mask_", "pose": "pose_"}.get(task)
    return (*_BOX, *(f"{prefix}{name}" for name in _BOX if prefix), "fitness")


def primary_metric(task: str | None) -> str:
    """The metric that ranks models of `task`: mAP50-95 of its own output (masks, keypoints), top-1 for classify."""
    own = {"classify": "top1_accuracy", "segment": "mask_mAP50-95", "pose": "pose_mAP50-95"}
    return own.get(task or "", "mAP50-95")


def model_task(model: str) -> str | None:
    """The task a model YAML's or weights' name says (ultralytics' own rule); None for weights named otherwise.

    `best.pt` says nothing: its task is in the checkpoint, and the step checks it once the model is loaded.
    """
    name = Path(model).name.lower()
    for suffix, task in _NAME_SUFFIXES.items():
        if suffix in name:
            return task
    if name.endswith((".yaml", ".yml")) or name.startswith(("yolov", "yolo1", "yolo2")):
        return "detect"
    return None


_KIND_PREFIX = {"B": "", "M": "mask_", "P": "pose_"}
_RENAMES = {"accuracy_top1": "top1_accuracy", "accuracy_top5": "top5_accuracy"}


def readable_metrics(results: dict[str, Any]) -> dict[str, float]:
    """ultralytics' result keys under readable names: metrics/mAP50(B) -> mAP50, metrics/mAP50(M) -> mask_mAP50."""
    readable: dict[str, float] = {}
    for key, value in results.items():
        name = key.removeprefix("metrics/")
        match = re.fullmatch(r"(.+)\((B|M|P)\)", name)
        if match:
            name = _KIND_PREFIX[match.group(2)] + match.group(1)
        name = _RENAMES.get(name, name)
        try:
            readable[name] = round(float(value), 6)
        except (TypeError, ValueError):
            continue
    return readable
