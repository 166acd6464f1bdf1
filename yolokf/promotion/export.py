"""The code inside an export step: export the weights to one format, prove it still predicts what the .pt predicts.

Parity is proved twice, on the dataset's held-out split, in this step's pod:

- the task's own metric (`yolokf.core.tasks.primary_metric`: mask mAP50-95 for segment, pose mAP50-95 for pose, top-1
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

from yolokf.core.errors import QualityGateError, UsageError
from yolokf.core.offline import prepare_environment
from yolokf.core.tasks import primary_metric, readable_metrics
from yolokf.data.datasets import dataset_spec, split_images, step_data
from yolokf.promotion.evaluate import RECT, held_out_split, validate, validation_settings, weights_file, weights_info
from yolokf.promotion.parity import format_version, latency_ms, opset, prediction_agreement, predictions, size_bytes
from yolokf.promotion.plan import default_registered_model
from yolokf.promotion.plan import serving_name as to_serving_name
from yolokf.promotion.serving import inference_service, write_inference_service, write_model_repository
from yolokf.tracking.step import open_run

if TYPE_CHECKING:  # the component's types: pipeline.py generates yolo_export from this signature (issue 15)
    from kfp.dsl import Dataset, Input, Markdown, Model, Output

# ultralytics format name -> what its export() writes next to the weights.
SUFFIXES = {"torchscript": ".torchscript", "onnx": ".onnx", "openvino": "_openvino_model", "engine": ".engine"}
# Below this the .pt's own metric says it finds (almost) nothing, and an export that finds nothing would match it.
PARITY_FLOOR = 0.05
AGREEMENT_IMAGES = 32


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
    split = held_out_split(data, spec)
    metric = primary_metric(task)

    def check(path: Path) -> dict[str, float]:
        # The .pt is validated like a static export: square letterbox (rect=False), so only the runtime differs.
        results = validate(
            path, data, split=split, imgsz=settings.imgsz, batch=batch, device=device, workdir=workdir, task=task,
            rect=RECT,
        )  # fmt: skip
        return readable_metrics(results.results_dict)

    images = split_images(spec, split)[:AGREEMENT_IMAGES]
    if not images:
        raise QualityGateError(f"--export {fmt}: no images in the {split} split to check the export on.")
    expected = dict(reference["reference"]) if reference else check(weights)
    source = reference.get("reference_from", "an earlier export") if reference else "measured here"
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
        "reference_from": source,
        "validation": validation_settings(settings.imgsz, batch, device),
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
    batch = int(first.get("validation", {}).get("batch", 0))
    source = "the evaluation's" if first.get("reference_from") == "evaluation" else "measured"
    lines = [
        f"# Exports: {metric} on the {first['split']} split (imgsz {imgsz}, batch {batch}, square letterbox), "
        "latency per image at batch 1",
        "",
        f"| format | {metric} | change | agreement | latency ms | .pt latency ms | size MB |",
        "|---|---|---|---|---|---|---|",
        f"| pytorch (.pt) | {first['reference'][metric]:.4f} | reference ({source}) | | | | |",
    ]
    for r in records:
        change = r["difference"] / r["reference"][metric] if r["reference"][metric] else 0.0
        lines.append(
            f"| {r['format']} | {r['metrics'][metric]:.4f} | {change:+.1%} | {r['agreement']:.1%} | "
            f"{r['latency_ms']:.1f} | {r['reference_latency_ms']:.1f} | {r['size_bytes'] / 1e6:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _reference(evaluation: Any, records: list[dict[str, Any]], wanted: dict[str, Any]) -> dict[str, Any] | None:
    """The .pt's figures measured with `wanted` settings earlier in the run, and where they come from."""
    summary = json.loads(evaluation) if isinstance(evaluation, str) and evaluation else dict(evaluation or {})
    same = ("imgsz", "batch", "rect")
    settings = summary.get("settings") or {}
    if settings and all(settings.get(k) == wanted[k] for k in same):
        return {"reference": summary["metrics"], "reference_from": "evaluation"}
    for record in records:
        validation = record.get("validation") or {}
        if validation and all(validation.get(k) == wanted[k] for k in (*same, "device")):
            return {"reference": record["reference"], "reference_from": record.get("reference_from", "an export")}
    return None


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
    evaluation: str,
    serving_name: str,
    serving_service_account: str,
    serving_max_batch: int,
    run_model: str,
    dataset: Input[Dataset] = None,
    mlflow: dict = {},  # noqa: B006 (a component input's default; never changed)
    kfp_run: str = "",
) -> list:
    """Export weights to one format and check it against the .pt model (yolokf); returns every format so far.

    `imgsz` 0: the weights' own training image size. `serving_name` "": the run's default registered-model name.
    With MLflow (`mlflow`, or KFP's plugin) the parity row goes to the run's MLflow run as <format>/..., and the
    exported file under model/<format>/ (where `--registry mlflow` finds it).
    """
    import ultralytics

    tracked = open_run(mlflow, kfp_run, name=default_registered_model(run_model, data))  # checked before the work

    records = [json.loads(r) if isinstance(r, str) else dict(r) for r in previous]
    serving_name = serving_name or to_serving_name(default_registered_model(run_model, data))
    with tempfile.TemporaryDirectory(prefix="yolokf-export-") as tmp:
        workdir = Path(tmp)
        local = step_data(data, dataset, workdir)
        imgsz = imgsz or weights_info(weights_file(weights)).imgsz
        settings = ExportSettings(
            imgsz=imgsz, dynamic=dynamic, half=half, simplify=simplify, tolerance=tolerance, agreement=agreement
        )
        # One number for the .pt (issue 26): the evaluation's, when it validated with these settings; else an
        # earlier export's on the same device and size; else measured here. Its latency is always measured here.
        reference = _reference(evaluation, records, validation_settings(imgsz, batch, device))
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
    if tracked is not None:
        row = {"difference": record["difference"], "agreement": record["agreement"], "latency_ms": record["latency_ms"]}
        tracked.log_metrics({f"{fmt}/{key}": value for key, value in {**record["metrics"], **row}.items()})
        tracked.log_dict({key: value for key, value in record.items() if key != "serving"}, f"exports/{fmt}.json")
        tracked.log_artifact(Path(model.path) / name, f"model/{fmt}")
        tracked.finish()
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

    repository = folder / "triton"
    write_model_repository(onnx_file, repository, name, max_batch_size=max_batch_size)
    # KFP's MinIO artifact store writes minio://BUCKET/...; KServe's storage initializer reads it as s3://.
    # kfp.local's artifacts are local paths: file:// names them (a manifest to read, not to deploy).
    storage_uri = re.sub(r"^minio://", "s3://", f"{uri}/triton")
    storage_uri = storage_uri if "://" in storage_uri else Path(storage_uri).resolve().as_uri()
    manifest = inference_service(name, storage_uri, service_account=service_account)
    write_inference_service(manifest, folder / "inference-service.yaml")
    return {"name": name, "storage_uri": storage_uri, "manifest": f"{uri}/inference-service.yaml"}
