"""A stateful Kubeflow Pipelines v2beta1 REST API server on loopback, for tests.

No KFP backend can run on the test machines, so this speaks the part of the API that the real
`kfp.Client` 2.17 calls (the paths and JSON of kfp_server_api's generated client): healthz,
experiments, pipeline upload and versions, runs create/get/list/terminate. Responses are snake_case
JSON as the real API server emits them; errors are google.rpc.Status JSON with grpc-gateway's extra
`error` field. Every pipeline spec that arrives (upload, upload_version, run create) is parsed into
kfp-pipeline-spec's `PipelineSpec` proto and checked like the real server does, and rejected with
400 otherwise.

Tests steer it per test: `outcome` decides how runs end (SUCCEEDED, FAILED with a message,
CANCELED, or hang in RUNNING), `fail()` answers the next N matching requests with an HTTP error
(or drops the connection), `token`/`cookie` make it refuse requests without them (a Dex/oauth2-proxy
front redirects to its login page), `multi_user` needs a namespace the caller may use. Every
request is recorded in `requests` for assertions.
"""

from __future__ import annotations

import contextlib
import datetime
import email.parser
import email.policy
import itertools
import json
import re
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

API = "/apis/v2beta1"

# google.rpc.Code values the API server uses.
INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, UNAUTHENTICATED = 3, 5, 6, 7, 16
CODES = {400: INVALID_ARGUMENT, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: NOT_FOUND, 409: ALREADY_EXISTS}


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Outcome:
    """How the next runs end: `state` after `polls` get_run calls, or never when hang=True."""

    state: str = "SUCCEEDED"
    polls: int = 3
    error: str | None = None
    hang: bool = False


@dataclass
class Fault:
    status: int  # HTTP status to answer, or 0 to close the connection without answering
    times: int
    method: str | None = None
    path: str | None = None  # regex searched in the request path
    message: str = "injected fault"
    after: bool = False  # status 0 only: handle the request first, then drop the answer
    delay: float = 0.0  # wait this long before answering (a stalled proxy)

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or re.search(self.path, path) is not None
        )


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: bytes
    status: int = 0

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Run:
    data: dict[str, Any]
    outcome: Outcome
    polls: int = 0
    terminate_polls: int | None = None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_pipeline_spec(doc: Any) -> pipeline_spec_pb2.PipelineSpec:
    """Parse and check a pipeline spec the way the API server does; raise ApiError(400) if invalid."""
    if isinstance(doc, dict) and "pipeline_spec" in doc:  # {pipeline_spec, platform_spec} from kfp.Client
        platform = doc.get("platform_spec") or {}
        try:
            json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
        except json_format.ParseError as exc:
            raise ApiError(400, f"Invalid input error: invalid platform spec: {exc}") from None
        doc = doc["pipeline_spec"]
    if not isinstance(doc, dict):
        raise ApiError(400, "Invalid input error: the pipeline spec is not a YAML/JSON object")
    spec = pipeline_spec_pb2.PipelineSpec()
    try:
        json_format.ParseDict(doc, spec)
    except json_format.ParseError as exc:
        raise ApiError(400, f"Invalid input error: invalid pipeline spec: {exc}") from None
    problems = []
    if not spec.schema_version:
        problems.append("schemaVersion is missing")
    if not spec.pipeline_info.name:
        problems.append("pipelineInfo.name is missing")
    if not spec.root.HasField("dag"):
        problems.append("root.dag is missing")
    executors = set(spec.deployment_spec.fields["executors"].struct_value.fields)
    for name, component in spec.components.items():
        if component.HasField("executor_label") and component.executor_label not in executors:
            problems.append(f"component {name} names executor {component.executor_label}, which is not defined")
    dags = [spec.root.dag] + [c.dag for c in spec.components.values() if c.HasField("dag")]
    for dag in dags:
        for task_name, task in dag.tasks.items():
            if task.component_ref.name not in spec.components:
                problems.append(f"task {task_name} refers to undefined component {task.component_ref.name}")
    if problems:
        raise ApiError(400, "Invalid input error: invalid pipeline spec: " + "; ".join(problems))
    return spec


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up (Ctrl-C tests, dropped connections) is not a server failure


