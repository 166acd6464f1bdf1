"""Registering a trained model in Kubeflow Model Registry (yolokf.promotion.register).

The official client, `model_registry`, talks to tests/loopback/model_registry over real sockets
(http and https); that server checks every body against the client's own generated models, as the
real Go server does. Results are read back through the client, as a user of the registry would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import subprocess
import sys
import warnings

import pytest
import requests

from tests.loopback.model_registry import API, ModelRegistryServer
from yolokf.core.errors import ModelRegistryError
from yolokf.promotion import register as reg_module
from yolokf.promotion import registry_client
from yolokf.promotion.register import ModelFile, Registration, check_registry, register

# Any warning is a failure here: an unclosed aiohttp session or event loop, a deprecation in the client.
pytestmark = pytest.mark.filterwarnings("error")

TOKEN = "sa-token-0123456789abcdef"
MODEL = "yolov8n-shapes"
DATASET = "sha256:5d41402abc4b2a76"


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch, tmp_path):
    # The client reads $KF_PIPELINES_SA_TOKEN_PATH, else the pod's service-account token, when given no
    # token: point it at an empty file so that a test machine's own token never travels.
    empty = tmp_path / "no-token"
    empty.write_text("")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(empty))
    monkeypatch.setattr(reg_module, "RETRY_BACKOFF_S", 0.0)  # the in-step retries, without their pauses
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)


def _serve(**kwargs):
    server = ModelRegistryServer(**kwargs).start()
    yield server
    server.stop()
    assert not server.bugs, server.bugs  # every answer matched the client's response models


@pytest.fixture
def registry():
    yield from _serve()


@pytest.fixture
def secured():
    yield from _serve(token=TOKEN, forbidden=("valid-but-not-allowed",))


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    from tests.loopback.tls import self_signed_cert

    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_registry(cert):
    yield from _serve(token=TOKEN, tls=cert)


def models(map5095: float = 0.61, run: str = "run-1") -> list[ModelFile]:
    root = f"s3://mlpipeline/v2/artifacts/yolo-train/{run}"
    return [
        ModelFile("pytorch", "2.5.1", f"{root}/train/best.pt", {"mAP50-95": map5095, "mAP50": 0.9}),
        ModelFile("onnx", "17", f"{root}/export/best.onnx", {"mAP50-95": map5095 - 0.01, "latency_ms": 12.3}),
        ModelFile("openvino", "2024.4.0", f"{root}/export/best_openvino_model", {"mAP50-95": map5095 - 0.02}),
    ]


def registration(server: ModelRegistryServer, version: str = "run-1", **kwargs) -> Registration:
    properties: dict[str, str | int | float | bool] = {
        "run_id": version,
        "pipeline_name": "yolo-train",
        "dataset_uri": "s3://datasets/shapes.zip",
        "dataset_hash": DATASET,
        "image": "ghcr.io/example/yolokf:1.0",
        "epochs": 50,
        "imgsz": 640,
        "ultralytics_version": "8.4.2",
        "resumed": False,
    }
    properties.update(kwargs.pop("properties", {}))
    return Registration(server.url, MODEL, version, "yolokf", properties, **kwargs)


def _runner(coro):
    return asyncio.run(coro)


def reader(server: ModelRegistryServer, token: str | None = None, ca: str | None = None):
    """The official client, as a user of the registry would open it."""
    from model_registry import ModelRegistry

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its hints about ports and missing tokens
        return ModelRegistry(
            server.url, author="reader", user_token=token, custom_ca=ca, async_runner=_runner, log_level=logging.ERROR
        )


def artifacts_of(client, version_id: str):
    return client.async_runner(client._api.get_model_artifacts(version_id))


# --- Registering -----------------------------------------------------------------------------------------


def test_a_run_becomes_one_version_with_one_artifact_per_format(registry):
    result = register(registration(registry, description="shapes, 50 epochs"), models())

    assert result.status == "registered"
    assert result.message == f"Registered {MODEL} version run-1 (3 artifacts) in Model Registry at {registry.url}"
    client = reader(registry)
    rm = client.get_registered_model(MODEL)
    assert rm is not None and rm.owner == "yolokf" and rm.id == result.registered_model_id
    assert [m.name for m in client.get_registered_models()] == [MODEL]
    versions = list(client.get_model_versions(MODEL))
    assert [v.name for v in versions] == ["run-1"]
    mv = client.get_model_version(MODEL, "run-1")
    assert mv is not None and mv.id == result.version_id
    assert (mv.author, mv.description, mv.registered_model_id) == ("yolokf", "shapes, 50 epochs", rm.id)
    assert mv.custom_properties == {
        "run_id": "run-1",
        "pipeline_name": "yolo-train",
        "dataset_uri": "s3://datasets/shapes.zip",
        "dataset_hash": DATASET,
        "image": "ghcr.io/example/yolokf:1.0",
        "epochs": 50,
        "imgsz": 640,
        "ultralytics_version": "8.4.2",
        "resumed": False,
        "pytorch.mAP50-95": 0.61,
        "pytorch.mAP50": 0.9,
        "onnx.mAP50-95": pytest.approx(0.60),
        "onnx.latency_ms": 12.3,
        "openvino.mAP50-95": pytest.approx(0.59),
    }
    artifacts = artifacts_of(client, mv.id)
    assert [(a.name, a.uri, a.model_format_name, a.model_format_version) for a in artifacts] == [
        (f"{MODEL}-pytorch", "s3://mlpipeline/v2/artifacts/yolo-train/run-1/train/best.pt", "pytorch", "2.5.1"),
        (f"{MODEL}-onnx", "s3://mlpipeline/v2/artifacts/yolo-train/run-1/export/best.onnx", "onnx", "17"),
        (
            f"{MODEL}-openvino",
            "s3://mlpipeline/v2/artifacts/yolo-train/run-1/export/best_openvino_model",
            "openvino",
            "2024.4.0",
        ),
    ]
    assert tuple(a.id for a in artifacts) == result.artifact_ids
    onnx = artifacts[1]
    assert onnx.custom_properties == {"mAP50-95": pytest.approx(0.60), "latency_ms": 12.3}
    assert (onnx.model_source_kind, onnx.model_source_class, onnx.model_source_id, onnx.model_source_name) == (
        "pipelines",
        "pipelinerun",
        "run-1",
        "yolo-train/run-1",
    )
    # The client found the artifact by name under its version, as `get_model_artifact` users do.
    assert client.async_runner(client._api.get_model_artifact_by_params(f"{MODEL}-onnx", mv.id)).uri == onnx.uri


def test_numbers_stay_numbers_on_the_wire(registry):
    register(registration(registry), models())

    (version,) = registry.versions.values()
    props = version["customProperties"]
    assert props["epochs"] == {"metadataType": "MetadataIntValue", "int_value": "50"}
    assert props["pytorch.mAP50-95"] == {"metadataType": "MetadataDoubleValue", "double_value": 0.61}
    assert props["resumed"] == {"metadataType": "MetadataBoolValue", "bool_value": False}
    assert props["dataset_hash"] == {"metadataType": "MetadataStringValue", "string_value": DATASET}


def test_values_the_registry_cannot_hold_as_numbers_are_kept_as_text(registry):
    # Metadata ints have at most 9 digits, and JSON has no NaN: both would make the request fail.
    files = [ModelFile("pytorch", "2.5.1", "s3://b/best.pt", {"mAP50-95": 0.5, "latency_ms": float("nan")})]
    register(registration(registry, properties={"started_ms": 1_767_225_600_000}), files)

    mv = reader(registry).get_model_version(MODEL, "run-1")
    assert mv is not None and mv.custom_properties is not None
    assert mv.custom_properties["started_ms"] == "1767225600000"
    assert mv.custom_properties["pytorch.latency_ms"] == "nan"
    assert mv.custom_properties["pytorch.mAP50-95"] == 0.5


def test_registering_the_same_run_again_changes_nothing(registry):
    first = register(registration(registry), models())
    writes = len(registry.writes())

    again = register(registration(registry), models())

    assert again.status == "already registered"
    assert again.message == (
        f"{MODEL} version run-1 was already registered in Model Registry at {registry.url} (3 artifacts, 0 added now)"
    )
    assert (again.registered_model_id, again.version_id, again.artifact_ids) == (
        first.registered_model_id,
        first.version_id,
        first.artifact_ids,
    )
    assert len(registry.writes()) == writes
    client = reader(registry)
    assert [v.name for v in client.get_model_versions(MODEL)] == ["run-1"]
    assert first.version_id is not None and len(artifacts_of(client, first.version_id)) == 3


def test_a_retry_after_a_partial_registration_completes_it(registry):
    # The step dies after the version and its first artifact exist: the onnx artifact is refused, on every one
    # of the step's own tries.
    registry.fail(503, times=reg_module.ATTEMPTS, method="POST", path=r"/artifacts$", body=r'"modelFormatName": "onnx"')
    with pytest.raises(ModelRegistryError, match=re.escape(f"Model Registry at {registry.url} failed (HTTP 503)")):
        register(registration(registry), models())
    client = reader(registry)
    mv = client.get_model_version(MODEL, "run-1")
    assert mv is not None and [a.name for a in artifacts_of(client, mv.id)] == [f"{MODEL}-pytorch"]

    assert mv.state == "ARCHIVED"  # partial: not LIVE, so no champion check counts it

    retry = register(registration(registry), models())

    assert retry.status == "completed"
    assert retry.message.startswith(f"Completed the partial registration of {MODEL} version run-1 (3 artifacts)")
    assert [a.model_format_name for a in artifacts_of(client, mv.id)] == ["pytorch", "onnx", "openvino"]
    assert [v.name for v in client.get_model_versions(MODEL)] == ["run-1"]
    whole = client.get_model_version(MODEL, "run-1")
    assert whole is not None and whole.state == "LIVE"
    assert whole.custom_properties is not None and whole.custom_properties["dataset_hash"] == DATASET
    again = register(registration(registry), models())
    assert (again.status, again.message.endswith("(3 artifacts, 0 added now)")) == ("already registered", True)


def test_a_partial_version_never_competes_and_its_retry_is_checked_as_a_champion(registry):
    """A version whose artifacts failed stays ARCHIVED: a later run's champion check ignores it, and the retry
    of the partial run goes through the champion check it had not passed yet (issue 16)."""
    registry.fail(503, times=reg_module.ATTEMPTS, method="POST", path=r"/artifacts$", body=r'"modelFormatName": "onnx"')
    with pytest.raises(ModelRegistryError, match=r"failed \(HTTP 503\)"):
        register(champion(registry, "run-1"), models(0.90, run="run-1"))
    second = register(champion(registry, "run-2"), models(0.50, run="run-2"))
    assert second.status == "registered"
    assert "first version with pytorch.mAP50-95" in second.message  # run-1's 0.90 was not counted

    retry = register(champion(registry, "run-1"), models(0.90, run="run-1"))

    assert retry.status == "completed"
    assert "mAP50-95 0.9 beats version run-2's 0.5" in retry.message
    client = reader(registry)
    assert [(v.name, v.state) for v in client.get_model_versions(MODEL)] == [("run-1", "LIVE"), ("run-2", "LIVE")]


def test_a_gateway_error_is_tried_again_inside_the_step_and_a_refusal_is_not(registry, secured):
    registry.fail(503, method="POST", path=r"/artifacts$", body=r'"modelFormatName": "onnx"')
    registry.fail(0, method="GET", path=r"/registered_models$")  # a dropped connection first

    result = register(registration(registry), models())

    assert result.status == "completed"  # the second try found the first one's ARCHIVED version and finished it
    assert [r.status for r in registry.calls("POST", r"/artifacts$")].count(503) == 1
    mv = reader(registry).get_model_version(MODEL, "run-1")
    assert mv is not None and mv.state == "LIVE"
    with pytest.raises(ModelRegistryError, match=r"refused the token \(HTTP 401\)"):
        register(registration(secured, token="wrong-token-value"), models())
    assert len(secured.requests) == 1  # a refused credential fails at once


def test_a_second_run_is_a_second_version_of_the_same_model(registry):
    first = register(registration(registry, "run-1"), models(run="run-1"))
    second = register(registration(registry, "run-2"), models(0.7, run="run-2"))

    assert second.status == "registered"
    assert second.registered_model_id == first.registered_model_id
    assert second.version_id != first.version_id
    client = reader(registry)
    assert [v.name for v in client.get_model_versions(MODEL)] == ["run-1", "run-2"]
    assert len(registry.calls("POST", r"/registered_models$")) == 1
    mv = client.get_model_version(MODEL, "run-2")
    assert mv is not None and mv.custom_properties is not None
    assert mv.custom_properties["pytorch.mAP50-95"] == 0.7
    assert artifacts_of(client, mv.id)[0].uri.endswith("/run-2/train/best.pt")


# --- Champion --------------------------------------------------------------------------------------------


def champion(server: ModelRegistryServer, version: str, **kwargs) -> Registration:
    return registration(server, version, champion_metric="mAP50-95", champion_margin=0.01, **kwargs)


def test_the_first_version_on_a_dataset_is_a_champion(registry):
    result = register(champion(registry, "run-1"), models(0.45))

    assert result.status == "registered"
    assert result.message.endswith(f": first version with pytorch.mAP50-95 for dataset {DATASET}")


def test_a_worse_model_is_not_registered(registry):
    register(champion(registry, "run-1"), models(0.45))
    writes = len(registry.writes())

    result = register(champion(registry, "run-2"), models(0.41, run="run-2"))

    assert result.status == "not a champion"
    assert result.message == "Not registered: mAP50-95 0.41 does not beat version run-1's 0.45 by 0.01"
    assert result.version_id is None and result.artifact_ids == ()
    assert len(registry.writes()) == writes
    assert [v.name for v in reader(registry).get_model_versions(MODEL)] == ["run-1"]


def test_a_model_better_by_no_more_than_the_margin_is_not_registered(registry):
    register(champion(registry, "run-1"), models(0.45))

    result = register(champion(registry, "run-2"), models(0.46, run="run-2"))

    assert result.status == "not a champion"
    assert result.message == "Not registered: mAP50-95 0.46 does not beat version run-1's 0.45 by 0.01"


def test_a_better_model_is_registered_and_compared_with_the_best_version(registry):
    register(champion(registry, "run-1"), models(0.45))
    better = register(champion(registry, "run-2"), models(0.50, run="run-2"))
    assert better.status == "registered"
    assert better.message.endswith(": mAP50-95 0.5 beats version run-1's 0.45 by more than 0.01")

    # run-3 beats run-1 but not run-2, the best so far.
    result = register(champion(registry, "run-3"), models(0.48, run="run-3"))

    assert result.status == "not a champion"
    assert result.message == "Not registered: mAP50-95 0.48 does not beat version run-2's 0.5 by 0.01"
    assert [v.name for v in reader(registry).get_model_versions(MODEL)] == ["run-1", "run-2"]


def test_a_model_trained_on_other_data_has_no_competitor(registry):
    register(champion(registry, "run-1"), models(0.45))

    result = register(champion(registry, "run-2", properties={"dataset_hash": "sha256:other"}), models(0.30))

    assert result.status == "registered"
    assert result.message.endswith(": first version with pytorch.mAP50-95 for dataset sha256:other")


def test_a_champion_retry_of_a_registered_run_is_already_registered(registry):
    register(champion(registry, "run-1"), models(0.45))

    assert register(champion(registry, "run-1"), models(0.45)).status == "already registered"


def test_a_champion_metric_the_models_lack_is_refused_before_any_request(registry):
    with pytest.raises(ModelRegistryError, match=r"--champion mAP75: the pytorch model has no such metric"):
        register(registration(registry, champion_metric="mAP75"), models())
    assert registry.requests == []


# --- Names the registry finds with LIKE (issue 24) --------------------------------------------------------
# kubeflow/hub finds a registered model by `name LIKE ?` (internal/db/service/registered_model.go:47), case-
# insensitive under MySQL's default collation, and answers two matches 404 (internal/core/registered_model.go:126).


def named(server: ModelRegistryServer, name: str, version: str = "run-1", **kwargs) -> Registration:
    return dataclasses.replace(registration(server, version, **kwargs), registered_model=name)


def versions_by_model(server: ModelRegistryServer) -> dict[str, list[str]]:
    """{registered model name: its versions' names}, read from the server's tables: the client's own lookups by
    name go through the same LIKE."""
    return {
        m["name"]: [v["name"] for v in server.versions.values() if v["registeredModelId"] == m["id"]]
        for m in server.registered_models.values()
    }


@pytest.mark.parametrize("name", ["yolo_det", "yolo-det"])
def test_a_new_version_lands_under_its_own_model_beside_a_lookalike(registry, name):
    """The find by `yolo_det` matches `yolo-det` too: two matches, 404, which the client takes for none."""
    ids = {n: post(registry, "/registered_models", {"name": n}).json()["id"] for n in ("yolo_det", "yolo-det")}

    result = register(named(registry, name), models())

    assert (result.status, result.registered_model_id) == ("registered", ids[name])
    assert versions_by_model(registry) == {"yolo_det": [], "yolo-det": [], name: ["run-1"]}
    client = reader(registry)
    mv = client.async_runner(client._api.get_model_version_by_params(ids[name], "run-1"))
    assert mv is not None and mv.state == "LIVE"
    assert [a.name for a in artifacts_of(client, mv.id)] == [f"{name}-pytorch", f"{name}-onnx", f"{name}-openvino"]


def test_a_name_whose_find_matches_only_a_lookalike_gets_a_model_of_its_own(registry):
    """The find by `yolo_det` answers `yolo-det` alone: not the model asked for."""
    post(registry, "/registered_models", {"name": "yolo-det"})

    result = register(named(registry, "yolo_det"), models())

    assert result.status == "registered"
    assert versions_by_model(registry) == {"yolo-det": [], "yolo_det": ["run-1"]}


def test_the_champion_check_compares_versions_of_its_own_model_only(registry):
    register(named(registry, "yolo-det", champion_metric="mAP50-95", champion_margin=0.01), models(0.70))
    register(named(registry, "yolo_det", champion_metric="mAP50-95", champion_margin=0.01), models(0.45))

    result = register(
        named(registry, "yolo_det", "run-2", champion_metric="mAP50-95", champion_margin=0.01), models(0.50, "run-2")
    )

    assert result.status == "registered"
    assert result.message.endswith(": mAP50-95 0.5 beats version run-1's 0.45 by more than 0.01")
    assert versions_by_model(registry) == {"yolo-det": ["run-1"], "yolo_det": ["run-1", "run-2"]}


def test_a_step_that_loses_the_race_to_create_its_model_finds_it_beside_a_lookalike(registry):
    post(registry, "/registered_models", {"name": "yolo-det"})
    registry.race(
        "POST", r"/registered_models$", lambda: register(named(registry, "yolo_det", "run-0"), models(run="run-0"))
    )

    result = register(named(registry, "yolo_det"), models())

    assert result.status == "registered"
    assert sorted(r.status for r in registry.calls("POST", r"/registered_models$")) == [201, 201, 409]
    assert versions_by_model(registry) == {"yolo-det": [], "yolo_det": ["run-0", "run-1"]}


@pytest.mark.parametrize(("existing", "asked"), [("yolo", "YOLO"), ("YOLO", "yolo")])
def test_a_name_the_registry_takes_for_an_existing_one_is_refused_naming_it(registry, existing, asked):
    """The registry (MySQL) takes `YOLO` for `yolo`: its find answers the other, its create refuses with 409. The
    run is not added to a model of another name: one line names it, and nothing is written."""
    post(registry, "/registered_models", {"name": existing})

    with pytest.raises(ModelRegistryError) as raised:
        register(named(registry, asked), models())

    assert str(raised.value) == (
        f"Model Registry at {registry.url} already has a registered model '{existing}', and takes '{asked}' for the "
        f"same name (it ignores case): give --registered-model {existing} to add this run to it, or another name."
    )
    assert [r.status for r in registry.writes()] == [201, 409]  # the setup's create, then the refused one
    assert versions_by_model(registry) == {existing: []} and registry.artifacts == {}


# --- Errors ----------------------------------------------------------------------------------------------


def refused(url: str, status: int) -> str:
    return re.escape(
        f"Model Registry at {url} refused the token (HTTP {status}): give a valid token with --registry-token-file, "
        "or run the step with a service account that may use the registry."
    )


def test_the_right_token_is_sent_and_accepted(secured):
    check_registry(secured.url, TOKEN + "\n", None)  # as read from a token file

    assert len(secured.requests) == 1  # one request: a fast preflight
    assert secured.requests[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert register(registration(secured, token=TOKEN), models()).status == "registered"


def test_a_wrong_token_is_refused_in_one_line_without_the_token(secured, caplog, capsys):
    with pytest.raises(ModelRegistryError, match=f"^{refused(secured.url, 401)}$") as error:
        register(registration(secured, token="wrong-token-value"), models())

    assert "wrong-token-value" not in str(error.value)
    assert "wrong-token-value" not in caplog.text + "".join(capsys.readouterr())
    with pytest.raises(ModelRegistryError, match=f"^{refused(secured.url, 401)}$"):
        check_registry(secured.url, "wrong-token-value", None)


def test_a_token_that_may_not_use_the_registry_is_refused(secured):
    with pytest.raises(ModelRegistryError, match=f"^{refused(secured.url, 403)}$"):
        check_registry(secured.url, "valid-but-not-allowed", None)


def test_no_token_says_how_to_give_one(secured):
    with pytest.raises(ModelRegistryError, match=r"refused the request without a valid token \(HTTP 401\): give a"):
        check_registry(secured.url, None, None)


def test_the_pods_token_goes_over_https_only(tls_registry, cert, secured, tmp_path, monkeypatch):
    """issue 16: the pod's service-account token travels to https registries; to an http one only a token the
    user gives explicitly (--registry-token-file) does, and a line says which."""
    from yolokf.promotion.publish import registry_token

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))

    check_registry(tls_registry.url, None, str(cert[0]))
    assert tls_registry.requests[0].headers["authorization"] == f"Bearer {TOKEN}"

    with pytest.raises(ModelRegistryError, match=r"refused the request without a valid token \(HTTP 401\)"):
        check_registry(secured.url, None, None)
    assert len(secured.requests) == 1
    assert TOKEN not in secured.requests[0].headers.get("authorization", "")

    token, said = registry_token(secured.url, str(token_file))
    check_registry(secured.url, token, None)
    assert secured.requests[-1].headers["authorization"] == f"Bearer {TOKEN}"
    assert said == f"sending the token from {token_file} over plain http, unencrypted, as asked."
    assert registry_token(secured.url, "") == (
        None,
        f"not sending the pod's service-account token to {secured.url} (plain http); give --registry-token-file to "
        "send a token anyway.",
    )
    assert registry_token(tls_registry.url, "") == (None, "sending the pod's service-account token over https.")


def test_an_unreachable_registry(registry):
    from yolokf.training.launch import free_port

    url = f"http://127.0.0.1:{free_port()}"  # a port nothing listens on

    unreachable = rf"^Cannot reach Model Registry at {re.escape(url)}: .*\. Check --registry and that the service is up"
    with pytest.raises(ModelRegistryError, match=unreachable):
        check_registry(url, None, None)
    with pytest.raises(ModelRegistryError, match=unreachable):
        register(Registration(url, MODEL, "run-1", "yolokf", {}), models())


def test_a_registry_that_does_not_answer_times_out(registry, monkeypatch):
    monkeypatch.setattr(registry_client, "REQUEST_TIMEOUT_S", 0.3)
    registry.fail(200, delay=1.0)

    with pytest.raises(ModelRegistryError, match=r"Cannot reach Model Registry at .*: no answer within 0.3 s"):
        check_registry(registry.url, None, None)


def test_a_url_that_is_not_the_registry(registry):
    url = registry.url + "/pipeline"

    with pytest.raises(ModelRegistryError, match=r"answered HTTP 404 .*is --registry the Model Registry service's URL"):
        check_registry(url, None, None)


@pytest.mark.parametrize("url", ["model-registry-service.kubeflow.svc:8080", "grpc://127.0.0.1:9090"])
def test_a_url_without_http_or_https_is_refused(url):
    with pytest.raises(ModelRegistryError, match=r"is not an http:// or https:// URL"):
        check_registry(url, None, None)


def test_https_with_the_ca_bundle(tls_registry, cert):
    result = register(registration(tls_registry, token=TOKEN, ca_bundle=str(cert[0])), models())

    assert result.status == "registered"
    assert reader(tls_registry, TOKEN, str(cert[0])).get_model_version(MODEL, "run-1") is not None


def test_https_without_the_ca_bundle_says_to_give_it(tls_registry):
    with pytest.raises(ModelRegistryError, match=r"^Cannot verify the TLS certificate of .*--registry-ca-bundle"):
        check_registry(tls_registry.url, TOKEN, None)


def test_https_needs_a_token(tls_registry, cert):
    with pytest.raises(ModelRegistryError, match=r"is https and needs a token: give one with --registry-token-file"):
        check_registry(tls_registry.url, None, str(cert[0]))


def test_a_missing_ca_bundle_file(tls_registry, tmp_path):
    with pytest.raises(ModelRegistryError, match=r"--registry-ca-bundle .*missing.pem: no such file"):
        check_registry(tls_registry.url, TOKEN, str(tmp_path / "missing.pem"))


def test_the_step_output_stays_clean(registry):
    """In a fresh process (a pipeline step): no handler added to the root logger, nothing on stderr."""
    code = (
        "import logging, sys\n"
        "from yolokf.promotion.register import check_registry\n"
        "check_registry(sys.argv[1], None, None)\n"
        "assert logging.getLogger().handlers == [], logging.getLogger().handlers\n"
    )
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    done = subprocess.run([sys.executable, "-c", code, registry.url], capture_output=True, text=True, env=env)

    assert (done.returncode, done.stderr) == (0, "")


def test_register_works_from_inside_a_running_event_loop(registry):
    """A notebook or an async caller: the client must not need (or patch) the caller's loop."""

    async def caller():
        return register(registration(registry), models())

    assert asyncio.run(caller()).status == "registered"
    assert not hasattr(asyncio, "_nest_patched")  # the client's default runner was not installed


# --- The loopback server is as strict as the real one ----------------------------------------------------


def post(server: ModelRegistryServer, path: str, body: object) -> requests.Response:
    return requests.post(server.url + API + path, json=body, timeout=10)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"name": "m", "colour": "red"}, 400, 'json: unknown field "colour"'),
        ({"name": 7}, 400, "RegisteredModelCreate.name"),
        ({"name": "m", "state": "GONE"}, 400, "RegisteredModelCreate.state"),
        (
            {"name": "m", "customProperties": {"n": {"metadataType": "MetadataIntValue", "int_value": "1.5"}}},
            400,
            "RegisteredModelCreate.customProperties[n].int_value",
        ),
        (
            {"name": "m", "customProperties": {"n": {"metadataType": "MetadataFloatValue", "float_value": 1}}},
            400,
            'metadataType "MetadataFloatValue" is not one of',
        ),
        (
            {"name": "m", "customProperties": {"n": {"metadataType": "MetadataIntValue", "int_value": 1}}},
            400,
            "cannot unmarshal number into Go struct field RegisteredModelCreate.customProperties[n].int_value",
        ),
        ([{"name": "m"}], 400, "cannot unmarshal array"),
        # Missing required: the Go server's RequiredError, answered 422 by its DefaultErrorHandler.
        ({}, 422, "required field 'name' is zero value."),
        ({"name": ""}, 422, "required field 'name' is zero value."),
    ],
)
def test_the_server_refuses_bodies_the_real_one_refuses(registry, body, status, message):
    answer = post(registry, "/registered_models", body)

    assert answer.status_code == status
    assert answer.json()["code"] == "Bad Request"
    assert message and message in answer.json()["message"]
    assert registry.registered_models == {}


