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
from yolokf.data.sources import check_nodes_data, is_remote, parse_data_uri
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


# How long the launcher keeps following through API errors (5xx, 429, dropped connections) before it gives up, deletes
# its TrainJob and fails: a control plane's upgrade or an apiserver failover takes minutes.
API_OUTAGE = 600.0
# KFP's executor pods carry their own name and uid from the downward API (kubeflow/pipelines 2.17
# backend/src/v2/compiler/argocompiler/container.go: KFP_POD_NAME, KFP_POD_UID): the TrainJob's owner.
POD_NAME_ENV, POD_UID_ENV = "KFP_POD_NAME", "KFP_POD_UID"


def owner_references() -> list[dict[str, Any]]:
    """The launcher's pod as the TrainJob's owner, so Kubernetes' garbage collector deletes the TrainJob, and its
    node pods, once the pod is gone (a deleted run, KFP's pod GC); none outside a KFP pod. No blockOwnerDeletion:
    setting it needs the right to update the pod's finalizers (OwnerReferencesPermissionEnforcement)."""
    name, uid = os.environ.get(POD_NAME_ENV, ""), os.environ.get(POD_UID_ENV, "")
    return [{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}] if name and uid else []


class _NodeLog:
    """Node 0's log, printed as it grows: each poll reads the newest node-0 pod's log with the kubelet's timestamps
    and prints the lines newer than the last one printed. Positions would break: the kubelet serves only the newest
    rotated log file (containerLogMaxSize, 10 MiB by default), a restarted container starts a new log, and a failed
    pod is replaced by one of another name (the runtime's Job retries it, backoffLimit 6)."""

    def __init__(self, core: Any, namespace: str, name: str) -> None:
        self.core, self.namespace, self.selector = core, namespace, NODE0_SELECTOR.format(name=name)
        self.last: tuple[str, int] = ("", 0)  # the newest timestamp printed, and how many lines carried it

    def print_new(self) -> None:
        from kubernetes.client.exceptions import ApiException

        pods = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector).items
        if not pods:
            return
        newest = max(pods, key=lambda pod: (pod.metadata.creation_timestamp or 0, pod.metadata.name))
        try:
            text = self.core.read_namespaced_pod_log(
                newest.metadata.name, self.namespace, container="node", timestamps=True
            )
        except ApiException as exc:
            if exc.status in (400, 404):  # not started yet, or gone
                return
            raise
        printed, (last, same) = [], self.last
        seen_at_last = 0
        for line in text.splitlines():
            stamp, _, content = line.partition(" ")
            key = _stamp_key(stamp)
            if key < last:
                continue
            if key == last:
                seen_at_last += 1
                if seen_at_last <= same:
                    continue
            printed.append(content)
            if key == self.last[0]:
                self.last = (key, self.last[1] + 1)
            else:
                self.last = (key, 1)
        if printed:
            print("\n".join(printed), flush=True)


def _stamp_key(stamp: str) -> str:
    """An RFC 3339 timestamp as the kubelet writes it (RFC3339Nano trims trailing zeros) in a form that sorts."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return f"{whole}.{fraction:0<9}"


def _api_message(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


def _transient(exc: BaseException) -> bool:
    """An API error that another request may not meet: 429, 5xx, a dropped connection or a timeout."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        return exc.status in (0, 429) or exc.status >= 500
    return isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def _create_or_adopt(custom: Any, namespace: str, body: dict[str, Any]) -> None:
    """Create the TrainJob; where an earlier attempt of this step (a launcher killed or evicted, then retried)
    created it already, follow that one and add this pod to its owners, unless it failed (then start it again)."""
    from kubernetes.client.exceptions import ApiException

    name = body["metadata"]["name"]
    mine = owner_references()
    if mine:
        body["metadata"]["ownerReferences"] = mine
    for _ in range(2):
        try:
            # Strict: an unknown field is refused, not dropped with a warning (the API server's default since 1.23).
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, field_validation="Strict")
            print(f"yolokf: created TrainJob {namespace}/{name}; node 0's log follows.", flush=True)
            return
        except ApiException as exc:
            if exc.status == 403 and "admission webhook" in _api_message(exc):
                raise TrainingError(
                    f"Kubeflow Trainer refused TrainJob {namespace}/{name}: {_api_message(exc)}. Check "
                    "--training-runtime (kubectl get clustertrainingruntimes) and the step's settings."
                ) from None
            if exc.status == 403:
                raise TrainingError(
                    f"The step's service account may not create trainjobs.{GROUP} in namespace {namespace} (403 "
                    f"Forbidden); {RBAC_ADVICE}."
                ) from None
            if exc.status != 409:
                raise TrainingError(
                    f"Creating TrainJob {namespace}/{name} failed: {exc.status} {_api_message(exc)}."
                ) from None
        existing = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        if "Failed" in _conditions(existing):
            print(f"yolokf: TrainJob {namespace}/{name} of an earlier attempt failed; starting it again.", flush=True)
            _delete(custom, namespace, name, wait=True)
            continue
        owners = existing["metadata"].get("ownerReferences") or []
        ours = [o for o in mine if o["uid"] not in {owner.get("uid") for owner in owners}]
        if ours:
            patch = {"metadata": {"ownerReferences": owners + ours}}
            custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch)
        print(
            f"yolokf: TrainJob {namespace}/{name} was created by an earlier attempt of this step; following it.",
            flush=True,
        )
        return
    raise TrainingError(f"TrainJob {namespace}/{name} could not be started again; delete it and retry.")


