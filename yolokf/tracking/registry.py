"""`--registry mlflow`: register a model in the registry of the MLflow server that `--mlflow` names. Runs inside the
registration step (`yolokf.promotion.publish.register_step` decides what is registered; this module talks to MLflow).

One model version per pipeline run, whose source is the `model/` folder of the step's MLflow run (the weights, and
the exports that logged into the same run), with the same properties as a Kubeflow Model Registry version as its
tags. Registering the same run again finds its version (one version per run: a retried step adds none). With a
champion metric, as for Kubeflow Model Registry, a version is registered only when it beats every earlier version
trained on the same data (same `dataset_hash`) by more than the margin, and then the alias `champion` moves to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yolokf.core.errors import TrackingError
from yolokf.tracking.step import StepRun, tracking_errors

CHAMPION_ALIAS = "champion"
MODEL_FOLDER = "model"  # the version's source: runs:/<run>/model
CHAMPION_FORMAT = "pytorch"  # the format whose metric --champion compares (as yolokf.promotion.register)


@dataclass(frozen=True)
class MlflowVersion:
    status: str  # "registered", "already registered", "not a champion"
    message: str
    version: str | None


def register_version(
    run: StepRun,
    *,
    name: str,
    properties: dict[str, Any],
    metrics: dict[str, dict[str, float]],
    files: dict[str, Path],
    champion_metric: str | None,
    champion_margin: float,
) -> MlflowVersion:
    """Register `run`'s model as a version of `name` (see the module docstring).

    `metrics`: each format's metrics ("pytorch", "onnx", ...), tagged as "<format>.<metric>"; `files`: the files to
    upload under `model/<format>/` first (those an export step has not logged into this run already)."""
    client, where = run.client, f"in the MLflow registry at {run.uri}"
    with tracking_errors(run.uri, f"registering {name}"):
        existing = client.search_model_versions(f"name = '{name}' and run_id = '{run.run_id}'")
        if existing:
            version = existing[0]
            alias = ""
            if champion_metric and _alias_holder(client, name) != str(version.version):
                beaten, _ = _champion(client, name, properties, metrics, champion_metric, champion_margin, version)
                if beaten:  # the step that registered it stopped before moving the alias
                    client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
                    alias = f"; alias {CHAMPION_ALIAS} moved to it now"
            message = f"{name} version {version.version} was already registered {where}{alias}"
            return MlflowVersion("already registered", message, str(version.version))
        verdict = ""
        if champion_metric:
            beaten, verdict = _champion(client, name, properties, metrics, champion_metric, champion_margin, None)
            if not beaten:
                return MlflowVersion("not a champion", f"Not registered: {verdict}", None)
        for fmt, path in files.items():
            path = Path(path)
            if path.is_dir():
                client.log_artifacts(run.run_id, str(path), f"{MODEL_FOLDER}/{fmt}")
            else:
                client.log_artifact(run.run_id, str(path), f"{MODEL_FOLDER}/{fmt}")
        try:
            client.create_registered_model(name, description="Registered by yolokf")
        except Exception as exc:  # it exists (or another step created it first): any other problem shows next
            if "RESOURCE_ALREADY_EXISTS" not in str(getattr(exc, "error_code", "")) + str(exc):
                raise
        tags = {key: _tag(value) for key, value in properties.items()}
        for fmt, values in metrics.items():
            tags.update({f"{fmt}.{metric}": _tag(value) for metric, value in values.items()})
        version = client.create_model_version(
            name, f"runs:/{run.run_id}/{MODEL_FOLDER}", run_id=run.run_id, tags=tags, description=_description(tags)
        )
        moved = ""
        if champion_metric:
            client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
            moved = f", alias {CHAMPION_ALIAS}"
    message = f"Registered {name} version {version.version}{moved} {where}" + (f": {verdict}" if verdict else "")
    return MlflowVersion("registered", message, str(version.version))


def _alias_holder(client: Any, name: str) -> str | None:
    """The version the alias `champion` points at; None when none does."""
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version)
    except Exception as exc:  # MLflow answers an unset alias with RESOURCE_DOES_NOT_EXIST
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) + str(exc):
            return None
        raise


def _tag(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return repr(round(value, 6))
    return str(value)


def _description(tags: dict[str, str]) -> str:
    return f"{tags.get('pipeline_name', 'yolokf')} run {tags.get('run_name') or tags.get('run_id', '')}".strip()


def _champion(
    client: Any,
    name: str,
    properties: dict[str, Any],
    metrics: dict[str, dict[str, float]],
    metric: str,
    margin: float,
    own: Any,
) -> tuple[bool, str]:
    """Whether this model beats every other version of `name` on the same dataset, and a line that says so."""
    compared = CHAMPION_FORMAT if CHAMPION_FORMAT in metrics else next(iter(metrics), "")
    if metric not in metrics.get(compared, {}):
        raise TrackingError(f"--champion {metric}: the {compared or 'registered'} model has no such metric.")
    key, new, digest = f"{compared}.{metric}", float(metrics[compared][metric]), str(properties["dataset_hash"])
    best: tuple[float, str] | None = None
    for version in client.search_model_versions(f"name = '{name}'"):
        if own is not None and version.version == own.version:
            continue
        tags = version.tags or {}
        try:
            value = float(tags[key])
        except (KeyError, ValueError):
            continue
        if tags.get("dataset_hash") == digest and (best is None or value > best[0]):
            best = (value, str(version.version))
    if best is None:
        return True, f"first version with {key} for dataset {digest}"
    value, version = best
    if new > value + margin:
        return True, f"{metric} {new:g} beats version {version}'s {value:g} by more than {margin:g}"
    return False, f"{metric} {new:g} does not beat version {version}'s {value:g} by {margin:g}"