@pytest.mark.parametrize("what", ["registered_models", "model_versions"])
def test_two_steps_registering_at_once_make_one_model_and_version(registry, what):
    """Another step creates the same registered model (or version) between this step's lookup and its create:
    the server answers 409 as upstream does (kubeflow/hub internal/core/registered_model.go:48,
    model_version.go:54), and the step goes on with the item the other created."""
    if what == "model_versions":
        # The registered model exists; the race is on the version.
        reader(registry).register_model(
            MODEL, "s3://b/m", version="other", model_format_name="onnx", model_format_version="17"
        )
    registry.race("POST", rf"/{what}$", lambda: register(registration(registry), models()))

    result = register(registration(registry), models())

    conflicts = [r for r in registry.calls("POST", rf"/{what}$") if r.status == 409]
    assert len(conflicts) == 1
    assert result.status in ("registered", "completed", "already registered")
    client = reader(registry)
    assert len(registry.registered_models) == 1
    mv = client.get_model_version(MODEL, "run-1")
    assert mv is not None and mv.state == "LIVE"
    assert [a.model_format_name for a in artifacts_of(client, mv.id)] == ["pytorch", "onnx", "openvino"]


def test_the_server_answers_409_for_duplicate_names(registry):
    rm = post(registry, "/registered_models", {"name": "m"}).json()
    duplicate = post(registry, "/registered_models", {"name": "m"})
    assert duplicate.status_code == 409
    assert duplicate.json() == {"code": "Conflict", "message": "registered model with name m already exists: conflict"}

    version = {"name": "v1", "registeredModelId": rm["id"]}
    mv = post(registry, "/model_versions", version).json()
    assert post(registry, "/model_versions", version).status_code == 409
    other = post(registry, "/registered_models", {"name": "other"}).json()
    assert post(registry, "/model_versions", {"name": "v1", "registeredModelId": other["id"]}).status_code == 201

    artifact = {"artifactType": "model-artifact", "name": "m-onnx", "uri": "s3://b/m.onnx"}
    assert post(registry, f"/model_versions/{mv['id']}/artifacts", artifact).status_code == 201
    assert post(registry, f"/model_versions/{mv['id']}/artifacts", artifact).status_code == 409
    unknown = post(registry, f"/model_versions/{mv['id']}/artifacts", {**artifact, "name": "x", "size": 3})
    assert unknown.status_code == 400