def run_trainjob(
    body: dict[str, Any], *, namespace: str, api_client: Any, timeout: int | None, poll: float = 5.0
) -> None:
    """Create the TrainJob `body` (or adopt the one an earlier attempt created), watch it, print node 0's log as it
    goes, and return once it is Complete.

    TrainingError with one line when the preflight refuses it (training/preflight.py: Trainer, rights, PVCs), when
    the create is refused (rights, Trainer's webhook, a field the API does not know), when it is Failed, or when it
    runs past `timeout` seconds. The TrainJob is deleted, with its pods, whenever the launcher leaves before it
    completed or failed: a timeout, a cancel (SIGTERM), an API that stays unreachable, any error of its own; and its
    owner reference to the launcher's pod lets Kubernetes delete it if the launcher dies without a word (SIGKILL).
    """
    from kubernetes import client, watch
    from kubernetes.client.exceptions import ApiException

    check_cluster(api_client, namespace, body)  # Trainer, rights and PVCs first; the create's refusals the fallback
    custom, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
    name = body["metadata"]["name"]
    _create_or_adopt(custom, namespace, body)
    deadline = time.monotonic() + timeout if timeout else None
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(_Canceled()))
    log = _NodeLog(core, namespace, name)
    window = max(1, math.ceil(poll))  # each watch ends after this; node 0's new log lines are printed between
    job: dict[str, Any] = body
    outage: float | None = None  # when the API stopped answering
    ended = False
    try:
        while True:
            try:
                for event in watch.Watch().stream(
                    custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    field_selector=f"metadata.name={name}",
                    timeout_seconds=window,
                    _request_timeout=window + 30,  # a watch whose connection hangs is given up, then started again
                ):
                    if event["type"] == "DELETED":
                        ended = True
                        raise TrainingError(f"TrainJob {namespace}/{name} was deleted before it finished.")
                    job = event["object"]
                    if _conditions(job).keys() & {"Complete", "Failed"}:
                        break
                log.print_new()
                outage = None
            except Exception as exc:
                if isinstance(exc, ApiException) and not _transient(exc):
                    raise TrainingError(
                        f"Following TrainJob {namespace}/{name} failed: {exc.status} {_api_message(exc)}; deleted it."
                    ) from None
                if not _transient(exc):
                    raise
                outage = outage or time.monotonic()
                if time.monotonic() - outage > API_OUTAGE:
                    raise TrainingError(
                        f"The Kubernetes API did not answer for {API_OUTAGE:.0f} s ({type(exc).__name__}); deleted "
                        f"TrainJob {namespace}/{name}."
                    ) from None
                time.sleep(min(poll, 5.0))
                continue
            conditions = _conditions(job)
            if "Complete" in conditions:
                ended = True
                return
            if "Failed" in conditions:
                ended = True  # kept for `kubectl describe`; a retried launcher starts it again
                failed = conditions["Failed"]
                raise TrainingError(
                    f"TrainJob {namespace}/{name} failed ({failed.get('reason', 'no reason')}): "
                    f"{failed.get('message', '')}".rstrip(": ")
                )
            if deadline is not None and time.monotonic() > deadline:
                raise TrainingError(
                    f"TrainJob {namespace}/{name} did not finish within the step's timeout ({timeout} s); deleted it."
                )
    except _Canceled:
        raise TrainingError(f"The step was canceled; deleted TrainJob {namespace}/{name}.") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not ended:
            _delete(custom, namespace, name)


