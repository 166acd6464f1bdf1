"""The code inside an export step: export the weights to one format, prove it still detects what the .pt detects.

Each exported file is validated by ultralytics on the same held-out split as the `.pt` model, at the export's
image size and with the same letterbox (square, as a static export needs), so the only difference left is the
runtime. When mAP50-95 (top-1 accuracy for classifiers) moves by more than the tolerance, the step fails with
one line (ultralytics/ultralytics#22873: an engine that boxes wrongly while .pt and .onnx are right). Latency is
measured per image at batch 1 on the step's device, warm-up excluded. Export steps run one after another and
hand on the growing list of results, so the last one's Markdown table shows every format side by side.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from yolokf.errors import QualityGateError, UsageError
from yolokf.steps.evaluate import held_out_split, validate, weights_file
from yolokf.steps.train import prepare_environment, readable_metrics

# ultralytics format name -> what its export() writes next to the weights.
SUFFIXES = {"torchscript": ".torchscript", "onnx": ".onnx", "openvino": "_openvino_model", "engine": ".engine"}
WARMUP, TIMED = 3, 20


@dataclass(frozen=True)
class ExportSettings:
    """How to export: ultralytics' export arguments that users set (`--export-*` flags)."""

    imgsz: int
    dynamic: bool = False
    half: bool = False
    simplify: bool = True
    tolerance: float = 0.01


def parity_metric(task: str) -> str:
    return "top1_accuracy" if task == "classify" else "mAP50-95"


def export(weights: Path, fmt: str, settings: ExportSettings, device: str) -> Path:
    """`YOLO(weights).export(format=fmt, ...)`; the exported file or folder."""
    prepare_environment()
    if fmt == "engine":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--export engine (TensorRT) needs a GPU: run with --gpus 1, or leave engine out.")
    from ultralytics import YOLO

    kwargs: dict[str, Any] = {"format": fmt, "imgsz": settings.imgsz, "device": device or None}
    if settings.half:
        kwargs["half"] = True
    if fmt in ("onnx", "engine", "openvino", "torchscript"):
        kwargs["dynamic"] = settings.dynamic
    if fmt in ("onnx", "engine"):
        kwargs["simplify"] = settings.simplify
    return Path(YOLO(str(weights)).export(**kwargs))


def size_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def latency_ms(model_path: Path, images: list[Path], *, task: str, imgsz: int, device: str) -> float:
    """Mean inference time per image at batch 1 (ultralytics' own `speed['inference']`), warm-up excluded."""
    from ultralytics import YOLO

    model = YOLO(str(model_path), task=task)
    times = []
    for index in range(WARMUP + TIMED):
        image = images[index % len(images)]
        results: Any = model.predict(str(image), imgsz=imgsz, device=device or None, verbose=False)
        if index >= WARMUP:
            times.append(float(results[0].speed["inference"]))
    return round(sum(times) / len(times), 3)


def opset(model_path: Path) -> int | None:
    if model_path.suffix != ".onnx":
        return None
    import onnx

    return max(op.version for op in onnx.load(str(model_path), load_external_data=False).opset_import if not op.domain)


def format_version(fmt: str, path: Path) -> str:
    """The version a serving runtime cares about: the ONNX opset, OpenVINO's, TensorRT's, else torch's."""
    if fmt == "onnx":
        return str(opset(path))
    if fmt == "openvino":
        import openvino

        return str(openvino.__version__).split("-")[0]
    if fmt == "engine":
        import tensorrt  # type: ignore[import-not-found]

        return str(tensorrt.__version__)
    import torch

    return str(torch.__version__).split("+")[0]


def split_images(data: str, split: str, limit: int = 8) -> list[Path]:
    """A few images of `split` for the latency measurement."""
    from ultralytics.data.utils import check_det_dataset

    path = Path(data)
    folder = path / split if path.is_dir() else None
    if folder is None:
        spec = check_det_dataset(data)
        entry = spec[split]
        folder = Path(entry[0] if isinstance(entry, list) else entry)
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))[:limit]
    if not found:
        raise FileNotFoundError(f"No images in {folder} to time the exported model on.")
    return found


def export_and_check(
    weights: Path,
    data: str,
    fmt: str,
    settings: ExportSettings,
    *,
    batch: int,
    device: str,
    workdir: Path,
    reference: tuple[dict[str, float], float] | None = None,
) -> dict[str, Any]:
    """Export, validate the export and the .pt alike, compare, time both; the result record (raises on parity).

    `reference`: the .pt's metrics and latency, as an earlier export of the same run measured them with the same
    settings; measured here when None.
    """
    from ultralytics import YOLO

    task = str(YOLO(str(weights)).task)
    split = held_out_split(data)
    copy = workdir / weights.name
    shutil.copy2(weights, copy)  # export() writes next to its input: keep the artifact folder clean
    exported = export(copy, fmt, settings, device)
    metric = parity_metric(task)

    def check(path: Path) -> dict[str, float]:
        # The .pt is validated like a static export: square letterbox (rect=False), so only the runtime differs.
        results = validate(
            path, data, split=split, imgsz=settings.imgsz, batch=batch, device=device, workdir=workdir, task=task,
            rect=False,
        )  # fmt: skip
        return readable_metrics(results.results_dict)

    images = split_images(data, split)
    if reference is None:
        reference = check(copy), latency_ms(copy, images, task=task, imgsz=settings.imgsz, device=device)
    (expected, expected_latency), checked = reference, check(exported)
    difference = round(checked[metric] - expected[metric], 6)
    record: dict[str, Any] = {
        "format": fmt,
        "task": task,
        "split": split,
        "metric": metric,
        "metrics": checked,
        "reference": expected,
        "difference": difference,
        "latency_ms": latency_ms(exported, images, task=task, imgsz=settings.imgsz, device=device),
        "reference_latency_ms": expected_latency,
        "size_bytes": size_bytes(exported),
        "opset": opset(exported) or 0,  # 0: not ONNX (KFP parameters cannot hold None)
        "format_version": format_version(fmt, exported),
        "settings": asdict(settings),
        "file": str(exported),
    }
    if abs(difference) > settings.tolerance:
        raise QualityGateError(
            f"--export {fmt}: {metric} {checked[metric]:.4f} against the .pt model's {expected[metric]:.4f} on the "
            f"{split} split, a difference of {difference:+.4f}, beyond --export-tolerance "
            f"{settings.tolerance}."
        )
    return record


