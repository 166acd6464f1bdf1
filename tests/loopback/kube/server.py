"""The loopback Kubernetes API server: its settings, bearer-token authentication, the routes, and Status errors."""

from __future__ import annotations

import json
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

PREFIX = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/"
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
        super().__init__()
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
        if path.startswith(PREFIX) and len(parts) in (7, 8) and parts[6] == "trainjobs":
            namespace, name = parts[5], parts[7] if len(parts) == 8 else None
            verb = {"GET": "get" if name else "list", "POST": "create", "DELETE": "delete"}[method]
            if verb == "list" and query.get("watch") in TRUE:
                verb = "watch"
            self._authorize(namespace, TRAINER, "trainjobs", verb, name or "")
            if method == "GET" and name is None:
                return self._list(http, namespace, query)
            if method == "POST" and name is None:
                return self._create(http, namespace, body)
            if method == "GET" and name is not None:
                return self._get(http, namespace, name)
            if method == "DELETE" and name is not None:
                return self._delete(http, namespace, name)
        if parts[:4] == ["", "api", "v1", "namespaces"] and len(parts) >= 6 and parts[5] == "pods":
            if len(parts) == 6 and method == "GET":
                self._authorize(parts[4], "", "pods", "list")
                return self._pods(http, parts[4], query.get("labelSelector", ""))
            if len(parts) == 8 and parts[7] == "log" and method == "GET":
                self._authorize(parts[4], "", "pods/log", "get", parts[6])
                return self._log(http, parts[4], parts[6], query.get("container"))
        if parts[:4] == ["", "api", "v1", "namespaces"] and len(parts) == 7 and parts[5] == "persistentvolumeclaims":
            if method == "GET":
                self._authorize(parts[4], "", "persistentvolumeclaims", "get", parts[6])
                return self._pvc(http, parts[4], parts[6])
        raise ApiError(404, f"the server could not find the requested resource ({path})")

    def error_body(self, error: ApiError) -> Any:
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
        return {**status, "message": error.message, "reason": REASONS.get(error.status, ""), "code": error.status}
