"""The built-in synthetic datasets, one per ultralytics task: the same shapes scenes, deterministic and offline.

Three classes (circle, square, triangle), one hue per class on a noisy background, so a from-scratch model
learns them in minutes on a laptop CPU. Every dataset has train, val and test splits:

| `--data` | task | labels |
| --- | --- | --- |
| `shapes` | detect | `cls cx cy w h` |
| `shapes-seg` | segment | `cls x1 y1 ... xn yn`: the shape's outline (a 24-gon for circles) |
| `shapes-pose` | pose | the box, then 4 keypoints `x y v`: the box's corners TL, TR, BR, BL (`kpt_shape: [4, 3]`) |
| `shapes-obb` | obb | `cls x1 y1 ... x4 y4`: the corners of the rotated box (circles are not rotated) |
| `shapes-cls` | classify | none: ImageFolder, `train/<class>/*.png`, one shape an image |

Written to a temporary folder and renamed, so an interrupted run never leaves half a dataset.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CLASSES = ("circle", "square", "triangle")
VERSION = 5  # part of the cache folder's name: bump it when the files change
DATASETS = {
    "shapes": "detect",
    "shapes-seg": "segment",
    "shapes-pose": "pose",
    "shapes-obb": "obb",
    "shapes-cls": "classify",
}
TASK_DATASET = {task: name for name, task in DATASETS.items()}
SPLITS = ("train", "val", "test")
KPT_SHAPE = [4, 3]
FLIP_IDX = [1, 0, 3, 2]  # a left-right flip swaps TL<->TR and BR<->BL


@dataclass(frozen=True)
class Shape:
    cls: int
    x0: int  # top-left of the unrotated square the shape fills, in pixels
    y0: int
    size: int
    angle: float = 0.0  # radians, counter-clockwise on screen (obb only)

    @property
    def center(self) -> tuple[float, float]:
        return self.x0 + self.size / 2, self.y0 + self.size / 2

    def outline(self) -> list[tuple[float, float]]:
        """The shape's polygon, rotated by `angle` about its centre."""
        s, (cx, cy) = self.size, self.center
        if self.cls == 0:
            points = [(cx + s / 2 * math.cos(a), cy + s / 2 * math.sin(a)) for a in _angles(24)]
        elif self.cls == 1:
            points = [(self.x0, self.y0), (self.x0 + s, self.y0), (self.x0 + s, self.y0 + s), (self.x0, self.y0 + s)]
        else:
            points = [(cx, self.y0), (self.x0 + s, self.y0 + s), (self.x0, self.y0 + s)]
        return [self._rotate(p) for p in points]

    def rotated_box(self) -> list[tuple[float, float]]:
        """The corners of the shape's square, rotated: its oriented box."""
        s = self.size
        corners = [(self.x0, self.y0), (self.x0 + s, self.y0), (self.x0 + s, self.y0 + s), (self.x0, self.y0 + s)]
        return [self._rotate(p) for p in corners]

    def bounds(self) -> tuple[float, float, float, float]:
        xs, ys = zip(*self.rotated_box(), strict=True)
        return min(xs), min(ys), max(xs), max(ys)

    def _rotate(self, point: tuple[float, float]) -> tuple[float, float]:
        if not self.angle:
            return point
        (cx, cy), (x, y) = self.center, point
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        return cx + (x - cx) * cos + (y - cy) * sin, cy - (x - cx) * sin + (y - cy) * cos


def _angles(count: int) -> list[float]:
    return [2 * math.pi * i / count for i in range(count)]


