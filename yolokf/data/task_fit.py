"""Whether a dataset can train a model's task, checked before training starts.

A segmentation model given box labels, or a classifier given a detection dataset, otherwise fails deep inside
ultralytics after the model is built. The task comes from the model's name (`yolokf.core.tasks.model_task`), or,
inside the step, from the loaded model itself.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from yolokf.core.errors import DataError
from yolokf.core.tasks import EXAMPLE_DATA
from yolokf.data.datasets import images_base, load_data_yaml, split_entries

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def check_task(task: str, data: Path, model: str) -> None:
    """Raise a DataError when the dataset at `data` (a data YAML, or a classification folder) cannot train `task`."""
    kind = dataset_kind(data)
    if kind is None or _fits(task, kind):
        return
    needs = {
        "detect": "a dataset YAML with box or polygon labels",
        "segment": "polygon labels (cls x1 y1 x2 y2 ...)",
        "classify": "a folder with train/<class>/ and val/<class>/ images",
        "pose": "a dataset YAML with kpt_shape: and keypoint labels",
        "obb": "oriented-box labels (cls x1 y1 x2 y2 x3 y3 x4 y4)",
    }[task]
    raise DataError(
        f"--model {model} is {_a(task)} model, but {data} is {_KINDS[kind]}. {_a(task).capitalize()} model needs "
        f"{needs}: pick {_a(task)} dataset (--data {EXAMPLE_DATA[task]} is built in), or a model for this data "
        f"({_model_hint(kind)})."
    )


def _a(task: str) -> str:
    return f"an {task}" if task[0] in "aeio" else f"a {task}"


_KINDS = {
    "classify": "a classification dataset (a folder of class folders)",
    "pose": "a pose dataset (kpt_shape: and keypoints)",
    "boxes": "a detection dataset (box labels)",
    "polygons": "a segmentation dataset (polygon labels)",
    "obb": "an oriented-box dataset (4-corner labels)",
}


def _model_hint(kind: str) -> str:
    return {
        "classify": "such as yolov8n-cls.yaml",
        "pose": "such as yolov8n-pose.yaml",
        "boxes": "such as yolov8n.yaml",
        "polygons": "such as yolov8n-seg.yaml",
        "obb": "such as yolov8n-obb.yaml",
    }[kind]


def _fits(task: str, kind: str) -> bool:
    return {
        "detect": kind in ("boxes", "polygons", "obb"),  # ultralytics takes a polygon's box
        "segment": kind in ("polygons", "obb"),  # four corners are a polygon too
        "classify": kind == "classify",
        "pose": kind == "pose",
        "obb": kind == "obb",
    }[task]


def dataset_kind(data: Path) -> str | None:
    """classify, pose, boxes, polygons or obb, from the layout and the first training label; None when unknown."""
    if data.is_dir():
        return "classify" if (data / "train").is_dir() else None
    try:
        spec = load_data_yaml(data)
    except DataError:
        return None  # the dataset checks say what is wrong with it
    if "kpt_shape" in spec:
        return "pose"
    values = _first_label_size(data, spec)
    if values is None:
        return None
    if values == 5:
        return "boxes"
    return "obb" if values == 9 else "polygons"


def _first_label_size(data: Path, spec: dict) -> int | None:
    """How many numbers the first line of the first training label file holds (ultralytics' images->labels rule)."""
    train = split_entries(spec)
    if not train:
        return None
    images = images_base(data, spec) / train[0]
    if not images.is_dir():
        return None
    # The first images found, not a sorted listing: a large dataset would be walked whole before training.
    found = (p for p in images.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    for image in itertools.islice(found, 50):
        parts = list(image.with_suffix(".txt").parts)
        if "images" not in parts:
            return None
        parts[len(parts) - 1 - parts[::-1].index("images")] = "labels"
        label = Path(*parts)
        lines = [line.split() for line in label.read_text().splitlines() if line.strip()] if label.is_file() else []
        if lines:
            return len(lines[0])
    return None
