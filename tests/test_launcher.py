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
    kube.restart_backoff = 0.1  # the kubelet waits 10 s, then 20, 40...: the same restarts, sooner
    body = _body(tmp_path, "yolo-bad", epochs=1)
    request = json.loads(body["spec"]["trainer"]["args"][-1])
    request["parameters"]["data"] = str(tmp_path / "missing.yaml")
    body["spec"]["trainer"]["args"][-1] = json.dumps(request)
    with pytest.raises(TrainingError) as failed:
        run_trainjob(body, namespace=NAMESPACE, api_client=kube.api_client(), timeout=300, poll=0.5)
    assert re.fullmatch(rf"TrainJob {NAMESPACE}/yolo-bad failed \(FailedJobs\): node \d failed", str(failed.value))
    assert kube.trainjobs[(NAMESPACE, "yolo-bad")].restarts == 6, "the Job's backoffLimit was spent first"


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
        f"The step's service account lacks these rights in namespace {NAMESPACE}: create, get, list, watch, delete, "
        "patch trainjobs.trainer.kubeflow.org; apply yolokf's Role and RoleBinding: kubectl apply -f the -rbac.yaml "
        'that yolokf compile --nodes wrote next to the pipeline (docs/cluster.md, "Several nodes").'
    )
    assert server.trainjobs == {}


