"""The code inside an export step: export the weights to one format, prove it still predicts what the .pt predicts.

Parity is proved twice, on the dataset's held-out split, in this step's pod:

- the task's own metric (`yolokf.tasks.primary_metric`: mask mAP50-95 for segment, pose mAP50-95 for pose, top-1
  for classify, mAP50-95 for detect and obb), validated by ultralytics for the export and the .pt alike, at the
  export's image size and with the same square letterbox, so only the runtime differs. The export may move it by at
  most `--export-tolerance` of the .pt's value (relative), and the .pt's own value must be at least PARITY_FLOOR: a
  model that finds nothing proves nothing about its export (issue 16).
- prediction agreement: on up to AGREEMENT_IMAGES held-out images, each box (oriented box, mask, pose) the export
  predicts is matched to one the .pt predicts with the same class at IoU >= 0.5 (OKS >= 0.5 for keypoints; the
  same top-1 class for classifiers). The matched share of the larger side's count must reach `--export-agreement`.

Either miss fails the step with one line naming the format and both values (ultralytics/ultralytics#22873: an engine
that boxes wrongly while .pt and .onnx are right). Latency is measured per image at batch 1 on the step's device,
warm-up excluded, for the export and the .pt alike in this pod. Export steps run one after another and hand on the
growing list of results, so the last one's Markdown table shows every format side by side.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yolokf.datasets import dataset_spec, split_images
from yolokf.errors import QualityGateError, UsageError
from yolokf.steps.evaluate import validate, weights_file
from yolokf.steps.train import prepare_environment, readable_metrics
from yolokf.tasks import primary_metric

if TYPE_CHECKING:  # the component's types: pipeline.py generates yolo_export from this signature (issue 15)
    from kfp.dsl import Dataset, Input, Markdown, Model, Output

# ultralytics format name -> what its export() writes next to the weights.
SUFFIXES = {"torchscript": ".torchscript", "onnx": ".onnx", "openvino": "_openvino_model", "engine": ".engine"}
WARMUP, TIMED = 3, 20
# Below this the .pt's own metric says it finds (almost) nothing, and an export that finds nothing would match it.
PARITY_FLOOR = 0.05
AGREEMENT_IMAGES = 32
MATCH = 0.5  # IoU (OKS for keypoints) at which an export's prediction is the .pt's


@dataclass(frozen=True)
class ExportSettings:
    """How to export: ultralytics' export arguments that users set (`--export-*` flags)."""

    imgsz: int
    dynamic: bool = False
    half: bool = False
    simplify: bool = True
    tolerance: float = 0.02  # relative to the .pt's metric
    agreement: float = 0.9


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


def prediction_agreement(reference: list[Any], exported: list[Any], task: str) -> tuple[float, int, int]:
    """How far the export's predictions are the .pt's on the same images (ultralytics Results, one per image):
    (matched share of the larger side, the .pt's count, the export's count); 1.0 when neither predicts anything."""
    matched = expected = found = 0
    for ref, exp in zip(reference, exported, strict=True):
        if task == "classify":
            matched += int(int(ref.probs.top1) == int(exp.probs.top1))
            expected, found = expected + 1, found + 1
            continue
        similarity, ref_cls, exp_cls = _similarity(ref, exp, task)
        expected, found = expected + len(ref_cls), found + len(exp_cls)
        matched += _greedy_matches(similarity, ref_cls, exp_cls)
    larger = max(expected, found)
    return (round(matched / larger, 4) if larger else 1.0), expected, found