def formats_table(records: list[dict[str, Any]]) -> str:
    """Every format's accuracy and latency side by side, the .pt model first (Markdown)."""
    if not records:
        return ""
    metric, first = records[0]["metric"], records[0]
    imgsz = int(first["settings"]["imgsz"])  # kfp.local hands whole numbers back as floats
    lines = [
        f"# Exports: {metric} on the {first['split']} split, latency per image (batch 1, imgsz {imgsz})",
        "",
        f"| format | {metric} | mAP50 | difference | latency ms | size MB |",
        "|---|---|---|---|---|---|",
        f"| pytorch (.pt) | {first['reference'][metric]:.4f} | {_get(first['reference'], 'mAP50')} | reference | "
        f"{first['reference_latency_ms']:.1f} | |",
    ]
    for r in records:
        lines.append(
            f"| {r['format']} | {r['metrics'][metric]:.4f} | {_get(r['metrics'], 'mAP50')} | {r['difference']:+.4f} | "
            f"{r['latency_ms']:.1f} | {r['size_bytes'] / 1e6:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _get(metrics: dict[str, float], name: str) -> str:
    return f"{metrics[name]:.4f}" if name in metrics else ""


def export_step(
    *,
    weights: Any,
    model: Any,
    table: Any,
    fmt: str,
    data: str,
    imgsz: int,
    batch: int,
    device: str,
    dynamic: bool,
    half: bool,
    simplify: bool,
    tolerance: float,
    previous: list[Any],
    serving_name: str,
    dataset: Any = None,
) -> list[dict[str, Any]]:
    """Entry point of the pipeline's export component; returns `previous` plus this format's result."""
    import ultralytics

    from yolokf.datasets import step_data

    settings = ExportSettings(imgsz=imgsz, dynamic=dynamic, half=half, simplify=simplify, tolerance=tolerance)
    records = [json.loads(r) if isinstance(r, str) else dict(r) for r in previous]
    with tempfile.TemporaryDirectory(prefix="yolokf-export-") as tmp:
        workdir = Path(tmp)
        local = step_data(data, dataset, workdir)
        # Every export of a run shares its settings: the .pt is measured once, by the first.
        reference = (records[0]["reference"], float(records[0]["reference_latency_ms"])) if records else None
        best = weights_file(weights)
        record = export_and_check(
            best, local, fmt, settings, batch=batch, device=device, workdir=workdir, reference=reference
        )
        exported = Path(record.pop("file"))
        folder = Path(model.path)
        folder.mkdir(parents=True, exist_ok=True)
        name = "model" + SUFFIXES[fmt] if exported.is_file() else exported.name
        target = folder / name
        (shutil.copy2 if exported.is_file() else shutil.copytree)(exported, target)
        if fmt == "onnx":
            record["serving"] = write_serving(target, folder, serving_name, model.uri, dynamic=dynamic)
    record["uri"] = f"{model.uri}/{name}"
    record["storage_uri"] = record.get("serving", {}).get("storage_uri", record["uri"])
    model.metadata.update(
        {
            "format": fmt,
            "file": name,
            "imgsz": imgsz,
            "dynamic": dynamic,
            "half": half,
            "simplify": simplify,
            **({"opset": record["opset"]} if record["opset"] else {}),
            "size_bytes": record["size_bytes"],
            "ultralytics_version": ultralytics.__version__,
            "split": record["split"],
            "metrics": record["metrics"],
            "reference_metrics": record["reference"],
            "difference": record["difference"],
            "latency_ms": record["latency_ms"],
        }
    )
    records.append(record)
    Path(table.path).parent.mkdir(parents=True, exist_ok=True)
    Path(table.path).write_text(formats_table(records))
    print(
        f"yolokf: {fmt}: {record['metric']} {record['metrics'][record['metric']]:.4f} "
        f"({record['difference']:+.4f} against .pt), {record['latency_ms']:.1f} ms per image",
        flush=True,
    )
    return records


def write_serving(onnx_file: Path, folder: Path, name: str, uri: str, *, dynamic: bool) -> dict[str, str]:
    """A Triton/KServe model repository and an InferenceService manifest next to the ONNX export."""
    from yolokf.steps.serving import inference_service, write_inference_service, write_model_repository

    repository = folder / "triton"
    write_model_repository(onnx_file, repository, name, max_batch_size=8 if dynamic else 0)
    # KFP's MinIO artifact store writes minio://BUCKET/...; KServe's storage initializer reads it as s3://.
    # kfp.local's artifacts are local paths: file:// names them (a manifest to read, not to deploy).
    storage_uri = re.sub(r"^minio://", "s3://", f"{uri}/triton")
    storage_uri = storage_uri if "://" in storage_uri else Path(storage_uri).resolve().as_uri()
    write_inference_service(inference_service(name, storage_uri), folder / "inference-service.yaml")
    return {"name": name, "storage_uri": storage_uri, "manifest": f"{uri}/inference-service.yaml"}