def test_the_server_drops_a_misspelt_field_with_a_warning_unless_asked_to_be_strict(kube, tmp_path):
    """The API server's default (fieldValidation Warn since v1.23, the kubernetes client's docstring of
    `field_validation`) keeps the object and drops the field; Strict refuses it."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    body = _body(tmp_path, "yolo-typo", epochs=1)
    body["spec"]["trainer"]["numNode"] = body["spec"]["trainer"].pop("numNodes")
    api = client.CustomObjectsApi(kube.api_client())
    with pytest.raises(ApiException) as refused:
        api.create_namespaced_custom_object(
            "trainer.kubeflow.org", "v1alpha1", NAMESPACE, "trainjobs", body, field_validation="Strict"
        )
    assert refused.value.status == 400
    assert json.loads(refused.value.body)["message"] == (
        'TrainJob in version "v1alpha1" cannot be handled as a TrainJob: strict decoding error: '
        'unknown field "spec.trainer.numNode"'
    )
    body["spec"]["trainer"]["command"] = ["sleep", "30"]
    created, status, headers = api.create_namespaced_custom_object_with_http_info(
        "trainer.kubeflow.org", "v1alpha1", NAMESPACE, "trainjobs", body
    )
    assert status == 201 and "numNode" not in created["spec"]["trainer"]
    assert headers["Warning"] == '299 - "unknown field \\"spec.trainer.numNode\\""'


def test_the_launcher_creates_its_trainjob_with_strict_field_validation(kube, tmp_path):
    body = _body(tmp_path, "yolo-strict", epochs=1)
    body["spec"]["trainer"]["numNode"] = 2
    with pytest.raises(TrainingError, match=r'unknown field "spec\.trainer\.numNode"'):
        run_trainjob(body, namespace=NAMESPACE, api_client=kube.api_client(), timeout=60)
    assert kube.trainjobs == {}


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


@pytest.mark.parametrize("on_a_cluster", [True, False])
def test_the_launcher_refuses_a_download_the_nodes_cannot_read(in_a_pod, tmp_path, on_a_cluster):
    """Issue 24, item 6: on a cluster (the compiled TrainJob) and on this machine (none) the launcher applies the one
    rule (`check_nodes_data`) before it creates a TrainJob or starts a node: the two faces agree."""
    from tests.test_nodes import NODES_READ_NO_DOWNLOAD
    from yolokf.core.errors import UsageError
    from yolokf.training.launch import launch_step

    config = TrainConfig(**TINY, epochs=1)
    job = plan_job(config, StepOptions(nodes=2, gpus=0, checkpoint_pvc="ckpt", shm_size=None), image="local")
    data = "s3://datasets/shapes"
    with pytest.raises(UsageError) as refused:
        launch_step(
            nodes=2,
            trainjob=trainjob_dict(build_trainjob(job)) if on_a_cluster else {},
            checkpoint_dir=str(tmp_path / "checkpoints"),
            **_outputs(tmp_path / "out"),
            **{**job.config.parameters(), "data": data},
        )
    assert str(refused.value) == NODES_READ_NO_DOWNLOAD.format(data=data)
    assert not in_a_pod.trainjobs


def test_a_failed_trial_trainjob_is_recorded_and_the_sweep_goes_on(in_a_pod, tmp_path):
    in_a_pod.restart_backoff = 0.1  # the kubelet's 10 s, 20 s...: the same restarts, sooner
    trials = [{"trial": 0, "values": {"lr0": 0.003}}]
    summary = tmp_path / "summary.json"
    outputs = _outputs(tmp_path / "out")
    missing = str(tmp_path / "missing.yaml")
    _launch(tmp_path, outputs, data=missing, trial=trials[0], trials=trials, sweep={"name": ""}, summary=str(summary))
    record = json.loads(summary.read_text())
    assert record["status"] == "failed" and record["epochs"] == 0
    assert re.fullmatch(
        r"TrainingError: TrainJob team-vision/yolokf-\w+ failed \(FailedJobs\): node \d failed", record["error"]
    )
    assert (Path(outputs["weights"].path) / "FAILED.txt").read_text().strip() == record["error"]


def test_a_lost_node_fails_the_trainjob_and_the_retried_step_resumes(in_a_pod, tmp_path, monkeypatch):
    """A node lost mid-training (its pod's processes killed) fails the TrainJob and the step with one line; the
    step's retry (`--retries`: a new pod, so a new TrainJob) resumes from rank 0's last.pt on the checkpoint PVC."""
    import threading

    kube = in_a_pod
    kube.backoff_limit = 0  # a Job that gives up at its first failed pod (the default, 6: the next test)
    killed: list[str] = []

    def lose_node_1() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            saved = list((tmp_path / "checkpoints").glob("*/weights/last.pt"))
            if saved and kube.trainjobs:
                run = next(iter(kube.trainjobs.values()))
                kube.lose_node(run, 1)
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


# Issue 24, item 1 and item 11: the launcher's faults. The nodes run short commands (no training): what is tested is
# the launcher against the loopback API server, which keeps owners, collects garbage and logs as a cluster does.
LAUNCHER = (
    "import json, sys\n"
    "from kubernetes import client\n"
    "from yolokf.training.launch import run_trainjob\n"
    "configuration = client.Configuration(host=sys.argv[1])\n"
    "configuration.api_key = {'authorization': 'token'}\n"
    "configuration.api_key_prefix = {'authorization': 'Bearer'}\n"
    "run_trainjob(json.loads(sys.argv[2]), namespace='team-vision', api_client=client.ApiClient(configuration),"
    " timeout=None, poll=0.2)\n"
)


def _quick(tmp_path: Path, name: str, seconds: float) -> dict:
    """A TrainJob whose one node prints its pid, then a numbered line every 50 ms for `seconds`, and succeeds."""
    body = _body(tmp_path, name, epochs=1)
    body["spec"]["trainer"]["numNodes"] = 1
    body["spec"]["trainer"]["command"] = [sys.executable, "-c"]
    body["spec"]["trainer"]["args"] = [
        "import os, time\n"
        f"for i in range(int({seconds} / 0.05)):\n"
        "    print(os.getpid(), 'line', i, flush=True)\n"
        "    time.sleep(0.05)\n"
    ]
    return body


def _launcher_pod(kube: KubeServer, monkeypatch, name: str) -> str:
    """The launcher's pod, as KFP starts it: the API server knows it, and its name and uid are in its environment."""
    uid = kube.add_pod(NAMESPACE, name)
    monkeypatch.setenv("KFP_POD_NAME", name)
    monkeypatch.setenv("KFP_POD_UID", uid)
    return uid


def _start_launcher(kube: KubeServer, body: dict) -> subprocess.Popen:
    step = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, kube.url, json.dumps(body)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 60
    while (NAMESPACE, body["metadata"]["name"]) not in kube.trainjobs:
        assert time.monotonic() < deadline and step.poll() is None, step.stdout.read() if step.stdout else ""
        time.sleep(0.1)
    return step


def test_a_trainjob_whose_launcher_pod_is_gone_is_deleted_by_the_garbage_collector(kube, tmp_path, monkeypatch):
    """A launcher killed without a word (SIGKILL: OOM, a lost node) cannot delete its TrainJob; the TrainJob names
    the launcher's pod as its owner, so it goes when the pod goes (a deleted run, KFP's pod GC)."""
    uid = _launcher_pod(kube, monkeypatch, "yolov8-train-abcde-system-container-impl-1")
    step = _start_launcher(kube, _quick(tmp_path, "yolo-orphan", seconds=120))
    step.kill()
    step.wait()
    run = kube.trainjobs[(NAMESPACE, "yolo-orphan")]
    assert run.body["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": "yolov8-train-abcde-system-container-impl-1", "uid": uid}
    ]
    assert run.processes[0].poll() is None, "the node trains on: nothing deleted it"
    assert kube.delete_pod(NAMESPACE, "yolov8-train-abcde-system-container-impl-1") == ["yolo-orphan"]
    assert kube.trainjobs == {} and run.processes[0].poll() is not None


