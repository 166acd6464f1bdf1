"""Register a trained model in Kubeflow Model Registry (the pipeline's register step).

One run becomes one model version (named by the run id) of a registered model, created when missing,
with one model artifact per exported format (its URI, format name and version) and the run's
properties and every format's metrics as custom properties of the version.

A version is whole before anyone may rely on it (issue 16): it is created ARCHIVED, its artifacts and
properties are written, and only then is it made LIVE. Champion comparisons count LIVE versions only, so a
registration that failed half-way never competes; a retried step finds its ARCHIVED version, runs the champion
check again, rewrites the properties, adds the missing artifacts and makes it LIVE. A LIVE version is already
registered. With a champion metric the version is registered only when it beats every earlier LIVE version
trained on the same dataset (same dataset_hash) by more than a margin.

It talks to the registry through the official client, `model_registry` (`ModelRegistry`), and turns
every failure into a one-line ModelRegistryError that says what to do. The client is imported inside
the functions: this module is imported by code that must stay light.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from yolokf.core.errors import ModelRegistryError
from yolokf.promotion.registry_client import connect_registry, is_transient, registry_errors

if TYPE_CHECKING:
    from model_registry import ModelRegistry
    from model_registry.types import ListOptions, ModelArtifact, ModelVersion, Pager, RegisteredModel


# Metadata ints must match ^-?([1-9][0-9]{0,8}|0)$ (mr_openapi's MetadataIntValue): larger ones go as text.
MAX_METADATA_INT = 999_999_999
T = TypeVar("T")
# Tries of one registration inside the step, and the first pause between them (doubled each time).
ATTEMPTS = 3
RETRY_BACKOFF_S = 2.0
# The format whose metrics --champion compares when there is one; else the first format given.
CHAMPION_FORMAT = "pytorch"


@dataclass(frozen=True)
class ModelFile:
    """One exported file (or folder) of the trained model and the metrics measured on it."""

    format: str  # "pytorch", "onnx", "openvino", "torchscript"
    format_version: str  # ONNX opset, torch version for pytorch/torchscript, openvino version
    uri: str  # where it is stored: an s3:// artifact URI on a cluster, a path locally
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. {"mAP50-95": 0.61, "latency_ms": 12.3}


@dataclass(frozen=True)
class Registration:
    """Where and what to register."""

    url: str  # --registry, e.g. https://model-registry-service.kubeflow.svc:8443
    registered_model: str
    version: str  # the KFP run id
    author: str
    properties: dict[str, str | int | float | bool]  # run_id, pipeline_name, dataset_hash, epochs...
    token: str | None = None  # None: the client reads the pod's token (see connect_registry)
    ca_bundle: str | None = None  # PEM CA bundle for https
    champion_metric: str | None = None  # register only if this metric beats earlier versions on the same data
    champion_margin: float = 0.0
    description: str = ""


@dataclass(frozen=True)
class RegistrationResult:
    status: str  # "registered", "already registered", "not a champion"
    message: str  # one line for the log
    registered_model_id: str | None
    version_id: str | None
    artifact_ids: tuple[str, ...]


def check_registry(url: str, token: str | None, ca_bundle: str | None) -> None:
    """Fail fast, with one clear line, when the registry cannot be reached or refuses the token."""
    with registry_errors(url, token):
        connect_registry(url, token, ca_bundle, author="yolokf")  # the client's constructor lists one registered model


def register(registration: Registration, models: list[ModelFile]) -> RegistrationResult:
    """Register `models` (one per format) as version `registration.version`; see the module docstring.

    A network error or a 502/503/504 is tried again inside the step, ATTEMPTS times in all with backoff
    (docs/cluster.md, "Retries"): a registration is idempotent, so the next try completes what the last left.
    """
    reg = registration
    _check_input(reg, models)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with registry_errors(reg.url, reg.token):
                client = connect_registry(reg.url, reg.token, reg.ca_bundle, author=reg.author)
                return _register(client, reg, models)
        except ModelRegistryError as exc:
            if attempt == ATTEMPTS or not is_transient(exc.__cause__):
                raise
            time.sleep(RETRY_BACKOFF_S * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


# --- Registration ---------------------------------------------------------------------------------------


def _check_input(reg: Registration, models: list[ModelFile]) -> None:
    if not models:
        raise ModelRegistryError(
            f"Nothing to register for {reg.registered_model} version {reg.version}: no model files."
        )
    formats = [m.format for m in models]
    if len(set(formats)) != len(formats):
        raise ModelRegistryError(f"Each format may be registered once per version; got {', '.join(formats)}.")
    if reg.champion_metric:
        compared = _champion_model(models)
        if reg.champion_metric not in compared.metrics:
            raise ModelRegistryError(
                f"--champion {reg.champion_metric}: the {compared.format} model has no such metric "
                f"(it has {', '.join(compared.metrics) or 'none'})."
            )
        if "dataset_hash" not in reg.properties:
            raise ModelRegistryError("--champion compares versions trained on the same data: dataset_hash is missing.")


def _champion_model(models: list[ModelFile]) -> ModelFile:
    return next((m for m in models if m.format == CHAMPION_FORMAT), models[0])


def _register(client: ModelRegistry, reg: Registration, models: list[ModelFile]) -> RegistrationResult:
    from model_registry.types import ModelVersion, RegisteredModel
    from mr_openapi.models.model_version_state import ModelVersionState

    api = client._api  # the client's REST layer: the only way to add artifacts to an existing version
    where = f"in Model Registry at {reg.url}"
    name = f"{reg.registered_model} version {reg.version}"
    rm = _find_registered_model(client, reg.registered_model)
    mv = client.async_runner(api.get_model_version_by_params(rm.id, reg.version)) if rm and rm.id else None
    if mv is not None and mv.state == ModelVersionState.LIVE:
        assert rm is not None and mv.id is not None
        artifact_ids, added = _ensure_artifacts(client, mv, reg, models)
        count = f"{len(artifact_ids)} artifact{'s' if len(artifact_ids) != 1 else ''}"
        message = f"{name} was already registered {where} ({count}, {added} added now)"
        return RegistrationResult("already registered", message, rm.id, mv.id, artifact_ids)
    status = "registered" if mv is None else "completed"
    verdict = ""
    if reg.champion_metric:
        beaten, verdict = _champion(client, rm, reg, models)
        if not beaten:
            return RegistrationResult("not a champion", f"Not registered: {verdict}", rm.id if rm else None, None, ())
    if rm is None:
        new_model = RegisteredModel(name=reg.registered_model, owner=reg.author)
        rm = _create_or_find(
            client, api.upsert_registered_model(new_model), functools.partial(_model_behind_conflict, client, reg)
        )
    assert rm is not None and rm.id is not None
    version = ModelVersion(
        name=reg.version,
        author=reg.author,
        description=reg.description or None,
        custom_properties=_version_properties(reg, models),
        state=ModelVersionState.ARCHIVED,  # hidden from champion checks until whole
    )
    if mv is None:
        rm_id = rm.id
        mv = _create_or_find(
            client,
            api.upsert_model_version(version, rm_id),
            lambda: client.async_runner(api.get_model_version_by_params(rm_id, reg.version)),
        )
    else:  # a partial version left by an earlier try: its properties are this try's
        version.id = mv.id
        mv = client.async_runner(api.upsert_model_version(version))
    assert mv is not None and mv.id is not None
    artifact_ids, _ = _ensure_artifacts(client, mv, reg, models)
    mv.state = ModelVersionState.LIVE
    mv = client.async_runner(api.upsert_model_version(mv))
    count = f"{len(artifact_ids)} artifact{'s' if len(artifact_ids) != 1 else ''}"
    done = "Registered" if status == "registered" else "Completed the partial registration of"
    message = f"{done} {name} ({count}) {where}" + (f": {verdict}" if verdict else "")
    return RegistrationResult(status, message, rm.id, mv.id, artifact_ids)


def _find_registered_model(client: ModelRegistry, name: str) -> RegisteredModel | None:
    """The registered model named exactly `name`, or None.

    kubeflow/hub finds one by `name LIKE ?` (v0.3.8 internal/db/service/registered_model.go:47): `_` matches any
    one character and MySQL's default collation ignores case, so `yolo_det` also matches `yolo-det` and `YOLO`
    matches `yolo`; two matches are answered 404 "multiple registered models found"
    (internal/core/registered_model.go:126-127), which the client returns as None, as it does no match. A match of
    another name, or none, is settled on the list of every registered model, compared exactly.
    """
    found = client.get_registered_model(name)
    if found is not None and found.name == name:
        return found
    return next((m for m in _registered_models(client) if m.name == name), None)


def _registered_models(client: ModelRegistry) -> list[RegisteredModel]:
    """Every registered model, page by page as the server hands them out (nextPageToken)."""
    return list(client.get_registered_models().page_size(100))


def _model_versions(client: ModelRegistry, registered_model_id: str) -> Pager[ModelVersion]:
    """Every version of the registered model, by its id: the client's get_model_versions(name) looks the name up
    again, with the LIKE above."""
    from model_registry.types import Pager

    def page(options: ListOptions) -> list[ModelVersion]:
        return client.async_runner(client._api.get_model_versions(registered_model_id, options))

    return Pager(page).page_size(100)


def _model_behind_conflict(client: ModelRegistry, reg: Registration) -> RegisteredModel | None:
    """After the registry refused to create `reg.registered_model`: the one a concurrent step created, or None.

    A registry on MySQL (kubeflow/hub's manifests) also refuses `YOLO` beside an existing `yolo`: its unique key on
    the name compares under the same case-insensitive collation. yolokf does not add the run to `yolo` then: the user
    asked for `YOLO`, which is what they will look for; `yolo` may be someone else's model, whose versions the champion
    check would compete with; and the serving step names both `yolo` (plan.serving_name). It refuses in one line
    that names the existing model, before anything is written, so a rerun with that name (or another) is one flag
    away. Deciding on the server's refusal, not on the names alone, leaves a case-sensitive registry (PostgreSQL)
    free to hold both.
    """
    listed = _registered_models(client)
    exact = next((m for m in listed if m.name == reg.registered_model), None)
    if exact is not None:
        return exact
    twin = next((m.name for m in listed if (m.name or "").casefold() == reg.registered_model.casefold()), None)
    if twin is not None:
        raise ModelRegistryError(
            f"Model Registry at {reg.url} already has a registered model {twin!r}, and takes "
            f"{reg.registered_model!r} for the same name (it ignores case): give --registered-model {twin} to add "
            "this run to it, or another name."
        )
    return None


def _create_or_find(client: ModelRegistry, create: Coroutine[Any, Any, T], find: Callable[[], T | None]) -> T:
    """Create an item; when the server refuses because a concurrent step created it first, the item it created.

    kubeflow/hub answers a duplicate name with 409 ("... already exists: conflict",
    internal/core/registered_model.go:48, model_version.go:54, artifact.go:105, from gorm's
    ErrDuplicatedKey with TranslateError on, internal/platform/db/mysql/connect.go:85); servers before that
    setting (kubeflow/model-registry#1244, 2025-06) answered 500. Either way the item is looked up again, and the
    first error stands when it is not there.
    """
    from mr_openapi.exceptions import ApiException

    try:
        return client.async_runner(create)
    except ApiException as exc:
        if exc.status not in (409, 500):
            raise
        found = find()
        if found is None:
            raise
        return found


def _ensure_artifacts(
    client: ModelRegistry, mv: ModelVersion, reg: Registration, models: list[ModelFile]
) -> tuple[tuple[str, ...], int]:
    """Create the model artifacts the version lacks (in `models` order); their ids and how many were added."""
    from model_registry.types import ListOptions

    assert mv.id is not None
    api = client._api
    existing: dict[str, ModelArtifact] = {}
    options = ListOptions(limit=100)
    while True:  # every page: a version may hold more artifacts than ours
        for artifact in client.async_runner(api.get_model_artifacts(mv.id, options)):
            existing.setdefault(artifact.name or "", artifact)
        if not options.next_page_token:
            break
    ids, added = [], 0
    for model in models:
        name = f"{reg.registered_model}-{model.format}"
        artifact = existing.get(name)
        if artifact is None:
            artifact = _create_or_find(
                client,
                api.upsert_model_version_artifact(_artifact(name, model, reg), mv.id),
                functools.partial(_find_artifact, client, name, mv.id),
            )
            added += 1
        assert artifact is not None and artifact.id is not None
        ids.append(artifact.id)
    return tuple(ids), added


def _find_artifact(client: ModelRegistry, name: str, version_id: str) -> ModelArtifact | None:
    return client.async_runner(client._api.get_model_artifact_by_params(name, version_id))


def _artifact(name: str, model: ModelFile, reg: Registration) -> ModelArtifact:
    from model_registry.types import ModelArtifact

    pipeline = reg.properties.get("pipeline_name")
    return ModelArtifact(
        name=name,
        uri=model.uri,
        model_format_name=model.format,
        model_format_version=model.format_version,
        custom_properties={k: _metadata(v) for k, v in model.metrics.items()} or None,
        # The spec's provenance fields, as its description suggests for models made by Kubeflow Pipelines.
        model_source_kind="pipelines",
        model_source_class="pipelinerun",
        model_source_group=str(reg.properties["namespace"]) if "namespace" in reg.properties else None,
        model_source_id=str(reg.properties.get("run_id", reg.version)),
        model_source_name=f"{pipeline}/{reg.version}" if pipeline else reg.version,
    )


def _version_properties(reg: Registration, models: list[ModelFile]) -> dict[str, str | int | float | bool]:
    """The run's properties and every format's metrics as "<format>.<metric>", typed for the registry."""
    props = {key: _metadata(value) for key, value in reg.properties.items()}
    for model in models:
        props.update({f"{model.format}.{metric}": _metadata(value) for metric, value in model.metrics.items()})
    return props


def _metadata(value: str | int | float | bool) -> str | int | float | bool:
    """A value the client's metadata typing accepts: it maps bool/int/float/str to Metadata*Value."""
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if abs(value) <= MAX_METADATA_INT else str(value)
    value = float(value)
    return value if math.isfinite(value) else str(value)  # JSON has no NaN: the server would refuse the body


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _champion(
    client: ModelRegistry, rm: RegisteredModel | None, reg: Registration, models: list[ModelFile]
) -> tuple[bool, str]:
    """Whether this version beats the best earlier one on the same dataset, and a line that says so."""
    metric = reg.champion_metric
    assert metric
    compared = _champion_model(models)
    key = f"{compared.format}.{metric}"
    new = compared.metrics[metric]
    best: tuple[float, str] | None = None
    if rm is not None and rm.id is not None:
        for version in _model_versions(client, rm.id):
            if version.state != "LIVE" or version.name == reg.version:  # partial ones never compete
                continue
            props = version.custom_properties or {}
            value = _number(props.get(key))
            if props.get("dataset_hash") == reg.properties["dataset_hash"] and value is not None:
                if best is None or value > best[0]:
                    best = (value, version.name)
    if best is None:
        return True, f"first version with {key} for dataset {reg.properties['dataset_hash']}"
    value, name = best
    if new > value + reg.champion_margin:
        return True, f"{metric} {new:g} beats version {name}'s {value:g} by more than {reg.champion_margin:g}"
    return False, f"{metric} {new:g} does not beat version {name}'s {value:g} by {reg.champion_margin:g}"


# --- Connection and errors ------------------------------------------------------------------------------
