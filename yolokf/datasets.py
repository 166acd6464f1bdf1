"""Datasets: the built-in synthetic `shapes` set, and checks on what `--data` points at.

`shapes` is generated, not downloaded, so demos, docs and tests train offline: three classes of
simple shapes on noisy backgrounds in the standard YOLO layout, byte-for-byte the same every time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from yolokf import offline, ultralytics_cfg
from yolokf.errors import DataError, OfflineError, UsageError

SHAPES = "shapes"
SHAPES_VERSION = 4
SHAPES_CLASSES = ("circle", "square", "triangle")
REMOTE_SCHEMES = ("s3://", "gs://", "http://", "https://", "pvc://")


def cache_dir() -> Path:
    """Where yolokf keeps generated data: $YOLOKF_CACHE_DIR, ~/.cache/yolokf, or a temp dir in pods."""
    for candidate in (os.getenv("YOLOKF_CACHE_DIR"), str(Path.home() / ".cache" / "yolokf")):
        if not candidate:
            continue
        path = Path(candidate)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            return path
    return Path(tempfile.gettempdir()) / "yolokf"


def write_shapes(root: Path, *, train: int = 128, val: int = 32, imgsz: int = 128, seed: int = 0) -> Path:
    """Write the synthetic shapes dataset under `root` and return its data YAML.

    Deterministic: the same arguments give the same files. Written to a temporary folder and renamed,
    so an interrupted run never leaves half a dataset.
    """
    data_yaml = root / "data.yaml"
    if data_yaml.exists():
        return data_yaml
    import numpy as np
    from PIL import Image, ImageDraw

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        (staging / "images" / split).mkdir(parents=True)
        (staging / "labels" / split).mkdir(parents=True)
        for index in range(count):
            background = rng.integers(0, 60, size=3)
            noise = rng.integers(0, 15, size=(imgsz, imgsz, 3))
            image = Image.fromarray((background + noise).clip(0, 255).astype("uint8"))
            draw = ImageDraw.Draw(image)
            lines: list[str] = []
            boxes: list[tuple[int, int, int, int]] = []
            for _ in range(int(rng.integers(1, 5))):
                cls = int(rng.integers(0, len(SHAPES_CLASSES)))
                size = int(rng.integers(imgsz // 5, imgsz * 2 // 5))
                x0 = int(rng.integers(0, imgsz - size))
                y0 = int(rng.integers(0, imgsz - size))
                box = (x0, y0, x0 + size, y0 + size)
                if any(_overlaps(box, other) for other in boxes):
                    continue  # keep every shape fully visible
                boxes.append(box)
                # one hue per class, brightness varies: a from-scratch YOLOv8n learns it in 15 epochs
                color = tuple(int(c) for c in rng.integers(30, 90, size=3))
                color = tuple(int(rng.integers(200, 256)) if i == cls else c for i, c in enumerate(color))
                if cls == 0:
                    draw.ellipse(box, fill=color)
                elif cls == 1:
                    draw.rectangle(box, fill=color)
                else:
                    draw.polygon([(x0 + size / 2, y0), (x0, y0 + size), (x0 + size, y0 + size)], fill=color)
                cx, cy = (x0 + size / 2) / imgsz, (y0 + size / 2) / imgsz
                lines.append(f"{cls} {cx:.6f} {cy:.6f} {size / imgsz:.6f} {size / imgsz:.6f}")
            image.save(staging / "images" / split / f"{split}_{index:04d}.png")
            (staging / "labels" / split / f"{split}_{index:04d}.txt").write_text("\n".join(lines) + "\n")
    spec = {
        "path": str(root.resolve()),
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(SHAPES_CLASSES)),
    }
    (staging / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    try:
        staging.rename(root)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return data_yaml


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def shapes_dataset() -> Path:
    """The built-in dataset's data YAML, generated on first use."""
    return write_shapes(cache_dir() / "datasets" / f"{SHAPES}-v{SHAPES_VERSION}")


def is_remote(data: str) -> bool:
    return data.startswith(REMOTE_SCHEMES)


def resolve_data(data: str) -> str:
    """What to hand ultralytics as `data`: a local data YAML or classification folder.

    Raises a UsageError for a missing or malformed dataset, an OfflineError for one that would need
    a download this machine cannot make.
    """
    if data in (SHAPES, f"{SHAPES}.yaml"):
        return str(shapes_dataset())
    if is_remote(data):
        raise UsageError(f"{data} is a remote dataset: the pipeline's download step fetches it.")
    path = Path(data).expanduser()
    if path.is_dir():
        return str(_dataset_in_folder(path))
    if path.is_file():
        check_data_yaml(path)
        return str(path)
    builtin = _builtin_dataset_yaml(data)
    if builtin is not None:
        return _builtin_dataset(data, builtin)
    raise UsageError(
        f"Dataset not found: {data}. Give a dataset YAML, a YOLO dataset folder, or --data shapes (built in)."
    )


def _dataset_in_folder(folder: Path) -> Path:
    if (folder / "data.yaml").is_file():
        check_data_yaml(folder / "data.yaml")
        return folder / "data.yaml"
    yamls = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))
    if len(yamls) == 1:
        check_data_yaml(yamls[0])
        return yamls[0]
    if (folder / "train").is_dir():  # classification layout: train/<class>/*.jpg
        return folder
    raise UsageError(
        f"{folder} holds no dataset YAML (data.yaml) and no train/ folder; point --data at the dataset's YAML file."
    )


def load_data_yaml(path: Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"Cannot read dataset YAML {path}: {exc}") from None
    if not isinstance(spec, dict):
        raise UsageError(f"Dataset YAML {path} is not a mapping with 'train', 'val' and 'names'.")
    return spec


def check_data_yaml(path: Path) -> dict[str, Any]:
    """Raise unless `path` is a usable YOLO dataset YAML (has `names` and `train`, data present)."""
    spec = load_data_yaml(path)
    for key in ("names", "train"):
        if key not in spec:
            raise UsageError(f"Dataset YAML {path} has no '{key}:' entry; see https://docs.ultralytics.com/datasets/")
    base = Path(spec.get("path") or path.parent)
    if not base.is_absolute():
        base = (path.parent / base).resolve()
    train = spec["train"] if isinstance(spec["train"], list) else [spec["train"]]
    missing = [t for t in train if not (base / str(t)).exists()]
    if missing and spec.get("download"):
        if not offline.is_online():
            raise OfflineError(
                f"Dataset {path} would need a download and this machine is offline. "
                "Use --data shapes (built in), a local dataset folder or YAML, or an s3:// / PVC dataset."
            )
    elif missing:
        raise DataError(f"Dataset {path}: training images not found at {base / str(missing[0])}.")
    return spec


def _builtin_dataset_yaml(name: str) -> Path | None:
    package = ultralytics_cfg.installed_package_dir()
    if package is None or not name.endswith((".yaml", ".yml")) or "/" in name:
        return None
    path = package / "cfg" / "datasets" / name
    return path if path.is_file() else None


def _builtin_dataset(name: str, builtin: Path) -> str:
    spec = load_data_yaml(builtin)
    datasets_dir = offline.ultralytics_settings().get("datasets_dir")
    if datasets_dir and (Path(datasets_dir) / str(spec.get("path", ""))).exists():
        return name
    if not offline.is_online():
        raise OfflineError(
            f"Dataset {name} is not on disk and this machine cannot download it (no internet). "
            "Use --data shapes (built in), a local dataset folder or YAML, or an s3:// / PVC dataset."
        )
    return name