def test_a_retried_launcher_adopts_the_trainjob_of_its_killed_attempt(kube, tmp_path, monkeypatch, capsys):
    """The retry (a new pod) follows the TrainJob its first attempt created, instead of a second one training into
    the same checkpoint folder, and adds itself to its owners; nothing is left once both pods are gone."""
    first = _launcher_pod(kube, monkeypatch, "yolov8-train-abcde-system-container-impl-1")
    body = _quick(tmp_path, "yolo-adopt", seconds=3)
    step = _start_launcher(kube, body)
    step.kill()
    step.wait()
    second = _launcher_pod(kube, monkeypatch, "yolov8-train-abcde-system-container-impl-2")
    run_trainjob(body, namespace=NAMESPACE, api_client=kube.api_client(), timeout=120, poll=0.2)
    out = capsys.readouterr().out
    assert f"TrainJob {NAMESPACE}/yolo-adopt was created by an earlier attempt of this step; following it." in out
    assert len(kube.trainjobs) == 1 and kube.deleted == []
    run = kube.trainjobs[(NAMESPACE, "yolo-adopt")]
    assert [o["uid"] for o in run.body["metadata"]["ownerReferences"]] == [first, second]
    assert kube.delete_pod(NAMESPACE, "yolov8-train-abcde-system-container-impl-1") == []
    assert kube.delete_pod(NAMESPACE, "yolov8-train-abcde-system-container-impl-2") == ["yolo-adopt"]


def test_a_retried_launcher_starts_a_failed_trainjob_again(kube, tmp_path, monkeypatch, capsys):
    kube.restart_backoff = 0.01  # the kubelet's 10 s, 20 s...: the same restarts, sooner
    body = _quick(tmp_path, "yolo-again", seconds=0.2)
    failing = json.loads(json.dumps(body))
    failing["spec"]["trainer"]["args"] = ["raise SystemExit(3)"]
    with pytest.raises(TrainingError, match="failed \\(FailedJobs\\): node 0 failed"):
        run_trainjob(failing, namespace=NAMESPACE, api_client=kube.api_client(), timeout=60, poll=0.2)
    run_trainjob(body, namespace=NAMESPACE, api_client=kube.api_client(), timeout=60, poll=0.2)
    assert (
        f"TrainJob {NAMESPACE}/yolo-again of an earlier attempt failed; starting it again." in capsys.readouterr().out
    )
    assert kube.deleted == ["yolo-again"] and len(kube.trainjobs) == 1