class KfpServer:
    """The server. Use `start()`/`stop()` or the pytest fixtures in test_remote.py."""

    def __init__(
        self,
        *,
        token: str | None = None,
        cookie: str | None = None,
        multi_user: bool = False,
        namespaces: tuple[str, ...] = ("kubeflow-user",),
        tls: tuple[Path, Path] | None = None,
    ):
        self.token = token
        self.cookie = cookie
        self.multi_user = multi_user
        self.namespaces = set(namespaces)
        self.tls = tls
        self.outcome = Outcome()
        self.reject_runs: str | None = None  # accept uploads, refuse the run with this message
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        self.experiments: dict[str, dict[str, Any]] = {}
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, _Run] = {}
        self.after_get_run: Any = None  # callable(run_id, polls), called after answering a get_run
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> KfpServer:
        server = self

        class Handler(_Handler):
            kfp = server

        httpd = _HTTPServer(("127.0.0.1", 0), Handler)
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="kfp-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    # -- steering --------------------------------------------------------------------------------
    def fail(
        self,
        status: int,
        times: int = 1,
        *,
        method: str | None = None,
        path: str | None = None,
        message: str = "injected fault",
        after: bool = False,
        delay: float = 0.0,
    ) -> None:
        """Answer the next `times` matching requests with `status`.

        Status 0 drops the connection without an answer; with `after=True` the request is carried out
        first (the answer is lost on the way back, as when a proxy times out). `delay` stalls before
        answering; with status 200 the request is then served normally.
        """
        with self._lock:
            self.faults.append(Fault(status, times, method, path, message, after, delay))

    def calls(self, method: str, path_regex: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.search(path_regex, r.path)]

    # -- request handling ------------------------------------------------------------------------
    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.matches(method, path):
                    fault.times -= 1
                    return fault
        return None

    def _new_id(self) -> str:
        return str(uuid.UUID(int=next(self._ids)))

    def _namespace(self, namespace: str | None, *, required: bool = True) -> str:
        if not self.multi_user:
            return ""
        if not namespace:
            if required:
                raise ApiError(400, "Invalid input error: In multi-user mode, namespace is required")
            return ""
        if namespace not in self.namespaces:
            raise ApiError(
                403,
                f"Failed to authorize with API: PermissionDenied: User is not authorized to access "
                f"namespace {namespace}",
            )
        return namespace

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
                return self._create_experiment(json.loads(body or b"{}"))
            if method == "GET":
                namespace = self._namespace(query.get("namespace"))
                items = [e for e in self.experiments.values() if not namespace or e["namespace"] == namespace]
                return self._page(items, query, "experiments")
        if m := re.fullmatch(r"/experiments/([^/:]+)", route):
            if method == "GET":
                return self._get(self.experiments, m[1], "Experiment")
        if method == "POST" and route == "/pipelines/upload":
            return self._upload(query, body, ctype)
        if method == "POST" and route == "/pipelines/upload_version":
            return self._upload_version(query, body, ctype)
        if method == "GET" and route == "/pipelines":
            items = list(self.pipelines.values())
            if self.multi_user and query.get("namespace"):
                items = [p for p in items if p["namespace"] in ("", query["namespace"])]
            return self._page(items, query, "pipelines")
        if m := re.fullmatch(r"/pipelines/([^/]+)", route):
            if method == "GET":
                return self._get(self.pipelines, m[1], "Pipeline")
        if m := re.fullmatch(r"/pipelines/([^/]+)/versions", route):
            if method == "GET":
                self._get(self.pipelines, m[1], "Pipeline")
                items = [v for v in self.versions.values() if v["pipeline_id"] == m[1]]
                return self._page(items, query, "pipeline_versions")
        if m := re.fullmatch(r"/pipelines/([^/]+)/versions/([^/]+)", route):
            if method == "GET":
                version = self._get(self.versions, m[2], "PipelineVersion")
                if version["pipeline_id"] != m[1]:
                    raise ApiError(404, f"PipelineVersion {m[2]} not found")
                return version
        if route == "/runs":
            if method == "POST":
                return self._create_run(json.loads(body or b"{}"))
            if method == "GET":
                return self._list_runs(query)
        if m := re.fullmatch(r"/runs/([^/:]+)", route):
            if method == "GET":
                return self._get_run(m[1])
        if m := re.fullmatch(r"/runs/([^/:]+):terminate", route):
            if method == "POST":
                return self._terminate(m[1])
        raise ApiError(404, f"Not Found: {method} {path}")

    def _page(self, items: list[dict[str, Any]], query: dict[str, str], key: str) -> dict[str, Any]:
        items = [i for i in items if _filter_matches(query.get("filter"), i)]
        size = int(query.get("page_size") or 0) or len(items)
        start = int(query.get("page_token") or 0)
        page = items[start : start + size]
        out: dict[str, Any] = {"total_size": len(items)}
        if page:
            out[key] = page
        if start + size < len(items):
            out["next_page_token"] = str(start + size)
        return out

    def _get(self, table: dict[str, Any], key: str, kind: str) -> Any:
        if key not in table:
            raise ApiError(404, f"{kind} {key} not found")
        return table[key]

    def _create_experiment(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("display_name")
        if not name:
            raise ApiError(400, "Invalid input error: Experiment must have a non-empty name")
        namespace = self._namespace(body.get("namespace"))
        if any(e["display_name"] == name and e["namespace"] == namespace for e in self.experiments.values()):
            raise ApiError(409, f"Already exist error: Experiment {name} already exists")
        experiment = {
            "experiment_id": self._new_id(),
            "display_name": name,
            "description": body.get("description") or "",
            "created_at": _now(),
            "namespace": namespace,
            "storage_state": "AVAILABLE",
        }
        self.experiments[experiment["experiment_id"]] = experiment
        return experiment

    def _read_upload(self, body: bytes, ctype: str) -> dict[str, Any]:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {ctype}\r\n\r\n".encode() + body
        )
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == "uploadfile":
                docs = list(yaml.safe_load_all(part.get_content()))
                if not docs or docs[0] is None:
                    raise ApiError(400, "Invalid input error: the uploaded file is empty")
                check_pipeline_spec(docs[0])
                if len(docs) > 1:
                    check_pipeline_spec({"pipeline_spec": docs[0], "platform_spec": docs[1]})
                return docs[0]
        raise ApiError(400, "Invalid input error: Failed to read pipeline from file: no 'uploadfile' part")

    def _upload(self, query: dict[str, str], body: bytes, ctype: str) -> dict[str, Any]:
        spec = self._read_upload(body, ctype)
        name = query.get("name") or query.get("display_name") or spec["pipelineInfo"]["name"]
        namespace = self._namespace(query.get("namespace"), required=False)
        if any(p["name"] == name and p["namespace"] == namespace for p in self.pipelines.values()):
            raise ApiError(
                409,
                "Failed to create a pipeline and a pipeline version: Already exist error: Failed to create a "
                f"new pipeline. The name {name} already exists. Please specify a new name",
            )
        pipeline = {
            "pipeline_id": self._new_id(),
            "name": name,
            "display_name": query.get("display_name") or name,
            "description": query.get("description") or "",
            "created_at": _now(),
            "namespace": namespace,
        }
        self.pipelines[pipeline["pipeline_id"]] = pipeline
        self._add_version(pipeline["pipeline_id"], name, spec, query.get("description") or "")
        return pipeline

    def _upload_version(self, query: dict[str, str], body: bytes, ctype: str) -> dict[str, Any]:
        spec = self._read_upload(body, ctype)
        pipeline_id = query.get("pipelineid")
        if not pipeline_id:
            raise ApiError(400, "Invalid input error: Pipeline id is empty")
        self._get(self.pipelines, pipeline_id, "Pipeline")
        name = query.get("name") or query.get("display_name")
        if not name:
            raise ApiError(400, "Invalid input error: Pipeline version name is empty")
        if any(v["pipeline_id"] == pipeline_id and v["name"] == name for v in self.versions.values()):
            raise ApiError(409, f"Already exist error: Pipeline version {name} already exists")
        return self._add_version(pipeline_id, name, spec, query.get("description") or "")

    def _add_version(self, pipeline_id: str, name: str, spec: dict[str, Any], description: str) -> dict[str, Any]:
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": self._new_id(),
            "name": name,
            "display_name": name,
            "description": description,
            "created_at": _now(),
            "pipeline_spec": spec,
        }
        self.versions[version["pipeline_version_id"]] = version
        return version

    def _create_run(self, body: dict[str, Any]) -> dict[str, Any]:
        if not body.get("display_name"):
            raise ApiError(400, "Invalid input error: The run name is empty")
        reference = body.get("pipeline_version_reference") or {}
        if body.get("pipeline_spec") is not None:
            spec = body["pipeline_spec"]
            check_pipeline_spec(spec)
        elif reference.get("pipeline_version_id"):
            version = self._get(self.versions, reference["pipeline_version_id"], "PipelineVersion")
            spec = version["pipeline_spec"]
        else:
            raise ApiError(400, "Invalid input error: A run must have a pipeline spec or a pipeline version")
        if self.reject_runs:
            raise ApiError(400, self.reject_runs)
        experiment_id = body.get("experiment_id")
        if experiment_id:
            experiment = self._get(self.experiments, experiment_id, "Experiment")
        elif self.multi_user:
            raise ApiError(400, "Invalid input error: In multi-user mode, a run must belong to an experiment")
        else:
            experiment = next(iter(self.experiments.values()), None) or self._create_experiment(
                {"display_name": "Default"}
            )
        self._namespace(experiment["namespace"] or None, required=self.multi_user)
        spec_inner = spec.get("pipeline_spec", spec)
        run = {
            "experiment_id": experiment["experiment_id"],
            "run_id": self._new_id(),
            "display_name": body["display_name"],
            "storage_state": "AVAILABLE",
            "description": body.get("description") or "",
            "runtime_config": body.get("runtime_config") or {},
            "service_account": body.get("service_account") or "pipeline-runner",
            "created_at": _now(),
            "scheduled_at": _now(),
            "state": "PENDING",
            "state_history": [{"update_time": _now(), "state": "PENDING"}],
        }
        if body.get("pipeline_spec") is not None:
            run["pipeline_spec"] = body["pipeline_spec"]
        if reference:
            run["pipeline_version_reference"] = reference
        tasks = [t.get("taskInfo", {}).get("name", n) for n, t in spec_inner["root"]["dag"]["tasks"].items()]
        self.runs[run["run_id"]] = _Run(run, self.outcome)
        run["_tasks"] = tasks
        experiment["last_run_created_at"] = run["created_at"]
        return _public(run)

    def _list_runs(self, query: dict[str, str]) -> dict[str, Any]:
        runs = [r.data for r in self.runs.values()]
        if query.get("experiment_id"):
            runs = [r for r in runs if r["experiment_id"] == query["experiment_id"]]
        elif self.multi_user:
            namespace = self._namespace(query.get("namespace"))
            runs = [r for r in runs if self.experiments[r["experiment_id"]]["namespace"] == namespace]
        result = self._page(runs, query, "runs")
        if "runs" in result:
            result["runs"] = [_public(r) for r in result["runs"]]
        return result

    def _get_run(self, run_id: str) -> dict[str, Any]:
        if run_id not in self.runs:
            raise ApiError(404, f"Run {run_id} not found")
        run = self.runs[run_id]
        self._advance(run)
        return _public(run.data)

    def _advance(self, run: _Run) -> None:
        data, outcome = run.data, run.outcome
        final = ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED")
        if data["state"] in final:
            return
        run.polls += 1
        if run.terminate_polls is not None:
            state = "CANCELING" if run.polls - run.terminate_polls < 2 else "CANCELED"
        elif outcome.hang or run.polls < outcome.polls:
            state = "PENDING" if run.polls == 1 and not outcome.hang and outcome.polls > 1 else "RUNNING"
        else:
            state = outcome.state
        if state != data["state"]:
            data["state_history"].append({"update_time": _now(), "state": state})
        data["state"] = state
        error = None
        if state == "FAILED":
            error = {"code": 2, "message": outcome.error or "failed", "details": []}
            data["error"] = error
        if state in final:
            data["finished_at"] = _now()
        data["run_details"] = {
            "pipeline_context_id": "1",
            "pipeline_run_context_id": "2",
            "task_details": self._task_details(data, state, error),
        }

    def _task_details(self, run: dict[str, Any], state: str, error: Any) -> list[dict[str, Any]]:
        root_state = state
        details = [
            {
                "run_id": run["run_id"],
                "task_id": f"{run['run_id']}-root",
                "display_name": run["display_name"],
                "create_time": run["created_at"],
                "start_time": run["created_at"],
                "state": root_state,
                "child_tasks": [
                    {"task_id": f"{run['run_id']}-{i}", "pod_name": f"{n}-pod-{i}"} for i, n in enumerate(run["_tasks"])
                ],
            }
        ]
        for i, name in enumerate(run["_tasks"]):
            task: dict[str, Any] = {
                "run_id": run["run_id"],
                "task_id": f"{run['run_id']}-{i}",
                "display_name": name,
                "create_time": run["created_at"],
                "start_time": run["created_at"],
                "state": "PENDING" if state == "PENDING" else ("CANCELED" if state == "CANCELING" else state),
                "pod_name": f"{name}-pod-{i}",
                "parent_task_id": f"{run['run_id']}-root",
            }
            if state in ("SUCCEEDED",):
                task["end_time"] = _now()
                task["outputs"] = {"metrics": {"artifact_ids": ["101"]}, "weights": {"artifact_ids": ["102"]}}
            if error:
                task["error"] = error
            details.append(task)
        return details

    def _terminate(self, run_id: str) -> dict[str, Any]:
        run = self.runs.get(run_id)
        if run is None:
            raise ApiError(404, f"Run {run_id} not found")
        if run.data["state"] in ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"):
            raise ApiError(400, f"Invalid input error: run {run_id} has already finished")
        run.terminate_polls = run.polls
        return {}