def _similarity(ref: Any, exp: Any, task: str) -> tuple[Any, list[int], list[int]]:
    """The pairwise IoU (OKS for pose) of the .pt's predictions (rows) and the export's (columns), and their classes."""
    import numpy as np
    from ultralytics.utils.metrics import batch_probiou, box_iou

    if task == "obb":
        a, b = ref.obb, exp.obb
        classes = [int(c) for c in a.cls.tolist()], [int(c) for c in b.cls.tolist()]
        if not len(a) or not len(b):
            return np.zeros((len(a), len(b))), *classes
        return batch_probiou(a.xywhr.float().cpu(), b.xywhr.float().cpu()).numpy(), *classes
    a, b = ref.boxes, exp.boxes
    classes = [int(c) for c in a.cls.tolist()], [int(c) for c in b.cls.tolist()]
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b))), *classes
    if task == "segment" and ref.masks is not None and exp.masks is not None:
        return _mask_iou(ref.masks.xy, exp.masks.xy, ref.orig_shape), *classes
    if task == "pose" and ref.keypoints is not None and exp.keypoints is not None:
        return _oks(ref.keypoints.xy.cpu().numpy(), exp.keypoints.xy.cpu().numpy(), a.xyxy.cpu().numpy()), *classes
    return box_iou(a.xyxy.float().cpu(), b.xyxy.float().cpu()).numpy(), *classes


def _mask_iou(first: list[Any], second: list[Any], shape: tuple[int, int]) -> Any:
    """IoU of two sets of mask polygons (ultralytics' `masks.xy`, in the image's pixels), drawn at the image's size."""
    import cv2
    import numpy as np

    def draw(polygons: list[Any]) -> Any:
        masks = np.zeros((len(polygons), shape[0] * shape[1]), dtype=bool)
        for index, polygon in enumerate(polygons):
            canvas = np.zeros(shape, dtype=np.uint8)
            if len(polygon):
                cv2.fillPoly(canvas, [np.asarray(polygon, dtype=np.int32)], 1)
            masks[index] = canvas.reshape(-1).astype(bool)
        return masks.astype(np.float32)

    a, b = draw(first), draw(second)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def _oks(first: Any, second: Any, boxes: Any) -> Any:
    """COCO's object keypoint similarity of every pair, with one sigma for all keypoints (0.1) and the .pt's box area
    as the object's scale: 1 for identical keypoints, 0.5 at about 12% of the box's size apart."""
    import numpy as np

    area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1.0)
    distance = ((first[:, None, :, :] - second[None, :, :, :]) ** 2).sum(-1)  # (ref, exp, keypoints)
    return np.exp(-distance / (2 * area[:, None, None] * (2 * 0.1) ** 2)).mean(-1)


def _greedy_matches(similarity: Any, ref_cls: list[int], exp_cls: list[int]) -> int:
    """One-to-one matches of the same class at similarity >= MATCH, best pairs first."""
    pairs = sorted(
        ((float(similarity[i, j]), i, j) for i in range(len(ref_cls)) for j in range(len(exp_cls))),
        reverse=True,
    )
    used_ref: set[int] = set()
    used_exp: set[int] = set()
    for value, i, j in pairs:
        if value < MATCH:
            break
        if i in used_ref or j in used_exp or ref_cls[i] != exp_cls[j]:
            continue
        used_ref.add(i)
        used_exp.add(j)
    return len(used_ref)