def test_trainjob_names_follow_the_run_and_the_request():
    from yolokf.training.launch import trainjob_name

    body = {"spec": {"trainer": {"args": ["-m", "yolokf.training.node", '{"epochs": 5}']}}}
    other = {"spec": {"trainer": {"args": ["-m", "yolokf.training.node", '{"epochs": 6}']}}}
    name = trainjob_name(body, "run-1")
    assert name == trainjob_name(body, "run-1") and re.fullmatch(r"yolokf-[0-9a-f]{12}", name)
    assert name != trainjob_name(body, "run-2") and name != trainjob_name(other, "run-1")


def test_the_launcher_follows_through_api_errors(kube, tmp_path):
    """A burst of 503s and a dropped connection on the watch (an apiserver restarting) are ridden out."""
    kube.fail(503, times=3, method="GET", path=r"/trainjobs$")
    kube.fail(0, times=1, method="GET", path=r"/trainjobs$")
    run_trainjob(
        _quick(tmp_path, "yolo-flaky", seconds=2),
        namespace=NAMESPACE,
        api_client=kube.api_client(),
        timeout=60,
        poll=0.2,
    )
    watched = [r.status for r in kube.requests if r.method == "GET" and r.path.endswith("/trainjobs")]
    assert watched[:4] == [503, 503, 503, 0] and watched[-1] == 200
    assert kube.deleted == [] and len(kube.trainjobs) == 1


def _followed_until_it_fails(kube: KubeServer, tmp_path: Path, name: str) -> str:
    """The launcher's one line when following a minute-long TrainJob `name` fails."""
    with pytest.raises(TrainingError) as failed:
        run_trainjob(
            _quick(tmp_path, name, seconds=60), namespace=NAMESPACE, api_client=kube.api_client(), timeout=60, poll=0.2
        )
    return str(failed.value)


def test_an_api_that_stays_down_ends_the_step_and_the_trainjob(kube, tmp_path, monkeypatch):
    import yolokf.training.launch as launch

    monkeypatch.setattr(launch, "API_OUTAGE", 1.0)
    kube.fail(503, times=10_000, method="GET", path=r"/trainjobs$")
    assert _followed_until_it_fails(kube, tmp_path, "yolo-down") == (
        f"The Kubernetes API did not answer for 1 s (ApiException); deleted TrainJob {NAMESPACE}/yolo-down."
    )
    assert kube.deleted == ["yolo-down"] and kube.trainjobs == {}


def test_an_error_of_the_launcher_deletes_its_trainjob(kube, tmp_path):
    """A request refused while following (here the pods' list, 403) ends the step in one line and takes the
    TrainJob with it: nothing trains on without a launcher."""
    kube.fail(403, times=10_000, method="GET", path=r"/pods$", message="pods is forbidden")
    assert _followed_until_it_fails(kube, tmp_path, "yolo-refused") == (
        f"Following TrainJob {NAMESPACE}/yolo-refused failed: 403 pods is forbidden; deleted it."
    )
    assert kube.deleted == ["yolo-refused"] and kube.trainjobs == {}


def test_node_0s_log_is_followed_across_a_replaced_pod_and_rotated_files(kube, tmp_path, capsys):
    """The runtime's Job replaces a failed pod with one of another name, and the kubelet serves only the newest
    rotated file: the launcher prints each line once, in order, and the new pod's from its first."""
    import threading

    # About 40 lines a file (a line is ~47 bytes with its timestamp, 20 a second): each pod's log rotates while the
    # launcher polls (once a second), and lines rotated away between two polls are lost, as on a cluster.
    kube.log_max_bytes = 2000
    body = _quick(tmp_path, "yolo-replaced", seconds=3)
    replaced: list[str] = []

    def replace_node_0() -> None:
        time.sleep(1.5)
        replaced.append(kube.replace_node(kube.trainjobs[(NAMESPACE, "yolo-replaced")], 0))

    threading.Thread(target=replace_node_0, daemon=True).start()
    run_trainjob(body, namespace=NAMESPACE, api_client=kube.api_client(), timeout=60, poll=0.2)
    assert len(replaced) == 1
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if " line " in line]
    pids = list(dict.fromkeys(pid for pid, _, _ in lines))
    assert len(pids) == 2, "both pods' lines were printed"
    for pid in pids:
        numbers = [int(n) for p, _, n in lines if p == pid]
        assert numbers == sorted(set(numbers)), f"pod {pid}: a line printed twice or out of order"
    second = [int(n) for p, _, n in lines if p == pids[1]]
    assert second[0] < 20 and second[-1] == 59, "the new pod's log from its first poll to its end"
    assert list(tmp_path.glob("yolo-replaced-node-0-0-*.log.1")), "the new pod's log rotated"


