"""The launcher step's TrainJob side (issue 19) against a strict loopback Kubernetes API server (tests/loopback/kube)
driven by the official `kubernetes` client: success, failure, cancel, timeout and a missing permission."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.loopback.kube import KubeServer
from yolokf.core.errors import TrainingError
from yolokf.core.settings import TrainConfig
from yolokf.pipeline.job import plan_job
from yolokf.pipeline.step_options import StepOptions
from yolokf.pipeline.trainjob import build_trainjob, trainjob_dict
from yolokf.training.launch import prepare_trainjob, run_trainjob
from yolokf.training.result import result_from_json
from yolokf.training.train import Attempt

NAMESPACE = "team-vision"
TINY = {"model": "yolov8n.yaml", "data": "shapes", "imgsz": 64, "batch": 8, "workers": 0, "seed": 0}


@pytest.fixture
def kube(tmp_path):
    server = KubeServer(tmp_path)
    yield server
    server.close()


def _body(tmp_path: Path, name: str, **values) -> dict:
    config = TrainConfig(**{**TINY, **values})
    job = plan_job(config, StepOptions(nodes=2, gpus=0, checkpoint_pvc="ckpt", shm_size=None), image="local")
    template = trainjob_dict(build_trainjob(job))
    return prepare_trainjob(template, job.config, Attempt(str(tmp_path / "checkpoints"), "run"), name=name)


def test_a_trainjob_trains_on_two_nodes_and_leaves_rank_0s_result(kube, tmp_path, capsys):
    body = _body(tmp_path, "yolo-ok", epochs=2, train_args={"nbs": 8, "plots": False})
    run_trainjob(body, namespace=NAMESPACE, api_client=kube.api_client(), timeout=600, poll=0.5)
    out = capsys.readouterr().out
    assert f"created TrainJob {NAMESPACE}/yolo-ok; node 0's log follows." in out
    assert "2 epochs completed" in out  # node 0's log, printed by the launcher as it went
    result = result_from_json(json.loads((tmp_path / "checkpoints" / "run" / "yolokf-result.json").read_text()))
    assert result.epochs_done == 2
    assert result.best is not None and result.best.is_file()
    assert set(result.metrics) >= {"mAP50", "mAP50-95", "fitness"}
    assert kube.deleted == []  # a finished TrainJob stays for its logs


def test_a_failed_trainjob_fails_the_step_with_one_line(kube, tmp_path):
    body = _body(tmp_path, "yolo-bad", epochs=1)
    request = json.loads(body["spec"]["trainer"]["args"][-1])
    request["parameters"]["data"] = str(tmp_path / "missing.yaml")
    body["spec"]["trainer"]["args"][-1] = json.dumps(request)
    with pytest.raises(TrainingError) as failed:
        run_trainjob(body, namespace=NAMESPACE, api_client=kube.api_client(), timeout=300, poll=0.5)
    assert str(failed.value) == f"TrainJob {NAMESPACE}/yolo-bad failed (FailedJobs): node 0 failed"


def test_a_trainjob_past_the_step_timeout_is_deleted(kube, tmp_path):
    body = _body(tmp_path, "yolo-slow", epochs=50)
    with pytest.raises(TrainingError, match=r"did not finish within the step's timeout \(3 s\); deleted it\.$"):
        run_trainjob(body, namespace=NAMESPACE, api_client=kube.api_client(), timeout=3, poll=0.5)
    assert kube.deleted == ["yolo-slow"]
    assert kube.trainjobs == {}


def test_a_canceled_step_deletes_its_trainjob(kube, tmp_path):
    body = _body(tmp_path, "yolo-cancel", epochs=50)
    script = (
        "import json, sys\n"
        "from tests.loopback.kube import KubeServer\n"
        "from kubernetes import client\n"
        "from yolokf.training.launch import run_trainjob\n"
        "from yolokf.core.errors import TrainingError\n"
        "configuration = client.Configuration(host=sys.argv[1])\n"
        "configuration.api_key = {'authorization': 'token'}\n"
        "configuration.api_key_prefix = {'authorization': 'Bearer'}\n"
        "try:\n"
        "    run_trainjob(json.loads(sys.argv[2]), namespace='team-vision', api_client=client.ApiClient(configuration),"
        " timeout=None, poll=0.2)\n"
        "except TrainingError as exc:\n"
        "    print(exc, file=sys.stderr)\n"
        "    sys.exit(1)\n"
    )
    step = subprocess.Popen(
        [sys.executable, "-c", script, kube.url, json.dumps(body)], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while ("team-vision", "yolo-cancel") not in kube.trainjobs:
        assert time.monotonic() < deadline and step.poll() is None
        time.sleep(0.2)
    time.sleep(1)
    step.send_signal(signal.SIGTERM)  # what Kubeflow Pipelines does to a canceled run's pods
    _, stderr = step.communicate(timeout=60)
    assert step.returncode == 1
    assert stderr.strip() == "The step was canceled; deleted TrainJob team-vision/yolo-cancel."
    assert kube.deleted == ["yolo-cancel"]


def test_a_service_account_without_the_right_gets_one_line(tmp_path):
    server = KubeServer(tmp_path, allowed=False)
    try:
        with pytest.raises(TrainingError) as refused:
            run_trainjob(
                _body(tmp_path, "yolo-x", epochs=1), namespace=NAMESPACE, api_client=server.api_client(), timeout=60
            )
    finally:
        server.close()
    # The preflight's reviews answer first (tests/test_preflight.py); the create's own 403 is the fallback.
    assert str(refused.value) == (
        f"The step's service account lacks these rights in namespace {NAMESPACE}: create, get, list, watch, delete "
        "trainjobs.trainer.kubeflow.org; apply yolokf's Role and RoleBinding: kubectl apply -f the -rbac.yaml that "
        'yolokf compile --nodes wrote next to the pipeline (docs/cluster.md, "Several nodes").'
    )
    assert server.trainjobs == {}


def test_the_server_refuses_a_misspelt_field(kube, tmp_path):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    body = _body(tmp_path, "yolo-typo", epochs=1)
    body["spec"]["trainer"]["numNode"] = body["spec"]["trainer"].pop("numNodes")
    api = client.CustomObjectsApi(kube.api_client())
    with pytest.raises(ApiException) as refused:
        api.create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", NAMESPACE, "trainjobs", body)
    assert refused.value.status == 400
    assert "has no field spec.trainer.numNode" in json.loads(refused.value.body)["message"]


@pytest.fixture
def in_a_pod(kube, tmp_path, monkeypatch):
    """The launcher step's pod: the cluster from the kubeconfig (here the loopback server), its pod name."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": kube.url}}],
                "users": [{"name": "u", "user": {"token": "token"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": NAMESPACE}}],
                "current-context": "x",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOSTNAME", "yolov8-train-abcde-system-container-impl-123")
    return kube


def _outputs(folder: Path) -> dict:
    from kfp.dsl import HTML, Artifact, Metrics, Model

    kinds = (("weights", Model), ("metrics", Metrics), ("report", HTML), ("run_dir", Artifact))
    return {name: kind(uri=str(folder / name)) for name, kind in kinds}


def _launch(tmp_path: Path, outputs: dict, **values) -> None:
    """launch_step as the compiled `--nodes 2` component calls it, with this run's `values`."""
    from yolokf.training.launch import launch_step

    config = TrainConfig(**TINY, epochs=5, train_args={"nbs": 8, "plots": False})
    job = plan_job(config, StepOptions(nodes=2, gpus=0, checkpoint_pvc="ckpt", shm_size=None), image="local")
    launch_step(
        nodes=2,
        trainjob=trainjob_dict(build_trainjob(job)),
        checkpoint_dir=str(tmp_path / "checkpoints"),
        **outputs,
        **{**job.config.parameters(), **values},
    )


def test_the_launcher_step_hands_rank_0s_results_to_its_outputs(in_a_pod, tmp_path):
    """The compiled TrainJob with this run's values (epochs edited in the run form: 2, compiled 5)."""
    kube = in_a_pod
    outputs = _outputs(tmp_path / "out")
    _launch(tmp_path, outputs, epochs=2)
    assert len(kube.trainjobs) == 1
    (namespace, name), run = next(iter(kube.trainjobs.items()))
    assert namespace == NAMESPACE and name.startswith("yolokf-")
    request = json.loads(run.body["spec"]["trainer"]["args"][-1])
    assert request["parameters"]["epochs"] == 2
    weights = outputs["weights"]
    assert weights.metadata["epochs_done"] == 2
    assert sorted(weights.metadata["files"]) == ["best.pt", "last.pt"]
    assert set(weights.metadata["metrics"]) >= {"mAP50", "fitness"}
    assert (Path(outputs["run_dir"].path) / "results.csv").is_file()


def test_a_sweep_trial_trains_its_values_to_its_round_on_the_nodes(in_a_pod, tmp_path):
    """A `tune --nodes 2 --halving 2` trial in round 1 of 2 (epochs 2): its TrainJob trains the trial's values in
    the sweep's trial folder and stops after epoch 1; the step's summary is the one-pod trial's record."""
    kube = in_a_pod
    trials = [{"trial": 0, "values": {"lr0": 0.003}}, {"trial": 1, "values": {"lr0": 0.02}}]
    summary = tmp_path / "summary.json"
    sweep = {"round": 0, "rounds": 2, "eta": 2, "name": "nodes"}
    checkpoints = tmp_path / "checkpoints"
    _launch(
        tmp_path,
        _outputs(tmp_path / "out"),
        epochs=2,
        trial=trials[1],
        trials=trials,
        sweep=sweep,
        summary=str(summary),
    )
    (((_, name), run),) = kube.trainjobs.items()
    request = json.loads(run.body["spec"]["trainer"]["args"][-1])
    assert request["parameters"]["train_args"]["lr0"] == 0.02 and request["stop_after"] == 1
    folder = Path(request["checkpoint_dir"]) / request["run_key"]
    assert folder.parent.parent == checkpoints and folder.parent.name.startswith("nodes-") and folder.name == "trial-01"
    record = json.loads(summary.read_text())
    assert record["status"] == "succeeded" and record["trial"] == 1 and record["epochs"] == 1
    assert record["parameters"]["train_args"] == {"nbs": 8, "plots": False, "lr0": 0.02}
    assert record["weights"] == str(folder / "weights" / "best.pt")
    assert {"mAP50", "fitness"} <= set(record["metrics"])


def test_a_failed_trial_trainjob_is_recorded_and_the_sweep_goes_on(in_a_pod, tmp_path):
    trials = [{"trial": 0, "values": {"lr0": 0.003}}]
    summary = tmp_path / "summary.json"
    outputs = _outputs(tmp_path / "out")
    missing = str(tmp_path / "missing.yaml")
    _launch(tmp_path, outputs, data=missing, trial=trials[0], trials=trials, sweep={"name": ""}, summary=str(summary))
    record = json.loads(summary.read_text())
    assert record["status"] == "failed" and record["epochs"] == 0
    assert re.fullmatch(
        r"TrainingError: TrainJob team-vision/yolokf-\w+ failed \(FailedJobs\): node 0 failed", record["error"]
    )
    assert (Path(outputs["weights"].path) / "FAILED.txt").read_text().strip() == record["error"]


def test_a_lost_node_fails_the_trainjob_and_the_retried_step_resumes(in_a_pod, tmp_path, monkeypatch):
    """A node lost mid-training (its pod's processes killed) fails the TrainJob and the step with one line; the
    step's retry (`--retries`: a new pod, so a new TrainJob) resumes from rank 0's last.pt on the checkpoint PVC."""
    import threading

    from yolokf.training.launch import kill_node

    kube = in_a_pod
    killed: list[str] = []

    def lose_node_1() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            saved = list((tmp_path / "checkpoints").glob("*/weights/last.pt"))
            if saved and kube.trainjobs:
                run = next(iter(kube.trainjobs.values()))
                kill_node(run.processes[1].pid)
                killed.append(run.body["metadata"]["name"])
                return
            time.sleep(0.2)

    threading.Thread(target=lose_node_1, daemon=True).start()
    with pytest.raises(TrainingError) as lost:
        _launch(tmp_path, _outputs(tmp_path / "first"), epochs=4)
    assert len(killed) == 1
    assert re.fullmatch(rf"TrainJob {NAMESPACE}/{killed[0]} failed \(FailedJobs\): node \d failed", str(lost.value))

    monkeypatch.setenv("HOSTNAME", "yolov8-train-abcde-system-container-impl-456")  # the retry's pod
    outputs = _outputs(tmp_path / "retry")
    _launch(tmp_path, outputs, epochs=4)
    assert len(kube.trainjobs) == 2  # the failed TrainJob stays for its logs; the retry made its own
    weights = outputs["weights"].metadata
    assert weights["resumed_from_epoch"] >= 1 and weights["epochs_done"] == 4
