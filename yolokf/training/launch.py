"""The training step across nodes (`--nodes N`, issue 19): it starts the distributed worker on every node, waits,
and hands rank 0's weights, metrics, report and run folder to the step's outputs as the one-pod step does.

On this machine (`yolokf run --nodes N` without --host) the nodes are N `torchrun` processes rendezvousing on the
loopback address, one CPU process each (Gloo): a multi-node configuration checked on a laptop before a cluster.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from yolokf.core.errors import TrainingError
from yolokf.core.mounts import DATA_PVC_PATH
from yolokf.core.settings import TrainConfig
from yolokf.data.datasets import step_data
from yolokf.data.sources import is_remote, parse_data_uri
from yolokf.training.checkpoint import default_run_key
from yolokf.training.preflight import RBAC_ADVICE, check_cluster
from yolokf.training.result import TrainResult, result_from_json
from yolokf.training.train import Attempt, training_step

LOOPBACK = "127.0.0.1"
RESULT_FILE = "yolokf-result.json"
NODE_WORKDIR = "/tmp/yolokf-node"  # a TrainJob node's scratch folder (its run folder is on the checkpoint PVC)
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
REQUEST_FILE = "yolokf-request.json"
RESUME_ADVICE = "rerun with --retries N and --checkpoint-dir (or --checkpoint-pvc) to resume from the last epoch"


def torchrun_command(nodes: int, node_rank: int, procs: int, master: str, port: int, request: str) -> list[str]:
    """The command every node runs: torchrun starting yolokf's distributed worker with the run's request."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nodes}",
        f"--node-rank={node_rank}",
        f"--nproc-per-node={procs}",
        f"--master-addr={master}",
        f"--master-port={port}",
        "-m",
        "yolokf.training.node",
        request,
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("yolokf:") or "Error" in line]
    return (errors or lines or [""])[-1][:300]


def _pipe(stream: IO[str], log: IO[str], echo: bool) -> None:
    for line in stream:
        log.write(line)
        log.flush()
        if echo:
            print(line, end="", flush=True)


class LocalNodes:
    """N torchrun node processes on the loopback address; node 0's output is this step's log."""

    def __init__(self, nodes: int, request: Path):
        self.nodes, self.request = nodes, request
        self.logs = [request.parent / f"node-{rank}.log" for rank in range(nodes)]
        self.processes: list[subprocess.Popen[str]] = []
        self.readers: list[threading.Thread] = []

    def start(self) -> None:
        port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for rank in range(self.nodes):
            command = torchrun_command(self.nodes, rank, 1, LOOPBACK, port, str(self.request))
            # Each node in its own session: a node is lost as a whole (the test kills one), and cleaned up so.
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                start_new_session=True,
            )
            log = self.logs[rank].open("w")
            assert process.stdout is not None
            reader = threading.Thread(target=_pipe, args=(process.stdout, log, rank == 0), daemon=True)
            reader.start()
            self.readers.append(reader)
            self.processes.append(process)

    def stop(self) -> None:
        for process in self.processes:
            kill_node(process.pid)
        for process in self.processes:
            process.wait()
        for reader in self.readers:
            reader.join(timeout=10)  # node 0's last lines reach the step's log before its outputs are written

    def wait(self) -> None:
        """Return when every node succeeded; TrainingError naming the first node lost (or failed) otherwise."""
        try:
            while True:
                codes = [process.poll() for process in self.processes]
                failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
                if failed:
                    time.sleep(1)  # the others notice the lost peer; a node killed by a signal is the cause
                    rank, code = min(failed, key=lambda item: item[1] is not None and item[1] >= 0)
                    print(flush=True)  # node 0's last line may be a progress bar, cut before its newline
                    raise TrainingError(self._failure(rank, code))
                if all(code == 0 for code in codes):
                    return
                time.sleep(0.5)
        finally:
            self.stop()

    def _failure(self, rank: int, code: int | None) -> str:
        what = (
            f"was killed ({signal.Signals(-code).name})"
            if code is not None and code < 0
            else f"failed (exit {code}): {_last_line(self.logs[rank])}"
        )
        return f"Node {rank} of {self.nodes} {what}; the training stopped ({RESUME_ADVICE})."


def kill_node(pid: int) -> None:
    """Kill a node: its torchrun agent and every process under it. torchrun starts its workers in sessions of
    their own, so a signal to the agent's process group alone would leave them training (and writing checkpoints)
    after the run has failed."""
    import psutil

    try:
        agent = psutil.Process(pid)
        tree = [agent, *agent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in tree:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=10)


