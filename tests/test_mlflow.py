"""MLflow (issue 25) against a real `mlflow server` (sqlite store, local artifact root) started by the tests, one for
the session, and its basic-auth app for the credential path; nothing of mlflow is patched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.loopback.kfp import KfpServer
from tests.loopback.processes import start_server, stop
from yolokf.core.errors import TrackingError
from yolokf.tracking.registry import CHAMPION_ALIAS, register_version
from yolokf.tracking.step import KFP_RUN_TAG, PARENT_TAG, ROLE_TAG, check_server, mlflow_client, open_run
from yolokf.training.launch import free_port

TRAIN = ["--model", "yolov8n.yaml", "--data", "shapes", "--imgsz", "64", "--batch", "8", "--workers", "0"]
ADMIN_PASSWORD = "yolokf-admin-Passw0rd!"
MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")
MLFLOW_ENV += ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def _start(root: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on a free loopback port, waited for until /health answers."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "art")]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})}
    url = f"http://127.0.0.1:{port}"
    # A fresh sqlite store runs MLflow's migrations first: up to 240 s here.
    process = start_server([*command, *extra], f"{url}/health", root / "server.log", timeout=240, env=env, cwd=root)
    return process, url


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    process, url = _start(tmp_path_factory.mktemp("mlflow"))
    yield url
    stop(process, timeout=20)


@pytest.fixture(scope="session")
def mlflow_auth_server(tmp_path_factory):
    pytest.importorskip("flask_wtf", reason="mlflow's basic-auth app needs flask-wtf (the dev extra installs it)")
    root = tmp_path_factory.mktemp("mlflow-auth")
    config = root / "basic_auth.ini"
    config.write_text(
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{root / 'auth.db'}\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "yolokf-tests-secret-key",
    }
    process, url = _start(root, "--app-name", "basic-auth", env=env)
    yield url
    stop(process, timeout=20)


@pytest.fixture(autouse=True)
def _no_ambient_mlflow(monkeypatch):
    for name in MLFLOW_ENV:
        monkeypatch.delenv(name, raising=False)


def _runs(url: str, experiment: str) -> list:
    client = mlflow_client(url)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else list(client.search_runs([found.experiment_id], max_results=100))


def _history(url: str, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in mlflow_client(url).get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def tracked_run(mlflow_server, tmp_path_factory):
    """One local training of 2 epochs logged to MLflow; its weights serve the registry tests."""
    from tests.conftest import invoke

    root = tmp_path_factory.mktemp("runs")
    args = ["run", *TRAIN, "--epochs", "2", "--pipeline-root", root, "--mlflow", mlflow_server]
    return invoke([*args, "--mlflow-experiment", "curves"]), root


@pytest.mark.slow
def test_a_local_run_logs_every_epoch_params_and_artifacts(mlflow_server, tracked_run):
    result, root = tracked_run
    assert result.exit_code == 0, result.output
    (run,) = _runs(mlflow_server, "curves")
    assert run.data.tags[ROLE_TAG] == "pipeline" and run.data.tags[KFP_RUN_TAG]
    for key in ("mAP50", "mAP50-95", "train/box_loss", "val/box_loss", "lr/pg0"):
        assert _history(mlflow_server, run.info.run_id, key) == [1, 2], key  # each epoch once
    assert run.data.params["epochs"] == "2" and run.data.params["imgsz"] == "64"
    assert "best/mAP50-95" in run.data.metrics
    files = {a.path for a in mlflow_client(mlflow_server).list_artifacts(run.info.run_id, "weights")}
    assert "weights/best.pt" in files
    link = f"{mlflow_server}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert f"MLflow: {link}" in result.stdout
    assert run.info.status == "FINISHED"


@pytest.mark.slow
def test_a_run_with_an_injected_run_id_logs_into_that_run(mlflow_server, cli, tmp_path):
    """As KFP's plugin does: MLFLOW_RUN_ID (a run of another experiment) and MLFLOW_TRACKING_URI in the step."""
    client = mlflow_client(mlflow_server)
    experiment = client.create_experiment("kfp-plugin-parent")
    injected = client.create_run(experiment, run_name="task-run").info.run_id
    env = {"MLFLOW_RUN_ID": injected, "MLFLOW_TRACKING_URI": mlflow_server}
    result = cli(["run", *TRAIN, "--epochs", "1", "--pipeline-root", tmp_path, "--mlflow-experiment", "other"], env=env)
    assert result.exit_code == 0, result.output
    assert _history(mlflow_server, injected, "mAP50") == [1]
    assert _runs(mlflow_server, "other") == []  # no second run, no experiment of its own
    assert client.get_run(injected).info.status == "RUNNING"  # the plugin ends the runs it injected