def predictions(model_path: Path, images: list[Path], *, task: str, imgsz: int, device: str) -> list[Any]:
    """ultralytics' predictions of a model on `images`, one Results per image (its default confidence, 0.25)."""
    from ultralytics import YOLO

    model = YOLO(str(model_path), task=task)
    found: list[Any] = []
    for image in images:
        results: Any = model.predict(str(image), imgsz=imgsz, device=device or None, verbose=False)
        found.append(results[0])
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
    reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export, then `check_parity` of the export against the .pt; the result record (raises on a parity miss)."""
    copy = workdir / weights.name
    shutil.copy2(weights, copy)  # export() writes next to its input: keep the artifact folder clean
    exported = export(copy, fmt, settings, device)
    record = check_parity(
        copy, exported, data, fmt, settings, batch=batch, device=device, workdir=workdir, reference=reference
    )
    return {**record, "file": str(exported)}


def check_parity(
    weights: Path,
    exported: Path,
    data: str,
    fmt: str,
    settings: ExportSettings,
    *,
    batch: int,
    device: str,
    workdir: Path,
    reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate, predict with and time the export and the .pt alike on the held-out split; the record, or a
    QualityGateError naming the format and both values (see the module docstring).

    `reference`: the .pt's metrics as an earlier export step of the run measured them on the same device, split and
    image size (reused: validation is deterministic there); its latency and predictions are always measured here.
    """
    from ultralytics import YOLO

    task = str(YOLO(str(weights)).task)
    spec = dataset_spec(data)
    split = "test" if spec.get("test") else "val"
    metric = primary_metric(task)

    def check(path: Path) -> dict[str, float]:
        # The .pt is validated like a static export: square letterbox (rect=False), so only the runtime differs.
        results = validate(
            path, data, split=split, imgsz=settings.imgsz, batch=batch, device=device, workdir=workdir, task=task,
            rect=False,
        )  # fmt: skip
        return readable_metrics(results.results_dict)

    images = split_images(spec, split)[:AGREEMENT_IMAGES]
    if not images:
        raise QualityGateError(f"--export {fmt}: no images in the {split} split to check the export on.")
    expected = dict(reference["reference"]) if reference else check(weights)
    checked = check(exported)
    timing: dict[str, Any] = {"task": task, "imgsz": settings.imgsz, "device": device}
    shared = prediction_agreement(predictions(weights, images, **timing), predictions(exported, images, **timing), task)
    rate, expected_count, found_count = shared
    difference = round(checked[metric] - expected[metric], 6)
    record: dict[str, Any] = {
        "format": fmt,
        "task": task,
        "split": split,
        "metric": metric,
        "metrics": checked,
        "reference": expected,
        "difference": difference,
        "agreement": rate,
        "agreement_images": len(images),
        "predictions": [expected_count, found_count],
        "device": device,
        "latency_ms": latency_ms(exported, images[:8], **timing),
        "reference_latency_ms": latency_ms(weights, images[:8], **timing),
        "size_bytes": size_bytes(exported),
        "opset": opset(exported) or 0,  # 0: not ONNX (KFP parameters cannot hold None)
        "format_version": format_version(fmt, exported),
        "settings": asdict(settings),
    }
    where = f"on the {split} split"
    if expected[metric] < PARITY_FLOOR:
        raise QualityGateError(
            f"--export {fmt}: the .pt model's own {metric} is {expected[metric]:.4f} {where}, under {PARITY_FLOOR}: "
            f"a model that finds nothing cannot prove its export (the export has {checked[metric]:.4f}); train "
            "longer or evaluate on data the model knows."
        )
    if abs(difference) > settings.tolerance * expected[metric]:
        raise QualityGateError(
            f"--export {fmt}: {metric} {checked[metric]:.4f} against the .pt model's {expected[metric]:.4f} {where}, "
            f"a change of {difference / expected[metric]:+.1%}, beyond --export-tolerance {settings.tolerance:g} "
            f"({settings.tolerance:.0%})."
        )
    if rate < settings.agreement:
        raise QualityGateError(
            f"--export {fmt}: its predictions agree with the .pt model's on {rate:.1%} of {len(images)} {split} images "
            f"({found_count} against {expected_count} predictions), under --export-agreement {settings.agreement:g}."
        )
    return record


def formats_table(records: list[dict[str, Any]]) -> str:
    """Every format's accuracy, agreement and latency side by side, the .pt model first (Markdown). Each format's
    latency stands beside the .pt's, measured in the same pod."""
    if not records:
        return ""
    metric, first = records[0]["metric"], records[0]
    imgsz = int(first["settings"]["imgsz"])  # kfp.local hands whole numbers back as floats
    lines = [
        f"# Exports: {metric} on the {first['split']} split, latency per image (batch 1, imgsz {imgsz})",
        "",
        f"| format | {metric} | change | agreement | latency ms | .pt latency ms | size MB |",
        "|---|---|---|---|---|---|---|",
        f"| pytorch (.pt) | {first['reference'][metric]:.4f} | reference | | | | |",
    ]
    for r in records:
        change = r["difference"] / r["reference"][metric] if r["reference"][metric] else 0.0
        lines.append(
            f"| {r['format']} | {r['metrics'][metric]:.4f} | {change:+.1%} | {r['agreement']:.1%} | "
            f"{r['latency_ms']:.1f} | {r['reference_latency_ms']:.1f} | {r['size_bytes'] / 1e6:.1f} |"
        )
    return "\n".join(lines) + "\n"