def _public(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if not k.startswith("_")}


def _filter_matches(raw: str | None, item: dict[str, Any]) -> bool:
    """The subset of filter.proto that kfp.Client sends: EQUALS / IS_SUBSTRING on string keys."""
    if not raw:
        return True
    for predicate in json.loads(raw).get("predicates", []):
        op = predicate.get("operation") or predicate.get("op")
        key = predicate["key"]
        value = predicate.get("stringValue", predicate.get("string_value"))
        actual = item.get(key)
        if key == "name" and actual is None:
            actual = item.get("display_name")
        if op in (1, "EQUALS") and actual != value:
            return False
        if op in (2, "NOT_EQUALS") and actual == value:
            return False
        if op in (9, "IS_SUBSTRING") and (actual is None or value not in actual):
            return False
    return True


class _Handler(BaseHTTPRequestHandler):
    kfp: KfpServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        kfp = self.kfp
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        record = Request(self.command, url.path, query, headers, body)
        with kfp._lock:
            kfp.requests.append(record)
        fault = kfp._fault_for(self.command, url.path)
        if fault and fault.delay:
            time.sleep(fault.delay)
            if fault.status == 200:
                fault = None
        if fault and fault.status == 0:
            if fault.after:
                with contextlib.suppress(ApiError):
                    kfp.dispatch(self.command, url.path, query, body, self.headers.get("Content-Type", ""))
            record.status = 0
            self.close_connection = True
            self.connection.close()
            return
        if fault:
            return self._error(record, fault.status, fault.message)
        if kfp.cookie and kfp.cookie not in self.headers.get("Cookie", ""):
            # oauth2-proxy / Dex in front of Kubeflow: no session cookie means a redirect to the login page.
            record.status = 302
            self.send_response(302)
            self.send_header("Location", "/dex/auth?client_id=kubeflow-oidc-authservice&response_type=code")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if kfp.token and self.headers.get("Authorization") != f"Bearer {kfp.token}":
            return self._error(record, 401, "Unauthenticated: Request header error: there is no user identity header.")
        try:
            result = kfp.dispatch(self.command, url.path, query, body, self.headers.get("Content-Type", ""))
        except ApiError as exc:
            return self._error(record, exc.status, exc.message)
        self._send(record, 200, result)
        run_id = re.fullmatch(API + r"/runs/([^/:]+)", url.path)
        if self.command == "GET" and run_id and kfp.after_get_run:
            kfp.after_get_run(run_id[1], kfp.runs[run_id[1]].polls)

    def _error(self, record: Request, status: int, message: str) -> None:
        code = CODES.get(status, 13 if status >= 500 else 2)
        self._send(record, status, {"error": message, "code": code, "message": message, "details": []})

    def _send(self, record: Request, status: int, payload: Any) -> None:
        record.status = status
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def self_signed_cert(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for `host` (IP SAN and localhost), made with `cryptography`."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "yolokf test KFP")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path
