"""The loopback Kubernetes API server: its settings, bearer-token authentication, the routes, and Status errors."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from tests.loopback.base import ApiError, Handler, LoopbackServer, Request
from tests.loopback.kube.authorization import AuthorizationApi
from tests.loopback.kube.core_v1 import CoreV1Api
from tests.loopback.kube.decoding import TRUE
from tests.loopback.kube.runtime import TrainJobRun
from tests.loopback.kube.trainjobs import TrainJobsApi
from yolokf.pipeline.trainjob import RBAC_RULES

GROUP_VERSION = "/apis/trainer.kubeflow.org/v1alpha1"
PREFIX = f"{GROUP_VERSION}/namespaces/"
RUNTIMES = f"{GROUP_VERSION}/clustertrainingruntimes/"
REVIEWS = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
TRAINER = "trainer.kubeflow.org"
# What RBAC_RULES grant, one (group, resource, verb) each: a service account bound to yolokf's Role.
ALL_RIGHTS = frozenset((group, resource, verb) for group, resource, verbs in RBAC_RULES for verb in verbs)
# The PVCs the tests' TrainJobs mount (in every namespace): the checkpoint PVC shared, the dataset read by all.
PVCS = {"ckpt": ["ReadWriteMany"], "datasets": ["ReadOnlyMany"]}
# metav1.StatusReason by HTTP status, as k8s.io/apimachinery/pkg/api/errors pairs them.
REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed"}
REASONS |= {409: "AlreadyExists", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError"}
REASONS |= {503: "ServiceUnavailable", 504: "Timeout"}


class KubeServer(TrainJobsApi, CoreV1Api, AuthorizationApi, LoopbackServer):
    """Started when made; `close()` stops it and deletes every TrainJob's pods."""

    name = "kube-server"
    protocol_version = "HTTP/1.0"  # a watch streams until the connection closes
    methods = ("GET", "POST", "DELETE", "PATCH")

    def __init__(
        self,
        workdir: Path,
        token: str = "token",
        allowed: bool = True,
        granted: frozenset[tuple[str, str, str]] = ALL_RIGHTS,
        pvcs: dict[str, list[str]] | None = None,
        reviews: bool = True,
        trainer: bool = True,
        runtimes: tuple[str, ...] = ("torch-distributed",),
    ):
        """`granted`: the token's rights; `allowed=False` takes away every right on trainjobs. `pvcs`: claim name ->
        access modes (default PVCS). `reviews=False`: a cluster without the SelfSubjectAccessReview API (404).
        `trainer=False`: a cluster without Kubeflow Trainer (its API group unknown, 404). `runtimes`: the
        ClusterTrainingRuntimes installed (Trainer's manifests/overlays/runtimes install torch-distributed)."""
        super().__init__()
        self.trainer = trainer
        self.runtimes = set(runtimes)
        # Pods other than the TrainJobs' own (the launcher's), namespace and name -> uid: owners for the garbage
        # collector (`add_pod`, `delete_pod`).
        self.pods: dict[tuple[str, str], str] = {}
        self.collected: list[str] = []  # TrainJobs the garbage collector deleted
        self.workdir, self.token = workdir, token
        self.granted = granted if allowed else frozenset(r for r in granted if r[1] != "trainjobs")
        self.pvcs = PVCS if pvcs is None else pvcs
        self.serve_reviews = reviews
        self.reviews: list[dict[str, Any]] = []  # the resourceAttributes of every review received
        self.trainjobs: dict[tuple[str, str], TrainJobRun] = {}
        self.deleted: list[str] = []
        self.versions = 0  # metadata.resourceVersion, as the API server bumps it on every change
        self.start()

    def api_client(self, token: str | None = None) -> Any:
        from kubernetes import client

        configuration = client.Configuration(host=self.url)
        configuration.api_key = {"authorization": token or self.token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(configuration)

    def add_pod(self, namespace: str, name: str) -> str:
        """A pod that exists (the launcher's, as KFP starts it); its uid."""
        uid = self.pods[(namespace, name)] = str(uuid.uuid4())
        return uid

    def delete_pod(self, namespace: str, name: str) -> list[str]:
        """The pod deleted (KFP's pod GC, a deleted run, a drained node), then the garbage collector's pass; the
        TrainJobs it deleted."""
        del self.pods[(namespace, name)]
        return self.collect_garbage()

    def close(self) -> None:
        for run in self.trainjobs.values():
            self._kill(run)
        self.stop()

    def parse_query(self, query: str) -> dict[str, str]:
        """The first value of each parameter; an empty one is as good as none (Go's url.Values.Get)."""
        return {k: v[0] for k, v in parse_qs(query).items()}

    def serve(self, http: Handler, record: Request) -> None:
        body = json.loads(record.body) if record.body else None
        if http.headers.get("Authorization") != f"Bearer {self.token}":
            raise ApiError(401, "Unauthorized")
        method, path, query = record.method, record.path, record.query
        parts = path.split("/")
        if path == REVIEWS and method == "POST" and self.serve_reviews:
            return self._review(http, body)
        if path.startswith(GROUP_VERSION) and not self.trainer:
            raise ApiError(404, "the server could not find the requested resource")
        if path == GROUP_VERSION and method == "GET":
            return self._discovery(http)
        if path.startswith(RUNTIMES) and method == "GET" and len(parts) == 6:
            return self._runtime(http, parts[5])
        if path.startswith(PREFIX) and len(parts) in (7, 8) and parts[6] == "trainjobs":
            namespace, name = parts[5], parts[7] if len(parts) == 8 else None
            verb = {"GET": "get" if name else "list", "POST": "create", "DELETE": "delete", "PATCH": "patch"}[method]
            if verb == "list" and query.get("watch") in TRUE:
                verb = "watch"
            self._authorize(namespace, TRAINER, "trainjobs", verb, name or "")
            if method == "GET" and name is None:
                return self._list(http, namespace, query)
            if method == "POST" and name is None:
                return self._create(http, namespace, body, query)
            if method == "GET" and name is not None:
                return self._get(http, namespace, name)
            if method == "DELETE" and name is not None:
                return self._delete(http, namespace, name)
            if method == "PATCH" and name is not None:
                return self._patch(http, namespace, name, body, record.headers.get("content-type", ""))
        if parts[:4] == ["", "api", "v1", "namespaces"] and len(parts) >= 6 and parts[5] == "pods":
            if len(parts) == 6 and method == "GET":
                self._authorize(parts[4], "", "pods", "list")
                return self._pods(http, parts[4], query.get("labelSelector", ""))
            if len(parts) == 8 and parts[7] == "log" and method == "GET":
                self._authorize(parts[4], "", "pods/log", "get", parts[6])
                return self._log(http, parts[4], parts[6], query.get("container"), query.get("timestamps") in TRUE)
        if parts[:4] == ["", "api", "v1", "namespaces"] and len(parts) == 7 and parts[5] == "persistentvolumeclaims":
            if method == "GET":
                self._authorize(parts[4], "", "persistentvolumeclaims", "get", parts[6])
                return self._pvc(http, parts[4], parts[6])
        raise ApiError(404, f"the server could not find the requested resource ({path})")

    def _discovery(self, http: Handler) -> None:
        """The group version's APIResourceList, which discovery serves to every authenticated user (the
        system:discovery ClusterRole); trimmed to the resources yolokf reads."""
        resources = [
            {"name": "trainjobs", "singularName": "trainjob", "namespaced": True, "kind": "TrainJob"},
            {
                "name": "trainingruntimes",
                "singularName": "trainingruntime",
                "namespaced": True,
                "kind": "TrainingRuntime",
            },
            {"name": "clustertrainingruntimes", "singularName": "clustertrainingruntime", "namespaced": False},
        ]
        resources[2]["kind"] = "ClusterTrainingRuntime"
        for resource in resources:
            resource["verbs"] = ["delete", "get", "list", "patch", "create", "update", "watch"]
        http.send_json(
            200,
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": TRAINER + "/v1alpha1",
                "resources": resources,
            },
        )

    def _runtime(self, http: Handler, name: str) -> None:
        """A ClusterTrainingRuntime: cluster-scoped, so only a ClusterRole grants reading it (a Role cannot)."""
        if (TRAINER, "clustertrainingruntimes", "get") not in self.granted:
            raise ApiError(
                403,
                f'clustertrainingruntimes.{TRAINER} "{name}" is forbidden: User "system:serviceaccount:kubeflow:'
                f'pipeline-runner" cannot get resource "clustertrainingruntimes" in API group "{TRAINER}" at the '
                "cluster scope",
            )
        if name not in self.runtimes:
            raise ApiError(404, f'clustertrainingruntimes.{TRAINER} "{name}" not found')
        http.send_json(
            200,
            {"apiVersion": f"{TRAINER}/v1alpha1", "kind": "ClusterTrainingRuntime", "metadata": {"name": name}},
        )

    def error_body(self, error: ApiError) -> Any:
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
        return {**status, "message": error.message, "reason": REASONS.get(error.status, ""), "code": error.status}