def export_step(
    *,
    weights: Input[Model],
    model: Output[Model],
    table: Output[Markdown],
    fmt: str,
    data: str,
    imgsz: int,
    batch: int,
    device: str,
    dynamic: bool,
    half: bool,
    simplify: bool,
    tolerance: float,
    agreement: float,
    previous: list,
    serving_name: str,
    serving_service_account: str,
    serving_max_batch: int,
    run_model: str,
    dataset: Input[Dataset] = None,
) -> list:
    """Export weights to one format and check it against the .pt model (yolokf); returns every format so far.

    `imgsz` 0: the weights' own training image size. `serving_name` "": the run's default registered-model name.
    """
    import ultralytics

    from yolokf.datasets import step_data
    from yolokf.promote import default_registered_model
    from yolokf.promote import serving_name as to_serving_name
    from yolokf.steps.evaluate import weights_info

    records = [json.loads(r) if isinstance(r, str) else dict(r) for r in previous]
    serving_name = serving_name or to_serving_name(default_registered_model(run_model, data))
    with tempfile.TemporaryDirectory(prefix="yolokf-export-") as tmp:
        workdir = Path(tmp)
        local = step_data(data, dataset, workdir)
        imgsz = imgsz or weights_info(weights_file(weights)).imgsz
        settings = ExportSettings(
            imgsz=imgsz, dynamic=dynamic, half=half, simplify=simplify, tolerance=tolerance, agreement=agreement
        )
        # The .pt's metrics from an earlier export on the same device are reused; its latency is measured here.
        reference = next((r for r in records if r.get("device") == device), None)
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
            record["serving"] = write_serving(
                target,
                folder,
                serving_name,
                model.uri,
                max_batch_size=serving_max_batch if dynamic else 0,
                service_account=serving_service_account or None,
            )
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
            "agreement": record["agreement"],
            "latency_ms": record["latency_ms"],
            "reference_latency_ms": record["reference_latency_ms"],
        }
    )
    records.append(record)
    Path(table.path).parent.mkdir(parents=True, exist_ok=True)
    Path(table.path).write_text(formats_table(records))
    print(
        f"yolokf: {fmt}: {record['metric']} {record['metrics'][record['metric']]:.4f} "
        f"({record['difference']:+.4f} against .pt), agreement {record['agreement']:.1%}, "
        f"{record['latency_ms']:.1f} ms per image (.pt {record['reference_latency_ms']:.1f} ms)",
        flush=True,
    )
    return records


def write_serving(
    onnx_file: Path, folder: Path, name: str, uri: str, *, max_batch_size: int, service_account: str | None
) -> dict[str, str]:
    """A Triton/KServe model repository and an InferenceService manifest next to the ONNX export.

    `service_account`: the InferenceService's, which carries the storage credentials by KServe's convention (a
    Secret with the S3 keys, annotated with serving.kserve.io/s3-endpoint, attached to that service account).
    """
    from yolokf.steps.serving import inference_service, write_inference_service, write_model_repository

    repository = folder / "triton"
    write_model_repository(onnx_file, repository, name, max_batch_size=max_batch_size)
    # KFP's MinIO artifact store writes minio://BUCKET/...; KServe's storage initializer reads it as s3://.
    # kfp.local's artifacts are local paths: file:// names them (a manifest to read, not to deploy).
    storage_uri = re.sub(r"^minio://", "s3://", f"{uri}/triton")
    storage_uri = storage_uri if "://" in storage_uri else Path(storage_uri).resolve().as_uri()
    manifest = inference_service(name, storage_uri, service_account=service_account)
    write_inference_service(manifest, folder / "inference-service.yaml")
    return {"name": name, "storage_uri": storage_uri, "manifest": f"{uri}/inference-service.yaml"}
