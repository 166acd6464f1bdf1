"""Datasets on disk: the built-in synthetic sets (`yolokf.data.shapes`), and finding and checking a YOLO dataset.

`find_dataset` and `dataset_root` are the one resolver of a dataset folder and its YAML's `path:`, used
for local data, data a step downloaded, and data on a mounted PVC alike. A broken dataset is a DataError
wherever it is found.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from yolokf.core import offline
from yolokf.core.errors import DataError, OfflineError
from yolokf.core.mounts import DATA_PVC_PATH
from yolokf.data import named, shapes
from yolokf.data.sources import YAML_SUFFIXES, is_remote


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


def builtin_dataset(name: str = shapes.TASK_DATASET["detect"]) -> Path:
    """A built-in synthetic dataset (`shapes`, `shapes-seg`, ...), generated on first use into the cache.

    Returns its data YAML, or its folder for the classification set.
    """
    task = shapes.DATASETS[name]
    return shapes.write_dataset(cache_dir() / "datasets" / f"{name}-v{shapes.VERSION}", task)


def resolve_data(data: str) -> str:
    """What to hand ultralytics as `data`: a local data YAML or classification folder.

    Raises a DataError for a missing or malformed dataset, an OfflineError for one that would need a
    download this machine cannot make.
    """
    name = data.removesuffix(".yaml")
    if name in shapes.DATASETS:
        return str(builtin_dataset(name))
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
    shipped = named.named_dataset(data)  # a name ultralytics ships, such as coco128.yaml (a file was taken above)
    if shipped is not None:
        if not shipped.on_disk() and not offline.is_online():
            raise OfflineError(
                f"Dataset {data} is not on disk and this machine cannot download it (no internet). "
                "Use --data shapes (built in), a local dataset folder or YAML, or an s3:// / PVC dataset."
            )
        return data
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


def split_entries(spec: dict[str, Any], split: str = "train") -> list[str]:
    """A split's folders or list files (`train:` may be one or a list), as written in the YAML."""
    entries = spec.get(split) or []
    return [str(t) for t in (entries if isinstance(entries, list) else [entries])]


def images_base(data_yaml: Path, spec: dict[str, Any]) -> Path:
    """The folder the splits are under, as ultralytics reads `path:` on this machine (relative to the YAML)."""
    base = Path(spec.get("path") or data_yaml.parent)
    return base if base.is_absolute() else (data_yaml.parent / base).resolve()


def check_data_yaml(path: Path) -> dict[str, Any]:
    """Raise unless `path` is a usable YOLO dataset YAML on this machine (has `names` and `train`, data present).

    `path:` means what ultralytics makes of it: relative to the YAML, or to ultralytics' datasets_dir.
    """
    spec = load_data_yaml(path)
    base = images_base(path, spec)
    missing = [(split, t) for split in ("train", "val") for t in split_entries(spec, split) if not (base / t).exists()]
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
    train = split_entries(spec)
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


_IMAGE_FORMATS = (".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic")


def dataset_spec(data: str) -> dict[str, Any]:
    """ultralytics' own view of a local dataset, resolved as training resolves it: `check_cls_dataset` for a
    classification folder, else `check_det_dataset` (a YAML path, a folder with one, or a name ultralytics knows such
    as coco8.yaml under its datasets_dir). Splits come back as absolute paths, `names` as {index: name}.

    Never downloads: a dataset that is not on disk is a DataError (issue 16).
    """
    offline.prepare_environment()
    from ultralytics.data.utils import check_cls_dataset, check_det_dataset

    path = Path(data)
    try:
        if path.is_dir() and (path / "train").is_dir() and not any(path.glob("*.y*ml")):
            return check_cls_dataset(str(path))
        return check_det_dataset(str(data), autodownload=False)
    except (FileNotFoundError, SyntaxError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"Dataset {data}: {first}") from None