def test_the_server_finds_names_with_like_and_compares_them_ignoring_case(registry):
    """kubeflow/hub v0.3.8 on MySQL: `name LIKE ?` (`_` and `%` wildcards, case-insensitive), two matches 404."""
    ids = {
        n: post(registry, "/registered_models", {"name": n}).json()["id"] for n in ("yolo_det", "yolo-det", "Shapes")
    }

    def find(path: str, **params: str) -> requests.Response:
        return requests.get(registry.url + API + path, params=params, timeout=10)

    ambiguous = find("/registered_model", name="yolo_det")
    assert (ambiguous.status_code, ambiguous.json()) == (
        404,
        {"code": "Not Found", "message": "multiple registered models found for name=yolo_det, externalId=: not found"},
    )
    assert find("/registered_model", name="yolo-det").json()["name"] == "yolo-det"  # `-` is no wildcard
    assert find("/registered_model", name="yolo\\_det").json()["name"] == "yolo_det"  # `\` escapes
    assert find("/registered_model", name="shapes").json()["name"] == "Shapes"
    assert find("/registered_model", name="yolo%").status_code == 404
    assert post(registry, "/registered_models", {"name": "SHAPES"}).status_code == 409

    mv = post(registry, "/model_versions", {"name": "Run-1", "registeredModelId": ids["Shapes"]}).json()
    assert find("/model_version", name="run_1", parentResourceId=ids["Shapes"]).json()["id"] == mv["id"]
    assert post(registry, "/model_versions", {"name": "RUN-1", "registeredModelId": ids["Shapes"]}).status_code == 409
    artifact = {"artifactType": "model-artifact", "name": "Shapes-ONNX", "uri": "s3://b/m.onnx"}
    assert post(registry, f"/model_versions/{mv['id']}/artifacts", artifact).status_code == 201
    found = find("/model_artifact", name="shapes_onnx", parentResourceId=mv["id"])
    assert found.json()["name"] == "Shapes-ONNX"


