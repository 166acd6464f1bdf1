"""A strict loopback Kubernetes API server for Kubeflow Trainer's `trainjobs` (issue 19), driven by the official
`kubernetes` client in tests.

It speaks the paths and Status objects of the real API server for what the launcher step uses: create, get and
delete of `trainjobs.trainer.kubeflow.org/v1alpha1` (bodies checked key by key against kubeflow-trainer-api's
models, as a server with strict field validation does: an unknown field is a 400; a `PET_*` variable in
`spec.trainer.env` is refused as Trainer's webhook refuses it), listing pods by label selector and reading a pod's
log, reading a PersistentVolumeClaim, and `SelfSubjectAccessReview`s (bodies checked against the official client's
`V1SelfSubjectAccessReview`). RBAC is a set of granted (group, resource, verb) rules, in every namespace: a request
outside them is answered 403 Forbidden as RBAC answers, and a review answers from them. And it runs a TrainJob as the
`torch-distributed` runtime would: `numNodes` processes of `spec.trainer.command + args`, each with the
`PET_NNODES`, `PET_NPROC_PER_NODE`, `PET_NODE_RANK`, `PET_MASTER_ADDR` and `PET_MASTER_PORT` that torchrun reads,
on the loopback address; the TrainJob's condition becomes `Complete` or `Failed` when they end.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

from yolokf.core.errors import UsageError
from yolokf.pipeline.trainjob import RBAC_RULES, check_fields
from yolokf.training.launch import free_port

PREFIX = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/"
REVIEWS = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
TRAINER = "trainer.kubeflow.org"
# What RBAC_RULES grant, one (group, resource, verb) each: a service account bound to yolokf's Role.
ALL_RIGHTS = frozenset((group, resource, verb) for group, resource, verbs in RBAC_RULES for verb in verbs)
# The PVCs the tests' TrainJobs mount (in every namespace): the checkpoint PVC shared, the dataset read by all.
PVCS = {"ckpt": ["ReadWriteMany"], "datasets": ["ReadOnlyMany"]}


def check_model(klass: str, value: Any, where: str = "") -> None:
    """UsageError naming the first key in `value` (JSON) that the official client's model `klass` (or a model inside
    it) does not define, as the API server's strict decoding refuses it."""
    from kubernetes import client

    if klass.startswith("list[") and isinstance(value, list):
        for index, item in enumerate(value):
            check_model(klass[5:-1], item, f"{where}[{index}]")
    elif klass.startswith("dict(") and isinstance(value, dict):
        for key, item in value.items():
            check_model(klass.split(", ", 1)[1][:-1], item, f"{where}.{key}")
    elif hasattr(client, klass) and hasattr(getattr(client, klass), "attribute_map"):
        model = getattr(client, klass)
        if not isinstance(value, dict):
            raise UsageError(f"{where or klass}: expected an object")
        attributes = {key: attribute for attribute, key in model.attribute_map.items()}
        for key, item in value.items():
            path = f"{where}.{key}" if where else key
            if key not in attributes:
                raise UsageError(f'unknown field "{path}"')
            check_model(model.openapi_types[attributes[key]], item, path)


TRUE = ("1", "t", "T", "true", "True", "TRUE")  # Go's strconv.ParseBool, as the API server reads watch=


@dataclass
class _Response:
    """What ApiClient.deserialize reads a body from."""

    data: str


@dataclass
class Run:
    body: dict[str, Any]
    processes: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)


