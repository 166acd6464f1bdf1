"""The code inside the registration step: gather what the run produced and register it in Kubeflow Model Registry.

One version per run (named after the KFP run id), one model artifact per format: the `.pt` weights and each
export, with the export's storage URI (for ONNX, the Triton/KServe model repository next to it). The talking to
the registry is in `yolokf.promotion.register`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from yolokf.core.errors import TrackingError
from yolokf.core.tasks import primary_metric
from yolokf.promotion.plan import default_registered_model
from yolokf.promotion.register import ModelFile, Registration, register
from yolokf.tracking.plan import MLFLOW_REGISTRY
from yolokf.tracking.registry import register_version
from yolokf.tracking.step import open_run

if TYPE_CHECKING:  # the component's types: pipeline.py generates yolo_register from this signature (issue 15)
    from kfp.dsl import Input, Model


def register_step(
    *,
    weights: Input[Model],
    evaluation: str,
    exports: list,
    registry: str,
    registered_model: str,
    run_model: str,
    token_file: str,
    ca_bundle: str,
    champion: bool,
    champion_margin: float,
    data: str,
    image: str,
    run_id: str,
    run_name: str,
    pipeline_name: str,
    mlflow: dict = {},  # noqa: B006 (a component input's default; never changed)
    kfp_run: str = "",
) -> str:
    """Register the model, one artifact per format, in Kubeflow Model Registry or MLflow (yolokf); returns what it did.

    What is registered comes from the run's own values and the evaluation's record: the task, trained epochs and
    image size from the weights, the dataset's content hash, the champion metric from the task (issue 16).
    `registered_model` "" means the default name from the run's `model` and `data` (issue 15).
    `registry` "mlflow": the registry of the `mlflow` server, through the run's MLflow run (issue 25).
    """
    import torch
    import ultralytics

    name = registered_model or default_registered_model(run_model, data)
    tracked = open_run(mlflow, kfp_run, name=name)  # checked before the work

    record = json.loads(evaluation) if isinstance(evaluation, str) else dict(evaluation)
    formats = [json.loads(r) if isinstance(r, str) else dict(r) for r in exports]
    pt_uri = weights.uri if Path(weights.path).is_file() else f"{weights.uri.rstrip('/')}/best.pt"
    models = [ModelFile("pytorch", str(torch.__version__).split("+")[0], pt_uri, dict(record["metrics"]))]
    # KServe's model-registry:// storage initializer serves a version's newest artifact: ONNX (the Triton
    # repository) goes last.
    for item in sorted(formats, key=lambda f: f["format"] == "onnx"):
        metrics = {**item["metrics"], "latency_ms": item["latency_ms"], "agreement": item["agreement"]}
        models.append(ModelFile(item["format"], item["format_version"], item["storage_uri"], metrics))
    properties: dict[str, str | int | float | bool] = {
        "run_id": run_id,
        "run_name": run_name,
        "pipeline_name": pipeline_name,
        "dataset_uri": data,
        "dataset_hash": record["dataset_hash"],
        "evaluation_split": record["split"],
        "task": record["task"],
        "image": image,
        "epochs": int(record["epochs"]),
        "imgsz": int(record["imgsz"]),
        "ultralytics_version": ultralytics.__version__,
    }
    champion_metric = primary_metric(record["task"]) if champion else None
    if registry == MLFLOW_REGISTRY:
        if tracked is None:
            raise TrackingError("--registry mlflow needs --mlflow URI: the MLflow server to register in.")
        weights_pt = Path(weights.path) if Path(weights.path).is_file() else Path(weights.path) / "best.pt"
        done = register_version(
            tracked,
            name=name,
            properties={**properties, **{f"{model.format}.uri": model.uri for model in models}},
            metrics={model.format: dict(model.metrics) for model in models},
            files={"pytorch": weights_pt},
            champion_metric=champion_metric,
            champion_margin=champion_margin,
        )
        print(f"yolokf: {done.message}", flush=True)
        tracked.finish()
        return done.status
    token, said = registry_token(registry, token_file)
    print(f"yolokf: {said}", flush=True)
    registration = Registration(
        url=registry,
        registered_model=name,
        version=run_id,
        author="yolokf",
        properties=properties,
        token=token,
        ca_bundle=ca_bundle or None,
        champion_metric=champion_metric,
        champion_margin=champion_margin,
        description=f"{pipeline_name} run {run_name}",
    )
    result = register(registration, models)
    print(f"yolokf: {result.message}", flush=True)
    return result.status


def registry_token(registry: str, token_file: str) -> tuple[str | None, str]:
    """The token to send and one line that says which: a `--registry-token-file` is sent wherever it is given;
    the pod's own (KFP's $KF_PIPELINES_SA_TOKEN_PATH, else the service account's) only over https (issue 16)."""
    if token_file:
        secure = registry.startswith("https://")
        how = "over https" if secure else "over plain http, unencrypted, as asked"
        return Path(token_file).read_text().strip() or None, f"sending the token from {token_file} {how}."
    if registry.startswith("https://"):
        return None, "sending the pod's service-account token over https."
    return None, (
        f"not sending the pod's service-account token to {registry} (plain http); give --registry-token-file to "
        "send a token anyway."
    )