@pytest.mark.slow
def test_tune_logs_one_nested_run_per_trial_under_the_sweeps_run(mlflow_server, cli, tmp_path):
    args = ["tune", *TRAIN, "--epochs", "1", "--trials", "2", "--set", "optimizer=SGD"]
    args += ["--space", "lr0=loguniform:1e-3:1e-2", "--pipeline-root", tmp_path, "--mlflow", mlflow_server]
    result = cli([*args, "--mlflow-experiment", "sweeps"])
    assert result.exit_code == 0, result.output
    runs = _runs(mlflow_server, "sweeps")
    (parent,) = [r for r in runs if r.data.tags[ROLE_TAG] == "pipeline"]
    trials = [r for r in runs if r.data.tags[ROLE_TAG] == "trial"]
    assert sorted(r.data.tags["yolokf.trial"] for r in trials) == ["trial-00", "trial-01"]
    assert {r.data.tags[PARENT_TAG] for r in trials} == {parent.info.run_id}
    for trial in trials:
        assert _history(mlflow_server, trial.info.run_id, "mAP50") == [1]
        assert float(trial.data.params["lr0"]) > 0
    assert f"MLflow: {mlflow_server}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}" in (
        result.stdout
    )


def _weights(tracked_run) -> Path:
    result, root = tracked_run
    assert result.exit_code == 0, result.output
    return next(root.rglob("weights/best.pt"))


@pytest.mark.slow
def test_registry_mlflow_registers_once_per_run_and_champion_moves_only_to_a_better_model(
    mlflow_server, tracked_run, cli, tmp_path
):
    weights = _weights(tracked_run)
    args = ["evaluate", "--model", weights, "--data", "shapes", "--batch", "8", "--pipeline-root", tmp_path]
    args += ["--registry", "mlflow", "--registered-model", "shapes-det", "--champion", "--mlflow", mlflow_server]
    result = cli([*args, "--mlflow-experiment", "registry"])
    assert result.exit_code == 0, result.output
    client = mlflow_client(mlflow_server)
    (version,) = client.search_model_versions("name = 'shapes-det'")
    assert client.get_model_version_by_alias("shapes-det", CHAMPION_ALIAS).version == version.version
    tags = version.tags
    assert tags["task"] == "detect" and tags["dataset_hash"] and tags["epochs"] == "2" and tags["imgsz"] == "64"
    assert "pytorch.mAP50-95" in tags and version.source.endswith("/model")
    model_files = {a.path for a in client.list_artifacts(version.run_id, "model/pytorch")}
    assert model_files == {"model/pytorch/best.pt"}
    (run,) = _runs(mlflow_server, "registry")
    assert "eval/mAP50-95" in run.data.metrics

    # The same run registered again (a retried step): its version, no second one.
    step_run = open_run({"uri": mlflow_server, "experiment": "registry"}, run.data.tags[KFP_RUN_TAG], name="again")
    assert step_run is not None and step_run.run_id == version.run_id
    metric = float(tags["pytorch.mAP50-95"])
    properties = {"dataset_hash": tags["dataset_hash"], "task": "detect"}

    def register(run, value):
        return register_version(
            run,
            name="shapes-det",
            properties=properties,
            metrics={"pytorch": {"mAP50-95": value}},
            files={"pytorch": weights},
            champion_metric="mAP50-95",
            champion_margin=0.0,
        )

    assert register(step_run, metric).status == "already registered"
    assert len(client.search_model_versions("name = 'shapes-det'")) == 1

    # Another run: not better, not registered; better, registered and the champion.
    worse = open_run({"uri": mlflow_server, "experiment": "registry"}, "kfp-worse", name="worse")
    assert register(worse, metric).status == "not a champion"
    better = open_run({"uri": mlflow_server, "experiment": "registry"}, "kfp-better", name="better")
    done = register(better, metric + 0.1)
    assert done.status == "registered"
    assert client.get_model_version_by_alias("shapes-det", CHAMPION_ALIAS).version == done.version
    assert len(client.search_model_versions("name = 'shapes-det'")) == 2