def test_the_server_answers_404_and_400_for_unknown_and_bad_ids(registry):
    base = registry.url + API
    assert requests.get(f"{base}/registered_model", params={"name": "nope"}, timeout=10).status_code == 404
    assert requests.get(f"{base}/registered_model", timeout=10).status_code == 400
    assert requests.get(f"{base}/registered_models/99", timeout=10).status_code == 404
    assert requests.get(f"{base}/registered_models/abc", timeout=10).status_code == 400
    assert requests.get(f"{base}/model_version", params={"name": "v"}, timeout=10).status_code == 400


def test_the_server_pages_lists_as_the_client_expects(registry):
    for name in ("a", "b", "c"):
        post(registry, "/registered_models", {"name": name})

    first = requests.get(registry.url + API + "/registered_models", params={"pageSize": "2"}, timeout=10).json()
    assert ([m["name"] for m in first["items"]], first["size"], first["pageSize"]) == (["a", "b"], 2, 2)
    last = requests.get(
        registry.url + API + "/registered_models",
        params={"pageSize": "2", "nextPageToken": first["nextPageToken"]},
        timeout=10,
    ).json()
    assert ([m["name"] for m in last["items"]], last["nextPageToken"]) == (["c"], "")
    pager = reader(registry).get_registered_models().page_size(2).descending()
    assert [m.name for m in pager] == ["c", "b", "a"]


def test_the_server_wants_the_token(secured):
    assert requests.get(secured.url + API + "/registered_models", timeout=10).status_code == 401
    answer = requests.get(
        secured.url + API + "/registered_models", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    assert answer.status_code == 200 and answer.json()["items"] == []