def node_request(config: TrainConfig, attempt: Attempt, *, workdir: str, data: str, result: str) -> dict[str, Any]:
    """What every node's worker trains (`python -m yolokf.training.node REQUEST`): the training values, the
    data path on the nodes ('' for the worker to resolve), the attempt's checkpoint folder, run key and stop epoch,
    and where rank 0 writes its result."""
    return {
        "parameters": config.parameters(),
        "workdir": workdir,
        "data": data,
        "checkpoint_dir": attempt.checkpoint_dir,
        "run_key": attempt.run_key,
        "stop_after": attempt.stop_after,
        "result": result,
    }


def run_local_nodes(config: TrainConfig, nodes: int, workdir: Path, attempt: Attempt, *, data: str) -> TrainResult:
    """Train `config` on `nodes` loopback nodes; rank 0's result."""
    result = workdir / RESULT_FILE
    request = workdir / REQUEST_FILE
    request.write_text(json.dumps(node_request(config, attempt, workdir=str(workdir), data=data, result=str(result))))
    print(f"yolokf: training on {nodes} nodes (torchrun on {LOOPBACK}, Gloo); node 0's log follows.", flush=True)
    group = LocalNodes(nodes, request)
    group.start()
    group.wait()
    if not result.exists():
        raise TrainingError(f"The nodes finished without rank 0's result; see {group.logs[0]}.")
    return result_from_json(json.loads(result.read_text()))


GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
# Trainer v2 runs a TrainJob as a JobSet of its name; node N is the pod with completion index N of job "node".
NODE0_SELECTOR = "jobset.sigs.k8s.io/jobset-name={name},batch.kubernetes.io/job-completion-index=0"


class _Canceled(BaseException):
    """SIGTERM: Kubeflow Pipelines deletes a canceled run's pods; the TrainJob goes with the step."""


def _print_node0_log(core: Any, namespace: str, name: str, printed: int) -> int:
    """Print what node 0's pod logged since the last call; the count of characters printed so far."""
    from kubernetes.client.exceptions import ApiException

    pods = core.list_namespaced_pod(namespace, label_selector=NODE0_SELECTOR.format(name=name)).items
    if len(pods) != 1:
        return printed
    try:
        text = core.read_namespaced_pod_log(pods[0].metadata.name, namespace, container="node")
    except ApiException:  # not started yet
        return printed
    if len(text) > printed:
        print(text[printed:], end="" if text.endswith("\n") else "\n", flush=True)
    return max(printed, len(text))


def run_trainjob(
    body: dict[str, Any], *, namespace: str, api_client: Any, timeout: int | None, poll: float = 5.0
) -> None:
    """Create the TrainJob `body`, watch it, print node 0's log as it goes, and return once it is Complete.

    TrainingError with one line when the preflight refuses it (training/preflight.py: rights, PVCs), when the service
    account may not create it (403), when it is Failed, or when it runs past `timeout` seconds; on a timeout or a
    cancel (SIGTERM) the TrainJob is deleted, and its pods with it.
    """
    from kubernetes import client, watch
    from kubernetes.client.exceptions import ApiException

    check_cluster(api_client, namespace, body)  # rights and PVCs first; the create's 403 below is the fallback
    custom, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
    name = body["metadata"]["name"]
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    except ApiException as exc:
        if exc.status == 403:
            raise TrainingError(
                f"The step's service account may not create trainjobs.{GROUP} in namespace {namespace} (403 "
                f"Forbidden); {RBAC_ADVICE}."
            ) from None
        raise TrainingError(f"Creating TrainJob {namespace}/{name} failed: {exc.status} {exc.reason}.") from None
    print(f"yolokf: created TrainJob {namespace}/{name}; node 0's log follows.", flush=True)
    deadline = time.monotonic() + timeout if timeout else None
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(_Canceled()))
    printed = 0
    window = max(1, math.ceil(poll))  # each watch ends after this; node 0's new log lines are printed between
    job: dict[str, Any] = body
    try:
        while True:
            for event in watch.Watch().stream(
                custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                field_selector=f"metadata.name={name}",
                timeout_seconds=window,
            ):
                if event["type"] == "DELETED":
                    raise TrainingError(f"TrainJob {namespace}/{name} was deleted before it finished.")
                job = event["object"]
                if _conditions(job).keys() & {"Complete", "Failed"}:
                    break
            printed = _print_node0_log(core, namespace, name, printed)
            conditions = _conditions(job)
            if "Complete" in conditions:
                return
            if "Failed" in conditions:
                failed = conditions["Failed"]
                raise TrainingError(
                    f"TrainJob {namespace}/{name} failed ({failed.get('reason', 'no reason')}): "
                    f"{failed.get('message', '')}".rstrip(": ")
                )
            if deadline is not None and time.monotonic() > deadline:
                _delete(custom, namespace, name)
                raise TrainingError(
                    f"TrainJob {namespace}/{name} did not finish within the step's timeout ({timeout} s); deleted it."
                )
    except _Canceled:
        _delete(custom, namespace, name)
        raise TrainingError(f"The step was canceled; deleted TrainJob {namespace}/{name}.") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def node_data(data: str) -> str:
    """Where every node reads `data` (this run's value): a pvc:// dataset at its mount; '' for the worker to
    resolve (a built-in dataset)."""

    if not is_remote(data):
        return ""
    source = parse_data_uri(data)
    if source.scheme != "pvc":
        raise TrainingError(f"--nodes: every node reads the dataset itself; {data} is not on a PVC (pvc://PVC/path).")
    return str(Path(DATA_PVC_PATH) / source.path)