def write_dataset(
    root: Path,
    task: str = "detect",
    *,
    train: int = 128,
    val: int = 32,
    test: int = 32,
    imgsz: int = 128,
    seed: int = 0,
) -> Path:
    """Write the `task` dataset under `root`; return its data YAML (the folder itself for classify)."""
    if task not in TASK_DATASET:
        raise ValueError(f"unknown task {task!r}; one of {', '.join(TASK_DATASET)}")
    done = root / ("train" if task == "classify" else "data.yaml")
    if done.exists():
        return root if task == "classify" else done
    import numpy as np
    from PIL import Image, ImageDraw

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    rng = np.random.default_rng(seed)
    for split, count in zip(SPLITS, (train, val, test), strict=True):
        for index in range(count):
            background = rng.integers(0, 60, size=3)
            noise = rng.integers(0, 15, size=(imgsz, imgsz, 3))
            image = Image.fromarray((background + noise).clip(0, 255).astype("uint8"))
            shapes = _draw_scene(ImageDraw.Draw(image), rng, imgsz, task)
            name = f"{split}_{index:04d}"
            if task == "classify":
                folder = staging / split / CLASSES[shapes[0].cls]
                folder.mkdir(parents=True, exist_ok=True)
                image.save(folder / f"{name}.png")
                continue
            for kind in ("images", "labels"):
                (staging / kind / split).mkdir(parents=True, exist_ok=True)
            image.save(staging / "images" / split / f"{name}.png")
            lines = [_label(shape, task, imgsz) for shape in shapes]
            (staging / "labels" / split / f"{name}.txt").write_text("\n".join(lines) + "\n")
    if task != "classify":
        (staging / "data.yaml").write_text(yaml.safe_dump(_spec(root, task), sort_keys=False))
    try:
        staging.rename(root)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return root if task == "classify" else done


def _draw_scene(draw: Any, rng: Any, imgsz: int, task: str) -> list[Shape]:
    """1-4 shapes that do not overlap (one for classify); the random draws for detect are those of version 4."""
    shapes: list[Shape] = []
    for _ in range(1 if task == "classify" else int(rng.integers(1, 5))):
        cls = int(rng.integers(0, len(CLASSES)))
        low, high = (imgsz * 2 // 5, imgsz * 3 // 4) if task == "classify" else (imgsz // 5, imgsz * 2 // 5)
        size = int(rng.integers(low, high))
        margin = int(math.ceil(size * (math.sqrt(2) - 1) / 2)) if task == "obb" else 0  # room to turn
        x0 = int(rng.integers(margin, imgsz - size - margin))
        y0 = int(rng.integers(margin, imgsz - size - margin))
        angle = float(rng.uniform(0, math.pi / 2)) if task == "obb" and cls != 0 else 0.0
        shape = Shape(cls, x0, y0, size, angle)
        if any(_overlaps(shape.bounds(), other.bounds()) for other in shapes):
            continue  # keep every shape fully visible
        shapes.append(shape)
        # One hue per class, brightness varies: a from-scratch YOLOv8n learns it in 15 epochs.
        color = tuple(int(c) for c in rng.integers(30, 90, size=3))
        color = tuple(int(rng.integers(200, 256)) if i == cls else c for i, c in enumerate(color))
        if shape.angle:
            draw.polygon(shape.outline(), fill=color)
        elif cls == 0:
            draw.ellipse((x0, y0, x0 + size, y0 + size), fill=color)
        elif cls == 1:
            draw.rectangle((x0, y0, x0 + size, y0 + size), fill=color)
        else:
            draw.polygon([(x0 + size / 2, y0), (x0, y0 + size), (x0 + size, y0 + size)], fill=color)
    return shapes


def _overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _label(shape: Shape, task: str, imgsz: int) -> str:
    def xy(points: list[tuple[float, float]]) -> str:
        return " ".join(f"{min(max(v / imgsz, 0.0), 1.0):.6f}" for point in points for v in point)

    cx, cy = shape.center
    box = f"{shape.cls} {cx / imgsz:.6f} {cy / imgsz:.6f} {shape.size / imgsz:.6f} {shape.size / imgsz:.6f}"
    if task == "segment":
        return f"{shape.cls} {xy(shape.outline())}"
    if task == "obb":
        return f"{shape.cls} {xy(shape.rotated_box())}"
    if task == "pose":
        x0, y0, s = shape.x0, shape.y0, shape.size
        corners = [(x0, y0), (x0 + s, y0), (x0 + s, y0 + s), (x0, y0 + s)]
        return box + " " + " ".join(f"{x / imgsz:.6f} {y / imgsz:.6f} 2" for x, y in corners)
    return box


def _spec(root: Path, task: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"path": str(root.resolve()), **{s: f"images/{s}" for s in SPLITS}}
    spec["names"] = dict(enumerate(CLASSES))
    if task == "pose":
        spec["kpt_shape"] = KPT_SHAPE
        spec["flip_idx"] = FLIP_IDX
    return spec