class KubeServer:
    def __init__(
        self,
        workdir: Path,
        token: str = "token",
        allowed: bool = True,
        granted: frozenset[tuple[str, str, str]] = ALL_RIGHTS,
        pvcs: dict[str, list[str]] | None = None,
        reviews: bool = True,
    ):
        """`granted`: the token's rights; `allowed=False` takes away every right on trainjobs. `pvcs`: claim name ->
        access modes (default PVCS). `reviews=False`: a cluster without the SelfSubjectAccessReview API (404)."""
        self.workdir, self.token = workdir, token
        self.granted = granted if allowed else frozenset(r for r in granted if r[1] != "trainjobs")
        self.pvcs = PVCS if pvcs is None else pvcs
        self.serve_reviews = reviews
        self.reviews: list[dict[str, Any]] = []  # the resourceAttributes of every review received
        self.trainjobs: dict[tuple[str, str], Run] = {}
        self.deleted: list[str] = []
        self.versions = 0  # metadata.resourceVersion, as the API server bumps it on every change
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.handle(self, "GET")

            def do_POST(self) -> None:
                server.handle(self, "POST")

            def do_DELETE(self) -> None:
                server.handle(self, "DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def _version(self) -> str:
        self.versions += 1
        return str(self.versions)

    def api_client(self, token: str | None = None) -> Any:
        from kubernetes import client

        configuration = client.Configuration(host=self.url)
        configuration.api_key = {"authorization": token or self.token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(configuration)

    def close(self) -> None:
        for run in self.trainjobs.values():
            self._kill(run)
        self.httpd.shutdown()

    # -- HTTP --------------------------------------------------------------------------------------------------
    def handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(request.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(request.headers.get("Content-Length") or 0)
        body = json.loads(request.rfile.read(length)) if length else None
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._status(request, 401, "Unauthorized", "Unauthorized")
        parts = url.path.split("/")
        if url.path == REVIEWS and method == "POST" and self.serve_reviews:
            return self._review(request, body)
        if url.path.startswith(PREFIX) and len(parts) in (7, 8) and parts[6] == "trainjobs":
            namespace, name = parts[5], parts[7] if len(parts) == 8 else None
            verb = {"GET": "get" if name else "list", "POST": "create", "DELETE": "delete"}[method]
            if verb == "list" and query.get("watch") in TRUE:
                verb = "watch"
            if (TRAINER, "trainjobs", verb) not in self.granted:
                return self._forbidden(request, namespace, TRAINER, "trainjobs", verb, name)
            if method == "GET" and name is None:
                return self._list(request, namespace, query)
            if method == "POST" and name is None:
                return self._create(request, namespace, body)
            if method == "GET" and name is not None:
                return self._get(request, namespace, name)
            if method == "DELETE" and name is not None:
                return self._delete(request, namespace, name)
        if parts[:4] == ["", "api", "v1", "namespaces"] and len(parts) >= 6 and parts[5] == "pods":
            if len(parts) == 6 and method == "GET":
                if ("", "pods", "list") not in self.granted:
                    return self._forbidden(request, parts[4], "", "pods", "list")
                return self._pods(request, parts[4], query.get("labelSelector", ""))
            if len(parts) == 8 and parts[7] == "log" and method == "GET":
                if ("", "pods/log", "get") not in self.granted:
                    return self._forbidden(request, parts[4], "", "pods/log", "get", parts[6])
                return self._log(request, parts[4], parts[6], query.get("container"))
        if parts[:4] == ["", "api", "v1", "namespaces"] and len(parts) == 7 and parts[5] == "persistentvolumeclaims":
            if method == "GET":
                if ("", "persistentvolumeclaims", "get") not in self.granted:
                    return self._forbidden(request, parts[4], "", "persistentvolumeclaims", "get", parts[6])
                return self._pvc(request, parts[4], parts[6])
        return self._status(request, 404, "NotFound", f"the server could not find the requested resource ({url.path})")

    def _reply(self, request: BaseHTTPRequestHandler, code: int, payload: Any, text: bool = False) -> None:
        data = payload.encode() if text else json.dumps(payload).encode()
        request.send_response(code)
        request.send_header("Content-Type", "text/plain" if text else "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def _status(self, request: BaseHTTPRequestHandler, code: int, reason: str, message: str) -> None:
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
        self._reply(request, code, {**status, "message": message, "reason": reason, "code": code})

    def _forbidden(
        self, request: BaseHTTPRequestHandler, namespace: str, group: str, resource: str, verb: str, name: str = ""
    ) -> None:
        kind = f"{resource.split('/')[0]}.{group}" if group else resource.split("/")[0]
        self._status(
            request,
            403,
            "Forbidden",
            f'{kind}{f" {json.dumps(name)}" if name else ""} is forbidden: User "system:serviceaccount:{namespace}:'
            f'pipeline-runner" cannot {verb} resource "{resource}" in API group "{group}" in the namespace '
            f'"{namespace}"',
        )

    # -- authorization and PVCs ----------------------------------------------------------------------------------
    def _review(self, request: BaseHTTPRequestHandler, body: Any) -> None:
        """A SelfSubjectAccessReview, answered as the API server does: 201 with the review echoed and its status
        (`reason` when RBAC allows it); every token may ask (system:basic-user)."""
        from kubernetes import client

        try:
            check_model("V1SelfSubjectAccessReview", body)
            client.ApiClient().deserialize(_Response(json.dumps(body)), "V1SelfSubjectAccessReview")
        except (UsageError, ValueError) as exc:
            return self._status(request, 400, "BadRequest", f"strict decoding error: {exc}")
        if (body.get("apiVersion", "authorization.k8s.io/v1"), body.get("kind", "SelfSubjectAccessReview")) != (
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
        ):
            return self._status(request, 400, "BadRequest", "the API version in the data does not match the path")
        spec = body["spec"]
        attributes = spec.get("resourceAttributes")
        if (attributes is None) == (spec.get("nonResourceAttributes") is None):
            return self._status(
                request,
                422,
                "Invalid",
                'SelfSubjectAccessReview.authorization.k8s.io "" is invalid: spec.resourceAttributes: Invalid value: '
                '"null": exactly one of nonResourceAttributes or resourceAttributes must be specified',
            )
        status: dict[str, Any] = {"allowed": False}
        if attributes is not None:
            self.reviews.append(attributes)
            resource = attributes.get("resource", "")
            if attributes.get("subresource"):
                resource += "/" + attributes["subresource"]
            if (attributes.get("group", ""), resource, attributes.get("verb", "")) in self.granted:
                status = {"allowed": True, "reason": 'RBAC: allowed by RoleBinding "yolokf-trainjobs"'}
        self._reply(request, 201, {**body, "metadata": body.get("metadata") or {}, "status": status})

    def _pvc(self, request: BaseHTTPRequestHandler, namespace: str, name: str) -> None:
        from kubernetes import client

        modes = self.pvcs.get(name)
        if modes is None:
            return self._status(request, 404, "NotFound", f'persistentvolumeclaims "{name}" not found')
        pvc = client.V1PersistentVolumeClaim(
            api_version="v1",
            kind="PersistentVolumeClaim",
            metadata=client.V1ObjectMeta(name=name, namespace=namespace, uid=str(uuid.uuid5(uuid.NAMESPACE_DNS, name))),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=modes,
                resources=client.V1VolumeResourceRequirements(requests={"storage": "10Gi"}),
                volume_mode="Filesystem",
            ),
            status=client.V1PersistentVolumeClaimStatus(phase="Bound", access_modes=modes),
        )
        self._reply(request, 200, client.ApiClient().sanitize_for_serialization(pvc))

    # -- trainjobs -----------------------------------------------------------------------------------------------
    def _create(self, request: BaseHTTPRequestHandler, namespace: str, body: Any) -> None:
        try:
            check_fields(TrainerV1alpha1TrainJob, body)
            TrainerV1alpha1TrainJob.from_dict(body)
        except (UsageError, ValueError) as exc:
            return self._status(request, 400, "BadRequest", f"strict decoding error: {exc}")
        if (body.get("apiVersion"), body.get("kind")) != ("trainer.kubeflow.org/v1alpha1", "TrainJob"):
            return self._status(request, 400, "BadRequest", "the API version in the data does not match the path")
        trainer = body["spec"].get("trainer") or {}
        if any(e.get("name", "").startswith("PET_") for e in trainer.get("env") or []):
            return self._status(request, 422, "Invalid", "spec.trainer.env: PET_ variables are set by the runtime")
        name = body["metadata"]["name"]
        with self.lock:
            if (namespace, name) in self.trainjobs:
                return self._status(request, 409, "AlreadyExists", f'trainjobs "{name}" already exists')
            body["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), resourceVersion=self._version())
            body["status"] = {}
            run = self.trainjobs[(namespace, name)] = Run(body)
        self._start(run, trainer)
        self._reply(request, 201, body)

    def _list(self, request: BaseHTTPRequestHandler, namespace: str, query: dict[str, str]) -> None:
        """A list, or with watch=true a stream of watch events (ADDED, then MODIFIED and DELETED as they happen)
        until timeoutSeconds, one JSON object a line, as the API server sends them."""
        selector = query.get("fieldSelector", "")
        wanted = selector.removeprefix("metadata.name=") if selector.startswith("metadata.name=") else None

        def matching() -> dict[str, dict[str, Any]]:
            return {
                name: json.loads(json.dumps(run.body))
                for (ns, name), run in list(self.trainjobs.items())
                if ns == namespace and wanted in (None, name)
            }

        if query.get("watch") not in TRUE:
            items = list(matching().values())
            return self._reply(
                request,
                200,
                {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJobList", "metadata": {}, "items": items},
            )
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.end_headers()  # HTTP/1.0: the stream ends when the connection closes
        seen: dict[str, dict[str, Any]] = {}
        end = time.monotonic() + float(query.get("timeoutSeconds", "30"))
        while time.monotonic() < end:
            now = matching()
            events = [
                ("ADDED" if name not in seen else "MODIFIED", body)
                for name, body in now.items()
                if seen.get(name) != body
            ]
            events += [("DELETED", body) for name, body in seen.items() if name not in now]
            for kind, body in events:
                request.wfile.write((json.dumps({"type": kind, "object": body}) + "\n").encode())
                request.wfile.flush()
            seen = now
            time.sleep(0.1)

    def _get(self, request: BaseHTTPRequestHandler, namespace: str, name: str) -> None:
        run = self.trainjobs.get((namespace, name))
        if run is None:
            return self._status(request, 404, "NotFound", f'trainjobs.trainer.kubeflow.org "{name}" not found')
        self._reply(request, 200, run.body)

    def _delete(self, request: BaseHTTPRequestHandler, namespace: str, name: str) -> None:
        with self.lock:
            run = self.trainjobs.pop((namespace, name), None)
        if run is None:
            return self._status(request, 404, "NotFound", f'trainjobs.trainer.kubeflow.org "{name}" not found')
        self._kill(run)
        self.deleted.append(name)
        self._reply(request, 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}})

    # -- pods of a running TrainJob ------------------------------------------------------------------------------
    def _pod(self, namespace: str, name: str, index: int, run: Run) -> dict[str, Any]:
        process = run.processes[index] if index < len(run.processes) else None
        code = process.poll() if process else None
        phase = "Running" if code is None else ("Succeeded" if code == 0 else "Failed")
        labels = {"jobset.sigs.k8s.io/jobset-name": name, "batch.kubernetes.io/job-completion-index": str(index)}
        return {
            "metadata": {"name": f"{name}-node-0-{index}", "namespace": namespace, "labels": labels},
            "spec": {"containers": [{"name": "node", "image": run.body["spec"]["trainer"].get("image", "")}]},
            "status": {"phase": phase},
        }

    def _pods(self, request: BaseHTTPRequestHandler, namespace: str, selector: str) -> None:
        wanted = dict(item.split("=", 1) for item in selector.split(",") if item)
        items = [
            pod
            for (ns, name), run in list(self.trainjobs.items())
            if ns == namespace
            for index in range(len(run.processes))
            for pod in [self._pod(ns, name, index, run)]
            if all(pod["metadata"]["labels"].get(k) == v for k, v in wanted.items())
        ]
        self._reply(request, 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})

    def _log(self, request: BaseHTTPRequestHandler, namespace: str, pod: str, container: str | None) -> None:
        for (ns, name), run in list(self.trainjobs.items()):
            for index, log in enumerate(run.logs):
                if ns == namespace and pod == f"{name}-node-0-{index}":
                    if container not in (None, "node"):
                        return self._status(request, 400, "BadRequest", f"container {container} is not valid")
                    return self._reply(request, 200, log.read_text(errors="replace"), text=True)
        self._status(request, 404, "NotFound", f'pods "{pod}" not found')

    # -- the torch-distributed runtime ---------------------------------------------------------------------------
    def _start(self, run: Run, trainer: dict[str, Any]) -> None:
        nodes, procs = int(trainer.get("numNodes") or 1), int(trainer.get("numProcPerNode") or 1)
        port = free_port()
        name = run.body["metadata"]["name"]
        for rank in range(nodes):
            env = {**os.environ, **{e["name"]: e.get("value", "") for e in trainer.get("env") or []}}
            env.update(
                PET_NNODES=str(nodes),
                PET_NPROC_PER_NODE=str(procs),
                PET_NODE_RANK=str(rank),
                PET_MASTER_ADDR="127.0.0.1",
                PET_MASTER_PORT=str(port),
            )
            log = self.workdir / f"{name}-node-{rank}.log"
            with log.open("w") as out:
                process = subprocess.Popen(
                    [*trainer["command"], *trainer.get("args", [])],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            run.processes.append(process)
            run.logs.append(log)
        threading.Thread(target=self._watch, args=(run,), daemon=True).start()

    def _watch(self, run: Run) -> None:
        codes = [process.wait() for process in run.processes]
        failed = [rank for rank, code in enumerate(codes) if code != 0]
        condition = (
            {"type": "Failed", "status": "True", "reason": "FailedJobs", "message": f"node {failed[0]} failed"}
            if failed
            else {"type": "Complete", "status": "True", "reason": "JobsCompleted", "message": "TrainJob completed"}
        )
        run.body["status"] = {"conditions": [condition]}
        run.body["metadata"]["resourceVersion"] = self._version()

    @staticmethod
    def _kill(run: Run) -> None:
        """Delete a TrainJob's pods: every node's torchrun agent and the workers it started in their own sessions."""
        from yolokf.training.launch import kill_node

        for process in run.processes:
            kill_node(process.pid)
            process.wait()