def test_a_wrong_password_fails_before_training_in_one_line(mlflow_auth_server, cli, tmp_path):
    check_server_env = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD}
    os.environ.update(check_server_env)
    try:
        check_server(mlflow_auth_server)  # the right password passes
    finally:
        for name in check_server_env:
            os.environ.pop(name)
    env = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "wrong"}
    result = cli(["run", *TRAIN, "--epochs", "1", "--pipeline-root", tmp_path, "--mlflow", mlflow_auth_server], env=env)
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        f"Error: MLflow at {mlflow_auth_server} refused the credentials (listing experiments): set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN), or on a cluster give "
        "--mlflow-secret NAME.\n"
    )
    assert not list(tmp_path.rglob("*.pt"))  # nothing trained


def test_an_unreachable_server_fails_in_one_line(cli, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    result = cli(["run", *TRAIN, "--epochs", "1", "--pipeline-root", tmp_path, "--mlflow", url])
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        f"Error: MLflow at {url} cannot be reached (listing experiments): check --mlflow (MLFLOW_TRACKING_URI) and "
        "the network.\n"
    )
    with pytest.raises(TrackingError, match="cannot be reached"):
        open_run({"uri": url}, "kfp-1", name="x")


def test_compile_carries_the_server_and_the_secret_name_never_credentials(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-never-in-yaml")
    out = tmp_path / "p.yaml"
    args = ["compile", "--data", "shapes", "--export", "onnx", "--registry", "mlflow", "--out", out]
    args += [
        "--mlflow",
        "http://mlflow.mlflow.svc:5000/",
        "--mlflow-experiment",
        "det",
        "--mlflow-secret",
        "mlflow-creds",
    ]
    result = cli(args)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "s3cret-never-in-yaml" not in text
    spec, platform = yaml.safe_load_all(text)
    tasks = spec["root"]["dag"]["tasks"]
    for name in ("yolo-train", "yolo-evaluate", "yolo-export", "yolo-register"):
        inputs = tasks[name]["inputs"]["parameters"]
        assert inputs["mlflow"]["runtimeValue"]["constant"] == {
            "uri": "http://mlflow.mlflow.svc:5000",
            "experiment": "det",
        }
        assert inputs["kfp_run"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    mapped = {
        (env["secretName"], item["secretKey"], item["envVar"], env.get("optional"))
        for name in ("exec-yolo-train", "exec-yolo-register")
        for env in executors[name]["secretAsEnv"]
        for item in env["keyToEnv"]
    }
    assert {(s, key, env) for s, key, env, _ in mapped} >= {
        ("mlflow-creds", key, key)
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
    }
    assert all(optional for *_, optional in mapped)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--mlflow", "mlflow.svc:5000"], "--mlflow 'mlflow.svc:5000' is not an http(s) URL"),
        (["--registry", "mlflow"], "--registry mlflow needs --mlflow URI (or MLFLOW_TRACKING_URI)"),
        (["--mlflow-secret", "creds"], "--mlflow-secret needs --mlflow URI"),
        (
            ["--mlflow", "http://m:5000", "--mlflow-secret", "Bad_Name"],
            "--mlflow-secret 'Bad_Name' is not a Kubernetes",
        ),
    ],
)
def test_bad_mlflow_flags_are_one_line(cli, tmp_path, args, error):
    result = cli(["compile", "--data", "shapes", "--out", tmp_path / "p.yaml", *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Error: {error}") and result.stderr.count("\n") == 1


def test_run_host_asks_kfps_mlflow_plugin_for_the_experiment(cli, monkeypatch):
    monkeypatch.setenv("YOLOKF_IMAGE", "registry.example.com/ml/yolokf:0.1.0")
    kfp = KfpServer().start()
    try:
        args = ["run", "--data", "shapes", "--host", kfp.url, "--mlflow-experiment", "detectors"]
        result = cli([*args, "--mlflow", "http://mlflow.mlflow.svc:5000"])
        assert result.exit_code == 0, result.output
        (create,) = kfp.calls("POST", r"/runs$")
        assert create.json()["plugins_input"] == {"mlflow": {"experiment_name": "detectors"}}
        # The loopback server has no plugin (no plugins_output): yolokf says the steps log themselves.
        assert "MLflow: the server has no MLflow plugin (plugins_input ignored): the steps log to " in result.stdout
    finally:
        kfp.stop()
