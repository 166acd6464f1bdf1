"""The code inside the registration step: gather what the run produced and register it in Kubeflow Model Registry.

One version per run (named after the KFP run id), one model artifact per format: the `.pt` weights and each
export, with the export's storage URI (for ONNX, the Triton/KServe model repository next to it). The talking to
the registry is in `yolokf.steps.register`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# Inside a pod without --registry-token-file: kfp's token path variable, else the service account's own token.
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def _token(token_file: str) -> str | None:
    for path in (token_file, os.environ.get("KF_PIPELINES_SA_TOKEN_PATH", ""), SERVICE_ACCOUNT_TOKEN):
        if path and Path(path).is_file():
            return Path(path).read_text().strip() or None
    return None


def register_step(
    *,
    weights: Any,
    evaluation: Any,
    exports: list[Any],
    registry: str,
    registered_model: str,
    token_file: str,
    ca_bundle: str,
    champion_metric: str,
    champion_margin: float,
    data: str,
    image: str,
    epochs: int,
    imgsz: int,
    run_id: str,
    run_name: str,
    pipeline_name: str,
    dataset: Any = None,
) -> str:
    """Entry point of the registration component; returns the one-line outcome (also printed)."""
    import torch
    import ultralytics

    from yolokf.steps.register import ModelFile, Registration, register

    record = json.loads(evaluation) if isinstance(evaluation, str) else dict(evaluation)
    formats = [json.loads(r) if isinstance(r, str) else dict(r) for r in exports]
    pt_uri = weights.uri if Path(weights.path).is_file() else f"{weights.uri.rstrip('/')}/best.pt"
    models = [ModelFile("pytorch", str(torch.__version__).split("+")[0], pt_uri, dict(record["metrics"]))]
    # KServe's model-registry:// storage initializer serves a version's newest artifact: ONNX (the Triton
    # repository) goes last.
    for item in sorted(formats, key=lambda f: f["format"] == "onnx"):
        metrics = {**item["metrics"], "latency_ms": item["latency_ms"]}
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
        "epochs": int(epochs),
        "imgsz": int(imgsz),
        "ultralytics_version": ultralytics.__version__,
    }
    registration = Registration(
        url=registry,
        registered_model=registered_model,
        version=run_id,
        author="yolokf",
        properties=properties,
        token=_token(token_file),
        ca_bundle=ca_bundle or None,
        champion_metric=champion_metric or None,
        champion_margin=champion_margin,
        description=f"{pipeline_name} run {run_name}",
    )
    result = register(registration, models)
    print(f"yolokf: {result.message}", flush=True)
    return result.status