def node_data(data: str, nodes: int) -> str:
    """Where each of `nodes` nodes reads `data` (this run's value): a pvc:// dataset at its mount; '' for the worker
    to resolve (a built-in dataset). A download is refused (`check_nodes_data`)."""

    check_nodes_data(data, nodes)
    if not is_remote(data):
        return ""
    return str(Path(DATA_PVC_PATH) / parse_data_uri(data).path)


def cluster_request(config: TrainConfig, attempt: Attempt, nodes: int) -> dict[str, Any]:
    """The request of a TrainJob's `nodes` nodes, as `compile` writes it and the launcher fills it with a run's
    values: the dataset at its PVC mount, and rank 0's result beside its checkpoints in the attempt's folder (its run
    key the training values' own when none is given, as in one pod)."""

    attempt = replace(attempt, run_key=attempt.run_key or default_run_key(config))
    result = str(Path(attempt.checkpoint_dir) / attempt.run_key / RESULT_FILE)
    return node_request(config, attempt, workdir=NODE_WORKDIR, data=node_data(config.data, nodes), result=result)


def prepare_trainjob(template: dict[str, Any], config: TrainConfig, attempt: Attempt, *, name: str) -> dict[str, Any]:
    """The compiled TrainJob with this run's name and training values: what the worker trains is what the run
    received (a value edited in the run form, a sweep trial's values included), its checkpoint folder keyed on
    them as in one pod, rank 0's result beside its checkpoints."""
    body = json.loads(json.dumps(template))
    body["metadata"]["name"] = name
    request = cluster_request(config, attempt, body["spec"]["trainer"]["numNodes"])
    body["spec"]["trainer"]["args"][-1] = json.dumps(request, sort_keys=True)
    return body


def _conditions(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A TrainJob's true conditions by type (Trainer v2.3 has Suspended, Complete and Failed)."""
    return {c["type"]: c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}


def _delete(custom: Any, namespace: str, name: str, *, wait: bool = False) -> None:
    """Delete the TrainJob and its pods; best effort (an API that is down cannot be asked), and with `wait` until
    the name is free again."""
    from kubernetes.client.exceptions import ApiException

    try:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Foreground")
    except ApiException as exc:
        if exc.status != 404 and not wait:
            print(f"yolokf: could not delete TrainJob {namespace}/{name}: {exc.status} {exc.reason}.", flush=True)
            return
    except Exception as exc:  # the API is unreachable: the owner reference is what is left to clean up
        print(f"yolokf: could not delete TrainJob {namespace}/{name}: {exc}.", flush=True)
        return
    for _ in range(120 if wait else 0):
        try:
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return
        time.sleep(0.5)


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


def trainjob_name(body: dict[str, Any], kfp_run: str = "") -> str:
    """One TrainJob per run and training request (its values, a sweep trial's, its round): a retried launcher (a
    new pod) finds the one its earlier attempt created and follows it, rather than starting a second one on the
    same checkpoint folder. Outside a KFP run (no run id) one per pod."""
    identity = kfp_run or os.environ.get("HOSTNAME") or socket.gethostname()
    request = body["spec"]["trainer"]["args"][-1]
    digest = hashlib.sha256("\n".join((identity, request)).encode()).hexdigest()
    return f"yolokf-{digest[:12]}"


def launch_step(*, nodes: int, dataset: Any = None, trainjob: dict[str, Any] | None = None, **inputs: Any) -> None:
    """Entry point of the pipeline's training component across nodes (`training_step` has the other inputs).

    With `trainjob` (compiled for a cluster) it creates that TrainJob with this run's values and follows it;
    without, it starts the nodes on this machine.
    """

    def across_nodes(config: TrainConfig, workdir: Path, attempt: Attempt) -> TrainResult:
        check_nodes_data(config.data, nodes)  # the cluster's rule on this machine too (and before a TrainJob)
        if not trainjob:
            return run_local_nodes(config, nodes, workdir, attempt, data=step_data(config.data, dataset, workdir))
        namespace, api_client = cluster_connection()
        body = prepare_trainjob(trainjob, config, attempt, name="")
        body["metadata"]["name"] = trainjob_name(body, inputs.get("kfp_run", ""))
        done = Path(json.loads(body["spec"]["trainer"]["args"][-1])["result"])
        done.unlink(missing_ok=True)  # an earlier attempt's (a retry, a sweep's earlier round) is not this one's
        run_trainjob(
            body, namespace=namespace, api_client=api_client, timeout=body["spec"].get("activeDeadlineSeconds")
        )
        if not done.is_file():
            raise TrainingError(f"TrainJob {body['metadata']['name']} completed without rank 0's result {done}.")
        return result_from_json(json.loads(done.read_text()))

    training_step(across_nodes, **inputs)