def cluster_request(config: TrainConfig, attempt: Attempt) -> dict[str, Any]:
    """The request of a TrainJob's nodes, as `compile` writes it and the launcher fills it with a run's values: the
    dataset at its PVC mount, and rank 0's result beside its checkpoints in the attempt's folder (its run key the
    training values' own when none is given, as in one pod)."""

    attempt = replace(attempt, run_key=attempt.run_key or default_run_key(config))
    result = str(Path(attempt.checkpoint_dir) / attempt.run_key / RESULT_FILE)
    return node_request(config, attempt, workdir=NODE_WORKDIR, data=node_data(config.data), result=result)


def prepare_trainjob(template: dict[str, Any], config: TrainConfig, attempt: Attempt, *, name: str) -> dict[str, Any]:
    """The compiled TrainJob with this run's name and training values: what the worker trains is what the run
    received (a value edited in the run form, a sweep trial's values included), its checkpoint folder keyed on
    them as in one pod, rank 0's result beside its checkpoints."""
    body = json.loads(json.dumps(template))
    body["metadata"]["name"] = name
    body["spec"]["trainer"]["args"][-1] = json.dumps(cluster_request(config, attempt), sort_keys=True)
    return body


def _conditions(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A TrainJob's true conditions by type (Trainer v2.3 has Suspended, Complete and Failed)."""
    return {c["type"]: c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}


def _delete(custom: Any, namespace: str, name: str) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Foreground")
    except ApiException as exc:
        if exc.status != 404:
            raise


def cluster_connection() -> tuple[str, Any]:
    """The namespace and API client of the pod's service account (in a cluster), else of the kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
        namespace = Path(SERVICE_ACCOUNT_NAMESPACE).read_text().strip()
    except config.ConfigException:
        kubeconfig = os.environ.get("KUBECONFIG")  # read now: the client reads it once, at import
        config.load_kube_config(config_file=kubeconfig)
        _, context = config.list_kube_config_contexts(config_file=kubeconfig)
        namespace = context["context"].get("namespace") or "default"
    return namespace, client.ApiClient()


def trainjob_name() -> str:
    """One TrainJob per attempt of the step: named after its pod (a retry is a new pod, resuming the checkpoint)."""
    pod = os.environ.get("HOSTNAME") or socket.gethostname()
    return f"yolokf-{hashlib.sha256(pod.encode()).hexdigest()[:12]}"


def launch_step(*, nodes: int, dataset: Any = None, trainjob: dict[str, Any] | None = None, **inputs: Any) -> None:
    """Entry point of the pipeline's training component across nodes (`training_step` has the other inputs).

    With `trainjob` (compiled for a cluster) it creates that TrainJob with this run's values and follows it;
    without, it starts the nodes on this machine.
    """

    def across_nodes(config: TrainConfig, workdir: Path, attempt: Attempt) -> TrainResult:
        if not trainjob:
            return run_local_nodes(config, nodes, workdir, attempt, data=step_data(config.data, dataset, workdir))
        namespace, api_client = cluster_connection()
        body = prepare_trainjob(trainjob, config, attempt, name=trainjob_name())
        done = Path(json.loads(body["spec"]["trainer"]["args"][-1])["result"])
        done.unlink(missing_ok=True)  # an earlier attempt's (a retry, a sweep's earlier round) is not this one's
        run_trainjob(
            body, namespace=namespace, api_client=api_client, timeout=body["spec"].get("activeDeadlineSeconds")
        )
        if not done.is_file():
            raise TrainingError(f"TrainJob {body['metadata']['name']} completed without rank 0's result {done}.")
        return result_from_json(json.loads(done.read_text()))

    training_step(across_nodes, **inputs)