def split_images(spec: dict[str, Any], split: str) -> list[Path]:
    """The image files of one split of `dataset_spec`'s result: its folders walked, its list files (.txt) read."""
    entries = spec.get(split)
    found: list[Path] = []
    for entry in entries if isinstance(entries, list) else [entries] if entries else []:
        where = Path(entry)
        if where.is_dir():
            found += [p for p in where.rglob("*") if p.suffix.lower() in _IMAGE_FORMATS and p.is_file()]
        elif where.is_file() and where.suffix == ".txt":  # ultralytics' list file: one image per line
            for line in where.read_text().splitlines():
                line = line.strip()
                if line:
                    image = Path(line) if Path(line).is_absolute() else where.parent / line.removeprefix("./")
                    found.append(image.resolve())
    return sorted(set(found))


def dataset_hash(data: str) -> str:
    """A content hash of a dataset: its class names and, per split, every image and label file by its path under
    the dataset root and its bytes. Nothing else: not the YAML (a downloaded dataset's rewritten `path:` names the
    run's own folder), not ultralytics' label caches, not where the dataset lies. The same images and labels from a
    local folder, a PVC or s3:// hash the same, so `--champion` compares runs on the same data (issue 16)."""
    import hashlib
    import json

    from ultralytics.data.utils import img2label_paths

    spec = dataset_spec(data)
    classify = "path" not in spec
    root = Path(spec["train"]).parent if classify else Path(spec["path"]).resolve()
    digest = hashlib.sha256()
    names = {int(k): str(v) for k, v in dict(spec["names"]).items()}
    digest.update(json.dumps({"names": names, "kpt_shape": spec.get("kpt_shape")}, sort_keys=True).encode())
    for split in ("train", "val", "test"):
        images = split_images(spec, split)
        labels = [] if classify else [Path(p) for p in img2label_paths([str(i) for i in images])]
        for file in sorted(images + [p for p in labels if p.is_file()]):
            name = file.relative_to(root).as_posix() if file.is_relative_to(root) else file.name
            digest.update(f"\0{split}\0{name}\0{file.stat().st_size}\0".encode())
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return "sha256:" + digest.hexdigest()


# The download step's note to the steps after it, in its Dataset artifact: what they read, decided at run time.
DESCRIPTOR = "yolokf-dataset.json"
PASSTHROUGH, DOWNLOADED, MOUNTED = "passthrough", "downloaded", "mounted"
# --data-cache-pvc: the data is in the cache PVC, which the steps that read it mount (yolokf.data.cache).
CACHED = "cached"


def write_descriptor(folder: Path, kind: str, **details: Any) -> dict[str, Any]:
    """Record in the download step's artifact `folder` how the dataset reaches the next steps."""
    import json

    descriptor = {"kind": kind, **details}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / DESCRIPTOR).write_text(json.dumps(descriptor))
    return descriptor


def read_descriptor(folder: Path) -> dict[str, Any]:
    """The download step's note in `folder`; an artifact without one holds downloaded data (yolokf 0.1)."""
    import json

    path = folder / DESCRIPTOR
    return json.loads(path.read_text()) if path.is_file() else {"kind": DOWNLOADED}


def step_dataset_hash(local: str, dataset: Any) -> str:
    """The content hash of the dataset a step read (`local`, from `step_data`): the one the download step kept
    for a cached version, else computed from the files."""
    if dataset is not None:
        kept = read_descriptor(Path(dataset.path)).get("content_hash")
        if kept:
            return str(kept)
    return dataset_hash(local)


def step_data(data: str, dataset: Any, workdir: Path) -> str:
    """The local dataset a step uses, as the download step (`dataset`) decided for the run's `data`: data it
    downloaded into its artifact, a path on the mounted PVC, or `data` itself, resolved here."""

    if dataset is not None:
        descriptor = read_descriptor(Path(dataset.path))
        if descriptor["kind"] == DOWNLOADED:
            return prepare_dataset(Path(dataset.path), workdir / "data")
        if descriptor["kind"] in (MOUNTED, CACHED):
            return prepare_dataset(Path(descriptor["path"]), workdir / "data")
        return resolve_data(descriptor.get("data", data))
    if Path(data).is_relative_to(DATA_PVC_PATH):  # a PVC the pipeline mounted (step_options)
        return prepare_dataset(Path(data), workdir / "data")
    return resolve_data(data)
