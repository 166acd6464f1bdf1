"""The loopback KFP server: its settings, the routes of the v2beta1 API, and what stands in front of it (a Dex or
oauth2-proxy login, a bearer token, the UI server's log route, the API server's v1alpha1 node log)."""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import re
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.loopback.base import ApiError as BaseApiError
from tests.loopback.base import Handler, LoopbackServer, Request
from tests.loopback.kfp.experiments import experiment_json
from tests.loopback.kfp.logs import PodLogsApi
from tests.loopback.kfp.outcomes import Outcome
from tests.loopback.kfp.pipelines import PipelinesApi
from tests.loopback.kfp.protojson import ApiError, emit, read_json_body, status_json
from tests.loopback.kfp.runs import RunsApi
from tests.loopback.kfp.state import Run

API = "/apis/v2beta1"


class KfpServer(RunsApi, PipelinesApi, PodLogsApi, LoopbackServer):
    """The server. Use `start()`/`stop()` or the pytest fixtures in test_remote.py."""

    name = "kfp-server"

    def __init__(
        self,
        *,
        token: str | None = None,
        cookie: str | None = None,
        multi_user: bool = False,
        namespaces: tuple[str, ...] = ("kubeflow-user",),
        tls: tuple[Path, Path] | None = None,
    ):
        super().__init__(tls=tls)
        self.token = token
        self.cookie = cookie
        self.multi_user = multi_user
        self.namespaces = set(namespaces)
        self.outcome = Outcome()
        self.reject_runs: str | None = None  # accept uploads, refuse the run with this message
        # The kubelet's containerLogMaxSize (10 MiB by default): past it a pod's log file is rotated and the API
        # serves the new one only (kubernetes pkg/kubelet/logs/container_log_manager.go); 0: never, as in most tests.
        self.log_max_bytes = 0
        self.archive_logs = True  # Argo archives each pod's log when it ends (KFP's workflow-controller config)
        self.ui_logs = True  # the UI server's /k8s/pod/logs is there (off: --host is the bare API server)
        self.api_logs = True  # the API server's /apis/v1alpha1/runs/{run}/nodes/{node}/log is there
        self.experiments: dict[str, dict[str, Any]] = {}
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, Run] = {}
        self.after_get_run: Any = None  # callable(run_id, polls), called after answering a get_run
        # The time the server stamps on what it creates; a test may set its own (timestamps are seconds).
        self.clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc)
        self._ids = itertools.count(1)
        self._listables = self._make_listables()

    def dispatch(self, method: str, path: str, query: dict[str, str], body: bytes, ctype: str) -> Any:
        with self._lock:
            return self._dispatch(method, path, query, body, ctype)

    def _dispatch(self, method: str, path: str, query: dict[str, str], body: bytes, ctype: str) -> Any:
        if not path.startswith(API + "/"):
            raise ApiError(404, "Not Found")
        route = path[len(API) :]
        if method == "GET" and route == "/healthz":
            return {"multi_user": self.multi_user, "pipeline_store": "database"}
        if route == "/experiments":
            if method == "POST":
                return experiment_json(self._create_experiment(read_json_body(body, "V2beta1Experiment")))
            if method == "GET":
                return self._list_experiments(query)
        if m := re.fullmatch(r"/experiments/([^/:]+)", route):
            if method == "GET":
                return self._get_experiment(m[1])
        if method == "POST" and route == "/pipelines/upload":
            return emit(self._upload(query, body, ctype))
        if method == "POST" and route == "/pipelines/upload_version":
            return emit(self._upload_version(query, body, ctype))
        if method == "GET" and route == "/pipelines":
            return self._list_pipelines(query)
        if m := re.fullmatch(r"/pipelines/([^/]+)", route):
            if method == "GET":
                return self._get_pipeline(m[1])
        if m := re.fullmatch(r"/pipelines/([^/]+)/versions", route):
            if method == "GET":
                return self._list_versions(m[1], query)
        if m := re.fullmatch(r"/pipelines/([^/]+)/versions/([^/]+)", route):
            if method == "GET":
                return self._get_version(m[1], m[2])
        if route == "/runs":
            if method == "POST":
                return self._create_run(read_json_body(body, "V2beta1Run"))
            if method == "GET":
                return self._list_runs(query)
        if m := re.fullmatch(r"/runs/([^/:]+)", route):
            if method == "GET":
                return self._get_run(m[1])
        if m := re.fullmatch(r"/runs/([^/:]+):terminate", route):
            if method == "POST":
                return self._terminate(m[1])
        raise ApiError(404, f"Not Found: {method} {path}")

    def serve(self, http: Handler, record: Request) -> None:
        if self.cookie and self.cookie not in http.headers.get("Cookie", ""):
            # oauth2-proxy / Dex in front of Kubeflow: no session cookie means a redirect to the login page.
            record.status = 302
            http.send_response(302)
            http.send_header("Location", "/dex/auth?client_id=kubeflow-oidc-authservice&response_type=code")
            http.send_header("Content-Length", "0")
            http.end_headers()
            return
        if self.token and http.headers.get("Authorization") != f"Bearer {self.token}":
            raise ApiError(401, "Unauthenticated: Request header error: there is no user identity header.")
        if record.method == "GET" and re.fullmatch(r"(/pipeline)?/k8s/pod/logs", record.path) and self.ui_logs:
            with self._lock:
                status, text = self.ui_pod_log(record.query)
            return http.send_text(status, text)
        node_log = re.fullmatch(r"/apis/v1alpha1/runs/([^/]+)/nodes/([^/]+)/log", record.path)
        if record.method == "GET" and node_log and self.api_logs:
            with self._lock:
                answer = self.api_node_log(node_log[1], node_log[2])
            return http.send_text(200, answer if isinstance(answer, str) else json.dumps(answer))
        if not record.path.startswith("/apis/"):  # the API server's http.ServeMux (main.go startHttpProxy)
            return http.send_text(404, "404 page not found\n")
        try:
            result = self.dispatch(record.method, record.path, record.query, record.body, _content_type(http))
        except BaseApiError:
            raise
        except Exception:  # a bug here: say so rather than drop the connection
            raise ApiError(500, f"loopback KFP server failed: {traceback.format_exc()}") from None
        http.send_json(200, result)
        run_id = re.fullmatch(API + r"/runs/([^/:]+)", record.path)
        if record.method == "GET" and run_id and self.after_get_run:
            self.after_get_run(run_id[1], self.runs[run_id[1]].polls)

    def error_body(self, error: BaseApiError) -> Any:
        return status_json(error)

    def carry_out(self, http: Handler, record: Request) -> None:
        with contextlib.suppress(BaseApiError):
            self.dispatch(record.method, record.path, record.query, record.body, _content_type(http))


def _content_type(http: Handler) -> str:
    return http.headers.get("Content-Type", "")
