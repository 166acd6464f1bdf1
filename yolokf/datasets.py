"""Datasets on disk: the built-in synthetic `shapes` set, and finding and checking a YOLO dataset in a folder.

`shapes` is generated, not downloaded, so demos, docs and tests train offline: three classes of
simple shapes on noisy backgrounds in the standard YOLO layout, byte-for-byte the same every time.
`find_dataset` and `dataset_root` are the one resolver of a dataset folder and its YAML's `path:`, used
for local data, data a step downloaded, and data on a mounted PVC alike. A broken dataset is a DataError
wherever it is found.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from yolokf import offline, ultralytics_cfg
from yolokf.data_sources import YAML_SUFFIXES, is_remote
from yolokf.errors import DataError, OfflineError

SHAPES = "shapes"
SHAPES_VERSION = 4
SHAPES_CLASSES = ("circle", "square", "triangle")


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


def resolve_data(data: str) -> str:
    """What to hand ultralytics as `data`: a local data YAML or classification folder.

    Raises a DataError for a missing or malformed dataset, an OfflineError for one that would need a
    download this machine cannot make.
    """
    if data in (SHAPES, f"{SHAPES}.yaml"):
        return str(shapes_dataset())
    if is_remote(data):
        raise DataError(f"{data} is a remote dataset: the pipeline's download step fetches it.")
    path = Path(data).expanduser()
    if path.is_dir():
        found = find_dataset(path)
        if found.is_file():
            check_data_yaml(found)
        return str(found)
    if path.is_file():
        check_data_yaml(path)
        return str(path)
    builtin = _builtin_dataset_yaml(data)
    if builtin is not None:
        return _builtin_dataset(data, builtin)
    raise DataError(
        f"Dataset not found: {data}. Give a dataset YAML, a YOLO dataset folder, or --data shapes (built in)."
    )


def find_dataset(root: Path) -> Path:
    """The dataset YAML (or classification folder) in a folder: local, downloaded or mounted.

    Looks for data.yaml, then a single YAML, then a train/ folder (classification layout), then descends
    into a single top folder (archives often wrap one).
    """
    if root.is_file():
        return root
    folder = root
    for _ in range(3):
        if (folder / "data.yaml").is_file():
            return folder / "data.yaml"
        yamls = sorted(p for p in folder.iterdir() if p.suffix in YAML_SUFFIXES and p.is_file())
        if len(yamls) == 1:
            return yamls[0]
        if len(yamls) > 1:
            names = ", ".join(p.name for p in yamls)
            raise DataError(f"{folder} holds several YAML files ({names}); point --data at the dataset's YAML.")
        if (folder / "train").is_dir():
            return folder  # classification layout: train/<class>/*.jpg
        subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))]
        if len(subdirs) != 1:
            break
        folder = subdirs[0]
    raise DataError(
        f"No dataset YAML (data.yaml) or train/ folder in {root}; put data.yaml at the top of the folder or "
        "archive, or point --data at the dataset's YAML."
    )


def load_data_yaml(path: Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"Cannot read dataset YAML {path}: {exc}") from None
    if not isinstance(spec, dict):
        raise DataError(f"Dataset YAML {path} is not a mapping with 'train', 'val' and 'names'.")
    for key in ("names", "train"):
        if key not in spec:
            raise DataError(f"Dataset YAML {path} has no '{key}:' entry; see https://docs.ultralytics.com/datasets/")
    return spec


def _train_entries(spec: dict[str, Any], split: str = "train") -> list[str]:
    entries = spec.get(split) or []
    return [str(t) for t in (entries if isinstance(entries, list) else [entries])]


def check_data_yaml(path: Path) -> dict[str, Any]:
    """Raise unless `path` is a usable YOLO dataset YAML on this machine (has `names` and `train`, data present).

    `path:` means what ultralytics makes of it: relative to the YAML, or to ultralytics' datasets_dir.
    """
    spec = load_data_yaml(path)
    base = Path(spec.get("path") or path.parent)
    if not base.is_absolute():
        base = (path.parent / base).resolve()
    missing = [(split, t) for split in ("train", "val") for t in _train_entries(spec, split) if not (base / t).exists()]
    if missing and spec.get("download"):
        if not offline.is_online():
            raise OfflineError(
                f"Dataset {path} would need a download and this machine is offline. "
                "Use --data shapes (built in), a local dataset folder or YAML, or an s3:// / PVC dataset."
            )
    elif missing:
        split, where = missing[0]
        kind = "training" if split == "train" else "validation"
        raise DataError(f"Dataset {path}: {kind} images ({split}: {where}) not found at {base / where}.")
    return spec


def dataset_root(data_yaml: Path) -> Path:
    """The folder a dataset YAML's images are under, wherever the dataset was moved (downloaded, mounted).

    A relative `path:` in ultralytics means "under ultralytics' datasets_dir", and an absolute one names the
    machine the YAML was written on; neither is where a fetched or mounted dataset lives, so the YAML's own
    folder is tried too.
    """
    spec = load_data_yaml(data_yaml)
    train = _train_entries(spec)
    given = str(spec.get("path") or "")
    here = data_yaml.parent
    candidates = [here / given] if given and not Path(given).is_absolute() else []
    if given and Path(given).is_absolute():
        candidates.append(Path(given))
    candidates += [here, here / Path(given).name] if given else [here]
    for base in candidates:
        if all((base / t).exists() for t in train):
            return base.resolve()
    raise DataError(
        f"Dataset YAML {data_yaml}: training images {train[0]!r} not found under {here}; "
        "keep data.yaml at the dataset root, or set path: relative to the YAML."
    )


def prepare_dataset(root: Path, workdir: Path) -> str:
    """What a step hands ultralytics for a downloaded or mounted dataset at `root`.

    A YAML is copied into `workdir` with `path:` set to where the images are, and without `download:`,
    so ultralytics never fetches the data again.
    """
    found = find_dataset(Path(root))
    if found.is_dir():
        return str(found)
    spec = load_data_yaml(found)
    spec["path"] = str(dataset_root(found))
    spec.pop("download", None)
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / found.name
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(out)


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