def test_a_lost_node_is_restarted_by_its_job_and_the_trainjob_resumes_its_training(in_a_pod, tmp_path):
    """The runtime's Job restarts a failed node (backoffLimit 6, the batch/v1 default: torch-distributed sets none);
    torchrun meets again and the worker resumes from rank 0's last.pt, so the TrainJob, and the step, complete."""
    import threading

    kube = in_a_pod

    def lose_node_1() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if list((tmp_path / "checkpoints").glob("*/weights/last.pt")) and kube.trainjobs:
                kube.lose_node(next(iter(kube.trainjobs.values())), 1)
                return
            time.sleep(0.2)

    threading.Thread(target=lose_node_1, daemon=True).start()
    outputs = _outputs(tmp_path / "out")
    _launch(tmp_path, outputs, epochs=4)
    (run,) = kube.trainjobs.values()
    assert run.restarts >= 1 and kube.deleted == []
    weights = outputs["weights"].metadata
    assert weights["epochs_done"] == 4


def test_node_pods_carry_the_runtime_patch_the_trainjob_sends(kube, tmp_path):
    """The runtime applies the TrainJob's runtime patch to the node pods it starts: what the step's pod settings
    compile to (the PVC mounts, /dev/shm, tolerations, node selector) is what a node pod gets."""
    from kubernetes import client

    from yolokf.pipeline.step_options import parse_toleration

    options = StepOptions(
        nodes=2,
        gpus=0,
        checkpoint_pvc="ckpt",
        shm_size="2Gi",
        tolerations=(parse_toleration("nvidia.com/gpu=present:NoSchedule"),),
        node_selector=(("pool", "gpu"),),
    )
    config = TrainConfig(**{**TINY, "data": "pvc://datasets/shapes/data.yaml"}, epochs=1)  # mounts the PVC
    job = plan_job(config, options, image="local")
    body = prepare_trainjob(
        trainjob_dict(build_trainjob(job)), job.config, Attempt(str(tmp_path), "run"), name="yolo-pods"
    )
    body["spec"]["trainer"]["command"], body["spec"]["trainer"]["args"] = ["sleep", "30"], []
    client.CustomObjectsApi(kube.api_client()).create_namespaced_custom_object(
        "trainer.kubeflow.org", "v1alpha1", NAMESPACE, "trainjobs", body
    )
    pods = (
        client.CoreV1Api(kube.api_client())
        .list_namespaced_pod(NAMESPACE, label_selector="jobset.sigs.k8s.io/jobset-name=yolo-pods")
        .items
    )
    assert len(pods) == 2
    for pod in pods:
        (container,) = pod.spec.containers
        mounts = {m.mount_path: m.name for m in container.volume_mounts}
        assert mounts == {"/dev/shm": "dshm", "/mnt/yolokf/data": "data", "/mnt/yolokf/checkpoints": "checkpoints"}
        volumes = {v.name: v for v in pod.spec.volumes}
        assert volumes["dshm"].empty_dir.medium == "Memory" and volumes["dshm"].empty_dir.size_limit == "2Gi"
        assert volumes["data"].persistent_volume_claim.claim_name == "datasets"
        assert volumes["checkpoints"].persistent_volume_claim.claim_name == "ckpt"
        (toleration,) = pod.spec.tolerations
        assert (toleration.key, toleration.value, toleration.effect) == ("nvidia.com/gpu", "present", "NoSchedule")
        assert pod.spec.node_selector == {"pool": "gpu"}
