"""A stateful Kubeflow Pipelines v2beta1 REST API server on loopback, for tests.

No KFP backend can run on the test machines, so this speaks the part of the API that the real
`kfp.Client` 2.17 calls (the paths and JSON of kfp_server_api's generated client): healthz,
experiments, pipeline upload and versions, runs create/get/list/terminate. It follows the API
server of kubeflow/pipelines 2.17.0 (backend/src/apiserver) where yolokf depends on it:

- Responses are proto3 JSON as its gateway emits them (common.CustomMarshaler: snake_case names,
  zero values left out, so a run in RUNTIME_STATE_UNSPECIFIED has no `state`), and timestamps are
  whole seconds; a time the server does not have yet (finished_at of a running run, end_time of a
  running task) is 1970-01-01T00:00:00Z, as server/api_converter.go writes time.Unix(0, 0).
- Errors are google.rpc.Status JSON (plus the `error` field older gateways added), with the
  message built as the server wraps its errors, e.g. "Failed to create list options: Invalid
  input error: Invalid sorting field: \"foo\" on listable type Run".
- List calls take `sort_by`, `filter`, `page_size` and `page_token` as list/list.go,
  filter/filter.go and server/list_request_util.go read them (see `_Listable`); the database is
  MySQL with a case-insensitive collation, so string comparisons ignore case.
- Request bodies are parsed as strictly as protojson with DiscardUnknown=false: unknown fields
  and values of the wrong type are answered with 400. Every pipeline spec that arrives (upload,
  upload_version, run create) is parsed into kfp-pipeline-spec's `PipelineSpec` proto and checked.

Tests steer it per test: `outcome` decides how runs go (SUCCEEDED, FAILED, CANCELED, PAUSED... after
some polls, hang in RUNNING, or a `schedule` of `Poll`s that gives the run's and each task's state
per get_run), `fail()` answers the next N matching requests with an HTTP error (or drops the
connection), `token`/`cookie` make it refuse requests without them (a Dex/oauth2-proxy front
redirects to its login page), `multi_user` needs a namespace the caller may use, `clock` sets the
time. Every request is recorded in `requests` for assertions.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime
import email.parser
import email.policy
import functools
import itertools
import json
import re
import ssl
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlsplit

import kfp_server_api
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory, timestamp_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

API = "/apis/v2beta1"

# google.rpc.Code values the API server uses.
INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, UNAUTHENTICATED = 3, 5, 6, 7, 16
CODES = {400: INVALID_ARGUMENT, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: NOT_FOUND, 409: ALREADY_EXISTS}

# backend/api/v2beta1/run.proto RuntimeState, and the states a run never leaves.
RUNTIME_STATES = (
    "RUNTIME_STATE_UNSPECIFIED",
    "PENDING",
    "RUNNING",
    "SUCCEEDED",
    "SKIPPED",
    "FAILED",
    "CANCELING",
    "CANCELED",
    "PAUSED",
)
FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED")
EPOCH = "1970-01-01T00:00:00Z"  # what the server answers for a time it does not have


class ApiError(Exception):
    """An error answer: HTTP `status`, the Status `message`, and `detail`, the google.rpc.Status the
    API server adds to `details` (util.UserError.GRPCStatus: the message without the wrapping)."""

    def __init__(self, status: int, message: str, detail: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail


def _check_state(state: str) -> None:
    if state not in RUNTIME_STATES:
        raise ValueError(f"{state!r} is not a RuntimeState; use one of {', '.join(RUNTIME_STATES)}")


def _in_dependency_order(dag: dict[str, Any]) -> list[str]:
    """The DAG's task keys, each after the tasks it depends on: the order a cluster starts them."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name not in order:
            for upstream in dag[name].get("dependentTasks", []):
                visit(upstream)
            order.append(name)

    for name in dag:
        visit(name)
    return order


@dataclass
class Poll:
    """What one get_run answers for a run on a `schedule`: the run's state, and its tasks' states.

    `tasks` maps a task's name (its taskInfo name in the pipeline spec, e.g. "fetch-dataset") to its
    state; inside a sweep's loop, "trial" names every iteration and "trial#1" the second one. Only the
    tasks named appear in run_details.task_details, as on a cluster, where a task is listed once its
    pod exists. None: every task of the pipeline is there with the run's state.

    `logs` appends text to a task's pod log as this poll is answered (a log that grows between polls);
    `gone` names tasks whose pods are deleted from then on (only an archived log remains).
    """

    state: str
    tasks: dict[str, str] | None = None
    logs: dict[str, str] = field(default_factory=dict)
    gone: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for state in [self.state, *(self.tasks or {}).values()]:
            _check_state(state)


@dataclass
class Outcome:
    """How the next runs go.

    By default a run is PENDING, then RUNNING, and in `state` from the `polls`-th get_run on (or
    RUNNING for ever when hang=True); `state` may be any RuntimeState, e.g. PAUSED or
    RUNTIME_STATE_UNSPECIFIED, which a run keeps until it is terminated. `schedule` instead lists one
    `Poll` per get_run; the last one repeats. Example, a finished download while training runs:

        Outcome(schedule=[
            Poll("RUNNING", tasks={"fetch-dataset": "RUNNING"}),
            Poll("RUNNING", tasks={"fetch-dataset": "SUCCEEDED", "train": "RUNNING"}),
            Poll("SUCCEEDED", tasks={"fetch-dataset": "SUCCEEDED", "train": "SUCCEEDED"}),
        ])

    `error` is set as the `error` of a FAILED run and of its FAILED tasks. The 2.17 API server itself
    never fills these fields for a failed workflow (server/api_converter.go toApiRun and
    toApiPipelineTaskDetail only set them when converting the stored run fails); leave it None to
    answer as it does.
    """

    state: str = "SUCCEEDED"
    polls: int = 3
    error: str | None = None
    hang: bool = False
    schedule: list[Poll] | None = None

    def __post_init__(self) -> None:
        _check_state(self.state)
        if self.schedule is not None and not self.schedule:
            raise ValueError("schedule needs at least one Poll")

    def poll(self, n: int) -> Poll:
        """What the `n`-th get_run (from 1) answers."""
        if self.schedule:
            return self.schedule[min(n, len(self.schedule)) - 1]
        if self.hang or n < self.polls:
            return Poll("PENDING" if n == 1 and not self.hang and self.polls > 1 else "RUNNING")
        return Poll(self.state)


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
class _Task:
    index: int
    state: str
    created: str
    started: str | None = None
    ended: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)


@dataclass
class _Run:
    data: dict[str, Any]
    outcome: Outcome
    polls: int = 0
    terminate_polls: int | None = None
    tasks: dict[str, _Task] = field(default_factory=dict)  # the tasks listed so far, by label
    steps: dict[str, _StepSpec] = field(default_factory=dict)  # every step the pipeline can run, by label
    workflow: str = ""  # the Argo workflow's name
    logs: dict[str, PodLog] = field(default_factory=dict)  # by label


@dataclass
class PodLog:
    """A step's pod log: `text` so far; `gone` once the pod is deleted (then only the archive has it)."""

    text: str = ""
    gone: bool = False


@dataclass(frozen=True)
class _StepSpec:
    """A container task of the pipeline as Argo runs it: its task key, its UI name, the DAGs around it."""

    key: str
    name: str
    trial: int | None
    dags: tuple[tuple[str, int | None], ...]  # enclosing DAG task keys, with the loop iteration where one is
    template: str  # the executor's Argo template (argocompiler/container.go addContainerExecutorTemplate)

    @property
    def label(self) -> str:
        return self.name if self.trial is None else f"{self.name}#{self.trial}"


def _timestamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds(timestamp: str | None) -> int:
    """A stored timestamp as the Unix seconds the database keeps (CreatedAtInSec...); 0 when unset."""
    if not timestamp:
        return 0
    moment = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ")
    return int(moment.replace(tzinfo=datetime.timezone.utc).timestamp())


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


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _check_body(value: Any, openapi_type: str, name: str = "") -> Any:
    """Reject what protojson (DiscardUnknown=false) rejects in a request body of `openapi_type`, a
    kfp_server_api model name: unknown fields and values of the wrong JSON type. The gateway answers
    those with 400 and protojson's text (here without its "(line L:C)" position). Returns the value
    with JSON names (displayName) turned into proto names (display_name), as protojson accepts both."""

    def wrong(kind: str) -> ApiError:
        return ApiError(400, f"proto: invalid value for {kind} field {name}: {json.dumps(value)}")

    if value is None or openapi_type in ("object", "ProtobufAny"):  # null leaves a field unset
        return value
    if openapi_type == "str":
        if not isinstance(value, str):
            raise wrong("string")
        return value
    if openapi_type == "int":
        if isinstance(value, bool) or not isinstance(value, int | str) or not re.fullmatch(r"-?\d+", str(value)):
            raise wrong("int32")
        return value
    if openapi_type == "bool":
        if not isinstance(value, bool):
            raise wrong("bool")
        return value
    if openapi_type == "datetime":
        if not isinstance(value, str) or not re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)", value
        ):
            raise ApiError(400, f"proto: invalid google.protobuf.Timestamp value {json.dumps(value)}")
        return value
    if m := re.fullmatch(r"list\[(.+)\]", openapi_type):
        if not isinstance(value, list):
            raise wrong("list")
        return [_check_body(item, m[1], name) for item in value]
    if m := re.fullmatch(r"dict\(str, (.+)\)", openapi_type):
        if not isinstance(value, dict):
            raise wrong("map")
        return {key: _check_body(item, m[1], name) for key, item in value.items()}
    model = getattr(kfp_server_api.models, openapi_type)
    if hasattr(model, "allowable_values"):  # an enum: a name it has, or any int32
        if isinstance(value, bool) or not (
            value in model.allowable_values or (isinstance(value, int) and -(2**31) <= value < 2**31)
        ):
            raise wrong("enum")
        return value
    if not isinstance(value, dict):
        raise ApiError(400, f"proto: unexpected token {json.dumps(value)}")
    names = {**{_camel(k): k for k in model.openapi_types}, **{k: k for k in model.openapi_types}}
    out = {}
    for key, item in value.items():
        if key not in names:
            raise ApiError(400, f"proto: unknown field {json.dumps(key)}")
        out[names[key]] = _check_body(item, model.openapi_types[names[key]], names[key])
    return out


def _read_json_body(body: bytes, openapi_type: str) -> dict[str, Any]:
    try:
        doc = json.loads(body or b"{}")
    except ValueError as exc:
        raise ApiError(400, f"proto: syntax error: {exc}") from None
    return _check_body(doc, openapi_type)


class _InvalidInput(Exception):
    """util.UserError with InvalidArgument: `internal` is what the Status message carries (after the
    caller's wrapping), `external` what its google.rpc.Status detail carries."""

    def __init__(self, internal: str, external: str):
        super().__init__(internal)
        self.internal = internal
        self.external = external


def _invalid_input(message: str) -> _InvalidInput:  # util.NewInvalidInputError
    return _InvalidInput(f"Invalid input error: {message}", message)


def _unknown_api_version(what: str, type_name: str) -> _InvalidInput:  # util.NewUnknownApiVersionError
    message = f"Error using {what} with {type_name}"
    return _InvalidInput(f"UnknownApiVersionError: {message}", message)


def _go_quote(text: str) -> str:
    """Go's %q of a string."""
    return json.dumps(text, ensure_ascii=False)


def _go_value(value: Any) -> str:
    """Go's %v of a predicate value."""
    if isinstance(value, list):
        return "[" + " ".join(str(v) for v in value) + "]"
    return str(value)


def _query_unescape(text: str) -> str:
    """Go's url.QueryUnescape: the API server decodes the (already decoded) filter once more."""
    out, i = bytearray(), 0
    raw = text.encode()
    while i < len(raw):
        c = raw[i : i + 1]
        if c == b"%":
            escape = raw[i : i + 3]
            if len(escape) < 3 or not re.fullmatch(rb"%[0-9A-Fa-f]{2}", escape):
                raise ValueError(f"invalid URL escape {_go_quote(escape.decode(errors='replace'))}")
            out += bytes([int(escape[1:], 16)])
            i += 3
            continue
        out += b" " if c == b"+" else c
        i += 1
    return out.decode(errors="replace")


OPERATIONS = {1: "EQUALS", 2: "NOT_EQUALS", 3: "GREATER_THAN", 5: "GREATER_THAN_EQUALS", 6: "LESS_THAN"}
OPERATIONS |= {7: "LESS_THAN_EQUALS", 8: "IN", 9: "IS_SUBSTRING"}


@functools.cache
def _filter_message() -> Any:
    """backend/api/v2beta1/filter.proto as a message class, so that a filter is read with proto3 JSON
    rules (proto or JSON field names, enum names or numbers, int64 as strings, RFC 3339 timestamps)."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    package = "kubeflow.pipelines.backend.api.v2beta1"
    proto = descriptor_pb2.FileDescriptorProto(
        name="backend/api/v2beta1/filter.proto",
        package=package,
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    f = descriptor_pb2.FieldDescriptorProto
    message = proto.message_type.add(name="Filter")
    message.field.add(
        name="predicates", number=1, label=f.LABEL_REPEATED, type=f.TYPE_MESSAGE, type_name=f".{package}.Predicate"
    )
    predicate = proto.message_type.add(name="Predicate")
    operation = predicate.enum_type.add(name="Operation")
    for number, name in {0: "OPERATION_UNSPECIFIED", **OPERATIONS}.items():
        operation.value.add(name=name, number=number)
    for name, number, kind in [
        ("IntValues", 1, f.TYPE_INT32),
        ("StringValues", 2, f.TYPE_STRING),
        ("LongValues", 3, f.TYPE_INT64),
    ]:
        predicate.nested_type.add(name=name).field.add(name="values", number=number, label=f.LABEL_REPEATED, type=kind)
    predicate.oneof_decl.add(name="value")
    predicate.field.add(
        name="operation",
        number=1,
        type=f.TYPE_ENUM,
        type_name=f".{package}.Predicate.Operation",
        label=f.LABEL_OPTIONAL,
    )
    predicate.field.add(name="key", number=2, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    for name, number, kind, type_name in [
        ("int_value", 3, f.TYPE_INT32, ""),
        ("long_value", 4, f.TYPE_INT64, ""),
        ("string_value", 5, f.TYPE_STRING, ""),
        ("timestamp_value", 6, f.TYPE_MESSAGE, ".google.protobuf.Timestamp"),
        ("int_values", 7, f.TYPE_MESSAGE, f".{package}.Predicate.IntValues"),
        ("long_values", 8, f.TYPE_MESSAGE, f".{package}.Predicate.LongValues"),
        ("string_values", 9, f.TYPE_MESSAGE, f".{package}.Predicate.StringValues"),
    ]:
        value = predicate.field.add(name=name, number=number, type=kind, label=f.LABEL_OPTIONAL, oneof_index=0)
        if type_name:
            value.type_name = type_name
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.Filter"))


def _protojson_error(exc: Exception) -> str:
    """protojson's wording for what Python's json_format says differently (no line:column here)."""
    text = str(exc)
    if m := re.search(r'has no field named "([^"]*)"', text):
        return f"proto: unknown field {_go_quote(m[1])}"
    if m := re.search(r"Invalid enum value (.+?) for enum type", text):
        return f"proto: invalid value for enum field operation: {_go_quote(m[1])}"
    if "multiple" in text and "oneof" in text:
        return "proto: oneof kubeflow.pipelines.backend.api.v2beta1.Predicate.value is already set"
    if m := re.search(r"Failed to parse (\w+) field: (?!.*Failed to parse)(.*?)\.?$", text):
        return f"proto: invalid value for field {m[1]}: {m[2]}"
    return f"proto: {text}"


def _parse_filter_json(text: str) -> Any:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"proto: syntax error: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"proto: syntax error: unexpected token {text.strip()[:1]}")
    try:
        return json_format.ParseDict(doc, _filter_message()())
    except json_format.ParseError as exc:
        raise ValueError(_protojson_error(exc)) from None


@dataclass(frozen=True)
class _Predicate:
    operation: str
    key: str
    value: Any  # int, str, or a list of them (a timestamp is its Unix seconds)
    value_type: str  # Go's %T of the value: int32, int64, string, []int32, []int64, []string


def _predicates(message: Any) -> list[_Predicate]:
    """filter.New: toPredicates, then parsePredicates' checkPredicate."""
    out = []
    for p in message.predicates:
        operation = OPERATIONS.get(p.operation)
        if operation is None:
            raise _unknown_api_version("Filter.Predicate.Operation", "go_client.Predicate_Operation")
        which = p.WhichOneof("value")
        if which is None:
            raise _unknown_api_version("Filter.Predicate.Value", "<nil>")
        value: Any = getattr(p, which)
        value_type = {"int_value": "int32", "long_value": "int64", "string_value": "string"}.get(which)
        if which == "timestamp_value":
            value, value_type = value.seconds, "int64"  # filter.go: TimestampValue.AsTime().Unix()
        elif value_type is None:
            value, value_type = (
                list(value.values),
                {"int_values": "[]int32", "long_values": "[]int64"}.get(which, "[]string"),
            )
        if not p.key:
            raise _invalid_input(
                f"Predicate key cannot be empty for operation {operation} and value {_go_value(value)}"
            )
        out.append(_Predicate(operation, p.key, value, value_type))
    for p in out:
        is_list = p.value_type.startswith("[]")
        if p.operation == "IN" and not is_list:
            raise _invalid_input(f"cannot use IN operator with scalar type {p.value_type}")
        if p.operation == "IS_SUBSTRING" and p.value_type != "string":
            # filter.go passes (operation, value) to "...type %T with operator %v": hence "type string".
            raise _invalid_input(f"cannot use non string value type string with operator {_go_value(p.value)}")
        if p.operation not in ("IN", "IS_SUBSTRING") and is_list:
            raise _invalid_input(f"cannot use scalar operator {p.operation} on array type {p.value_type}")
    return out


_OPERATION_ORDER = ("EQUALS", "NOT_EQUALS", "GREATER_THAN", "GREATER_THAN_EQUALS", "LESS_THAN", "LESS_THAN_EQUALS")
_OPERATION_ORDER += ("IN", "IS_SUBSTRING")


@dataclass(frozen=True)
class _Options:
    """list.Options: the sort column, its direction, the filter (by model column) and the offset."""

    sort: str
    desc: bool
    filter: tuple[tuple[str, str, Any], ...]  # (operation, model column, value), grouped as filter.go does
    page_size: int
    offset: int = 0

    def token(self, offset: int) -> str:
        doc = {"Offset": offset, "SortByFieldName": self.sort, "IsDesc": self.desc, "Filter": self.filter}
        return base64.b64encode(json.dumps(doc).encode()).decode()


@dataclass(frozen=True)
class _Listable:
    """A resource the API lists, as its backend/src/apiserver/model/<kind>.go declares it."""

    type_name: str  # the Go type, named in "Invalid sorting field" errors
    fields: dict[str, str]  # APIToModelFieldMap: the keys sort_by and filter accept, to model columns
    key: str  # JSON name of the id (the UUID column, the tie-breaker of every sort)
    columns: dict[str, Callable[[dict[str, Any]], Any]]  # model column -> its value for a stored item
    metric_sort: bool = False  # runs also sort by "metric:<name>"


def _sql_number(text: str) -> float:
    """MySQL's cast of a string to a number: its numeric prefix, else 0."""
    m = re.match(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text)
    return float(m[0]) if m else 0.0


def _collate(text: str) -> str:
    # The KFP database is MySQL with charset utf8 (backend/src/apiserver/client/sql.go), whose default
    # collation utf8_general_ci ignores case and trailing spaces.
    return text.casefold().rstrip(" ")


def _sql_compare(a: Any, b: Any) -> int:
    if isinstance(a, str) and isinstance(b, str):
        a, b = _collate(a), _collate(b)
    else:
        a = _sql_number(a) if isinstance(a, str) else a
        b = _sql_number(b) if isinstance(b, str) else b
    return (a > b) - (a < b)


def _sql_like(value: Any, pattern: str) -> bool:
    """`value LIKE pattern`: filter.go wraps IS_SUBSTRING's value in %...% without escaping it, so
    % and _ in the value are wildcards too."""
    regex, chars = "", iter(pattern)
    for c in chars:
        regex += ".*" if c == "%" else "." if c == "_" else re.escape(next(chars, "\\") if c == "\\" else c)
    return re.fullmatch(regex, str(value), re.IGNORECASE | re.DOTALL) is not None


def _matches(item_value: Any, operation: str, value: Any) -> bool:
    if operation == "IN":
        return any(_sql_compare(item_value, v) == 0 for v in value)
    if operation == "IS_SUBSTRING":
        return _sql_like(item_value, f"%{value}%")
    order = _sql_compare(item_value, value)
    return {
        "EQUALS": order == 0,
        "NOT_EQUALS": order != 0,
        "GREATER_THAN": order > 0,
        "GREATER_THAN_EQUALS": order >= 0,
        "LESS_THAN": order < 0,
        "LESS_THAN_EQUALS": order <= 0,
    }[operation]


def _sort_value(value: Any) -> Any:
    return (0, "") if value is None else (1, _collate(value)) if isinstance(value, str) else (1, value)


def _is_zero(value: Any) -> bool:
    if isinstance(value, str):
        return value in ("", "RUNTIME_STATE_UNSPECIFIED", "STORAGE_STATE_UNSPECIFIED")  # enum 0 is zero too
    return value is None or (isinstance(value, int | float | list | dict) and not value)


def _emit(message: dict[str, Any]) -> dict[str, Any]:
    """One message's fields as protojson writes them with EmitUnpopulated=false: zero values left out.
    Not recursive, as values inside a Struct (a pipeline spec, run parameters) keep their zeros."""
    return {k: v for k, v in message.items() if not k.startswith("_") and not _is_zero(v)}


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
        self.archive_logs = True  # Argo archives each pod's log when it ends (KFP's workflow-controller config)
        self.ui_logs = True  # the UI server's /k8s/pod/logs is there (off: --host is the bare API server)
        self.api_logs = True  # the API server's /apis/v1alpha1/runs/{run}/nodes/{node}/log is there
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        self.experiments: dict[str, dict[str, Any]] = {}
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, _Run] = {}
        self.after_get_run: Any = None  # callable(run_id, polls), called after answering a get_run
        # The time the server stamps on what it creates; a test may set its own (timestamps are seconds).
        self.clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc)
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._listables = self._make_listables()

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
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="kfp-server", daemon=True
        )
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

    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.matches(method, path):
                    fault.times -= 1
                    return fault
        return None

    def _new_id(self) -> str:
        return str(uuid.UUID(int=next(self._ids)))

    def _now(self) -> str:
        return _timestamp(self.clock())

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
                return _experiment_json(self._create_experiment(_read_json_body(body, "V2beta1Experiment")))
            if method == "GET":
                options = self._list_options("experiments", query)
                namespace = self._namespace(query.get("namespace"))
                items = [e for e in self.experiments.values() if not namespace or e["namespace"] == namespace]
                return self._page("experiments", items, options, _experiment_json)
        if m := re.fullmatch(r"/experiments/([^/:]+)", route):
            if method == "GET":
                return _experiment_json(self._get(self.experiments, m[1], "Experiment"))
        if method == "POST" and route == "/pipelines/upload":
            return _emit(self._upload(query, body, ctype))
        if method == "POST" and route == "/pipelines/upload_version":
            return _emit(self._upload_version(query, body, ctype))
        if method == "GET" and route == "/pipelines":
            options = self._list_options("pipelines", query)
            items = list(self.pipelines.values())
            if self.multi_user and query.get("namespace"):
                items = [p for p in items if p["namespace"] in ("", query["namespace"])]
            return self._page("pipelines", items, options, _emit)
        if m := re.fullmatch(r"/pipelines/([^/]+)", route):
            if method == "GET":
                return _emit(self._get(self.pipelines, m[1], "Pipeline"))
        if m := re.fullmatch(r"/pipelines/([^/]+)/versions", route):
            if method == "GET":
                options = self._list_options("pipeline_versions", query)
                self._get(self.pipelines, m[1], "Pipeline")
                items = [v for v in self.versions.values() if v["pipeline_id"] == m[1]]
                return self._page("pipeline_versions", items, options, _emit)
        if m := re.fullmatch(r"/pipelines/([^/]+)/versions/([^/]+)", route):
            if method == "GET":
                version = self._get(self.versions, m[2], "PipelineVersion")
                if version["pipeline_id"] != m[1]:
                    raise ApiError(404, f"PipelineVersion {m[2]} not found")
                return _emit(version)
        if route == "/runs":
            if method == "POST":
                return self._create_run(_read_json_body(body, "V2beta1Run"))
            if method == "GET":
                return self._list_runs(query)
        if m := re.fullmatch(r"/runs/([^/:]+)", route):
            if method == "GET":
                return self._get_run(m[1])
        if m := re.fullmatch(r"/runs/([^/:]+):terminate", route):
            if method == "POST":
                return self._terminate(m[1])
        raise ApiError(404, f"Not Found: {method} {path}")

    # Listing follows server/list_request_util.go validatedListOptions, list/list.go NewOptions and
    # filter/filter.go, and the fields of model/{run,experiment,pipeline,pipeline_version}.go.
    def _make_listables(self) -> dict[str, _Listable]:
        def text(key: str) -> Callable[[dict[str, Any]], Any]:
            return lambda item: item.get(key) or ""

        def seconds(key: str) -> Callable[[dict[str, Any]], Any]:
            return lambda item: _seconds(item.get(key))

        def run_namespace(run: dict[str, Any]) -> str:
            return self.experiments[run["experiment_id"]]["namespace"]

        def run_conditions(run: dict[str, Any]) -> str:
            # model/run.go RuntimeState.ToV1: the Conditions column keeps v1 (Argo phase) names.
            return {
                "PENDING": "Pending",
                "PAUSED": "Pending",
                "RUNNING": "Running",
                "SUCCEEDED": "Succeeded",
                "SKIPPED": "Skipped",
                "FAILED": "Failed",
                "CANCELED": "Failed",
                "CANCELING": "Terminating",
            }.get(run["state"], "Unknown")

        return {
            "runs": _Listable(
                "Run",
                {
                    "run_id": "UUID",
                    "id": "UUID",
                    "display_name": "DisplayName",
                    "name": "DisplayName",
                    "created_at": "CreatedAtInSec",
                    "finished_at": "FinishedAtInSec",
                    "description": "Description",
                    "scheduled_at": "ScheduledAtInSec",
                    "storage_state": "StorageState",
                    "status": "Conditions",
                    "namespace": "Namespace",
                    "experiment_id": "ExperimentUUID",
                    "state": "State",
                    "state_history": "StateHistory",
                    "runtime_details": "PipelineRuntimeManifest",
                    "recurring_run_id": "JobUUID",
                },
                "run_id",
                {
                    "UUID": text("run_id"),
                    "DisplayName": text("display_name"),
                    "CreatedAtInSec": seconds("created_at"),
                    "FinishedAtInSec": seconds("finished_at"),
                    "Description": text("description"),
                    "ScheduledAtInSec": seconds("scheduled_at"),
                    "StorageState": text("storage_state"),
                    "Conditions": run_conditions,
                    "Namespace": run_namespace,
                    "ExperimentUUID": text("experiment_id"),
                    "State": text("state"),
                    "StateHistory": lambda run: json.dumps(run.get("state_history") or []),
                    "PipelineRuntimeManifest": text("_runtime_manifest"),
                    "JobUUID": text("recurring_run_id"),
                },
                metric_sort=True,
            ),
            "experiments": _Listable(
                "Experiment",
                {
                    "id": "UUID",
                    "experiment_id": "UUID",
                    "name": "Name",
                    "display_name": "Name",
                    "created_at": "CreatedAtInSec",
                    "last_run_created_at": "LastRunCreatedAtInSec",
                    "description": "Description",
                    "namespace": "Namespace",
                    "storage_state": "StorageState",
                },
                "experiment_id",
                {
                    "UUID": text("experiment_id"),
                    "Name": text("display_name"),
                    "CreatedAtInSec": seconds("created_at"),
                    "LastRunCreatedAtInSec": seconds("last_run_created_at"),
                    "Description": text("description"),
                    "Namespace": text("namespace"),
                    "StorageState": text("storage_state"),
                },
            ),
            "pipelines": _Listable(
                "Pipeline",
                {
                    "id": "UUID",
                    "pipeline_id": "UUID",
                    "name": "Name",
                    "display_name": "DisplayName",
                    "created_at": "CreatedAtInSec",
                    "description": "Description",
                    "namespace": "Namespace",
                },
                "pipeline_id",
                {
                    "UUID": text("pipeline_id"),
                    "Name": text("name"),
                    "DisplayName": text("display_name"),
                    "CreatedAtInSec": seconds("created_at"),
                    "Description": text("description"),
                    "Namespace": text("namespace"),
                },
            ),
            "pipeline_versions": _Listable(
                "PipelineVersion",
                {
                    "id": "UUID",
                    "pipeline_version_id": "UUID",
                    "name": "Name",
                    "display_name": "DisplayName",
                    "created_at": "CreatedAtInSec",
                    "status": "Status",
                    "description": "Description",
                    "pipeline_spec": "PipelineSpec",
                },
                "pipeline_version_id",
                {
                    "UUID": text("pipeline_version_id"),
                    "Name": text("name"),
                    "DisplayName": text("display_name"),
                    "CreatedAtInSec": seconds("created_at"),
                    "Status": lambda version: "READY",
                    "Description": text("description"),
                    "PipelineSpec": lambda version: json.dumps(version.get("pipeline_spec")),
                },
            ),
        }

    def _list_options(self, kind: str, query: dict[str, str]) -> _Options:
        """Read sort_by, filter, page_size and page_token; raise ApiError(400) as the API server does."""
        page_token, sort_by, raw_filter = (query.get(k, "") for k in ("page_token", "sort_by", "filter"))
        page_size = int(query.get("page_size") or 0)
        tags: dict[str, str] = {}
        if kind in ("runs", "experiments"):  # run_server.go ListRuns, experiment_server.go ListExperiments
            wrap = "Failed to create list options"
        else:  # server/pipeline_server.go ListPipelines / ListPipelineVersions
            what = "pipelines" if kind == "pipelines" else "pipeline versions"
            try:
                raw_filter, tags = self._tag_filters(raw_filter)
            except _InvalidInput as exc:
                message = f"Failed to list {what} due to invalid tag filter in filter spec: {exc.internal}"
                raise ApiError(400, message, exc.external) from None
            wrap = (
                f"Failed to list {what} due invalid list options: pageToken: {page_token}, pageSize: {page_size}, "
                f"sortBy: {sort_by}, filter: {raw_filter}"
            )
        try:
            options = self._validated_list_options(self._listables[kind], page_token, page_size, sort_by, raw_filter)
        except _InvalidInput as exc:
            raise ApiError(400, f"{wrap}: {exc.internal}", exc.external) from None
        if tags:
            options = dataclasses.replace(
                options, filter=options.filter + tuple(("TAG", k, v) for k, v in tags.items())
            )
        return options

    def _tag_filters(self, raw: str) -> tuple[str, dict[str, str]]:
        """pipeline_server.go extractTagFiltersFromFilterSpec: "tags.<key>" EQUALS predicates."""
        if not raw:
            return raw, {}
        try:
            decoded = _query_unescape(raw)
        except ValueError as exc:
            raise _invalid_input(f"failed to decode filter spec: {exc}") from None
        try:
            message = _parse_filter_json(decoded)
        except ValueError as exc:
            raise _invalid_input(f"failed to parse filter spec: {exc}") from None
        tags, rest = {}, []
        for p in message.predicates:
            if not p.key.startswith("tags."):
                rest.append(json_format.MessageToDict(p, preserving_proto_field_name=True))
                continue
            if p.operation != 1:
                name = OPERATIONS.get(p.operation, "OPERATION_UNSPECIFIED" if not p.operation else str(p.operation))
                raise _invalid_input(
                    f"only EQUALS operation is supported for tag filtering, got {name} for key {_go_quote(p.key)}"
                )
            if p.WhichOneof("value") != "string_value":
                raise _invalid_input(f"tag filter value must be a string for key {_go_quote(p.key)}")
            tags[p.key.removeprefix("tags.")] = p.string_value
        if not tags:
            return raw, {}
        # The rest goes on as protojson writes it, query-escaped (url.QueryEscape).
        return (quote_plus(json.dumps({"predicates": rest}, separators=(",", ":"))) if rest else ""), tags

    def _validated_list_options(
        self, listable: _Listable, page_token: str, page_size: int, sort_by: str, raw_filter: str
    ) -> _Options:
        if not page_token:
            return self._new_options(listable, page_size, sort_by, raw_filter)
        try:
            doc = json.loads(base64.b64decode(page_token, validate=True))
            token = _Options(
                doc["SortByFieldName"],
                doc["IsDesc"],
                tuple(tuple(p) for p in doc["Filter"]),
                _page_size(page_size),
                int(doc["Offset"]),
            )
        except (binascii.Error, ValueError, KeyError, TypeError) as exc:  # util.NewInvalidInputErrorWithDetails
            raise _InvalidInput(f"InvalidInputError: Invalid page token: {exc}", "Invalid page token") from None
        if sort_by or raw_filter:
            fresh = self._new_options(listable, page_size, sort_by, raw_filter)
            if (fresh.sort, fresh.desc, fresh.filter) != (token.sort, token.desc, token.filter):
                raise _invalid_input(
                    "page token does not match the supplied sort by and/or filtering criteria. Either specify the "
                    "same criteria or leave the latter empty if page token is specified"
                )
        return token

    def _new_options(self, listable: _Listable, page_size: int, sort_by: str, raw_filter: str) -> _Options:
        predicates: list[_Predicate] = []
        if raw_filter:
            try:
                message = _parse_filter_json(_query_unescape(raw_filter))
            except ValueError as exc:
                raise _invalid_input(f"failed to parse valid filter from {_go_quote(raw_filter)}: {exc}") from None
            predicates = _predicates(message)
        size = _page_size(page_size)
        words = sort_by.lower().split()
        if len(words) > 2 or (len(words) == 2 and words[1] not in ("desc", "asc")):
            raise _invalid_input(
                f"Received invalid sort by format {_go_quote(sort_by)}. Supported format: "
                '"field_name", "field_name desc", or "field_name asc"'
            )
        sort = "CreatedAtInSec"  # every listable's DefaultSortField
        if words:
            if words[0] in listable.fields:
                sort = listable.fields[words[0]]
            elif listable.metric_sort and words[0].startswith("metric:"):
                sort = words[0]
            else:
                raise _invalid_input(
                    f"Invalid sorting field: {_go_quote(words[0])} on listable type {listable.type_name}"
                )
        grouped: list[tuple[str, str, Any]] = []
        for operation in _OPERATION_ORDER:
            for p in predicates:
                if p.operation != operation:
                    continue
                if p.key not in listable.fields:
                    raise _invalid_input(f"no support for filtering on unrecognized field {_go_quote(p.key)}")
                grouped.append((operation, listable.fields[p.key], p.value))
        return _Options(sort, len(words) == 2 and words[1] == "desc", tuple(grouped), size)

    def _page(
        self, kind: str, items: list[dict[str, Any]], options: _Options, render: Callable[[Any], dict[str, Any]]
    ) -> dict[str, Any]:
        listable = self._listables[kind]

        def value(item: dict[str, Any], column: str) -> Any:
            return listable.columns[column](item) if column in listable.columns else None  # metric:<name>

        def keep(item: dict[str, Any]) -> bool:
            for operation, column, expected in options.filter:
                if operation == "TAG":
                    if _sql_compare((item.get("tags") or {}).get(column, ""), expected) != 0:
                        return False
                elif not _matches(value(item, column), operation, expected):
                    return False
            return True

        items = sorted(
            (i for i in items if keep(i)),
            key=lambda i: (_sort_value(value(i, options.sort)), i[listable.key]),
            reverse=options.desc,
        )
        page = items[options.offset : options.offset + options.page_size]
        out: dict[str, Any] = {}
        if page:
            out[kind] = [render(i) for i in page]
        if items:
            out["total_size"] = len(items)
        if options.offset + options.page_size < len(items):
            out["next_page_token"] = options.token(options.offset + options.page_size)
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
            "created_at": self._now(),
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
            "created_at": self._now(),
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
            "created_at": self._now(),
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
        spec_inner = spec.get("pipeline_spec", spec)
        parameters = (body.get("runtime_config") or {}).get("parameters") or {}
        _check_run_parameters(spec_inner, parameters)
        steps = {step.label: step for step in _pipeline_steps(spec, parameters)}
        tasks = list(steps)
        named = {t for p in self.outcome.schedule or [] for t in [*(p.tasks or {}), *p.logs, *p.gone]}
        unknown = sorted(named - set(tasks) - {step.name for step in steps.values()})
        if unknown:  # a mistake in the test, said where the test sees it
            raise ApiError(500, f"loopback server: the outcome names tasks {unknown}; the pipeline has {tasks}")
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
        now = self._now()
        run = {
            "experiment_id": experiment["experiment_id"],
            "run_id": self._new_id(),
            "display_name": body["display_name"],
            "storage_state": "AVAILABLE",
            "description": body.get("description") or "",
            "runtime_config": body.get("runtime_config") or {},
            "service_account": body.get("service_account") or "pipeline-runner",
            "created_at": now,
            "scheduled_at": now,
            "state": "PENDING",
            "state_history": [{"update_time": now, "state": "PENDING"}],
        }
        if body.get("pipeline_spec") is not None:
            run["pipeline_spec"] = body["pipeline_spec"]
        if reference:
            run["pipeline_version_reference"] = reference
        workflow = re.sub(r"[^a-z0-9-]+", "-", spec_inner["pipelineInfo"]["name"].lower()).strip("-")
        workflow += "-" + format(fnv1a32(run["run_id"]), "x")[:5]  # generateName: the pipeline's name, a suffix
        self.runs[run["run_id"]] = _Run(run, self.outcome, steps=steps, workflow=workflow)
        run["_tasks"] = tasks
        experiment["last_run_created_at"] = run["created_at"]
        return _run_json(run)

    def _list_runs(self, query: dict[str, str]) -> dict[str, Any]:
        options = self._list_options("runs", query)
        runs = [r.data for r in self.runs.values()]
        if query.get("experiment_id"):
            runs = [r for r in runs if r["experiment_id"] == query["experiment_id"]]
        elif self.multi_user:
            namespace = self._namespace(query.get("namespace"))
            runs = [r for r in runs if self.experiments[r["experiment_id"]]["namespace"] == namespace]
        return self._page("runs", runs, options, _run_json)

    def _get_run(self, run_id: str) -> dict[str, Any]:
        if run_id not in self.runs:
            raise ApiError(404, f"Run {run_id} not found")
        run = self.runs[run_id]
        self._advance(run)
        return _run_json(run.data)

    def _advance(self, run: _Run) -> None:
        data, outcome = run.data, run.outcome
        if data["state"] in FINAL_STATES:
            return
        run.polls += 1
        if run.terminate_polls is not None:
            state = "CANCELING" if run.polls - run.terminate_polls < 2 else "CANCELED"
            # Tasks that ended keep their state; the others are canceled with the run.
            tasks = {n: t.state if t.state in FINAL_STATES else "CANCELED" for n, t in run.tasks.items()}
            poll = Poll(state, tasks if outcome.schedule else None)
        else:
            poll = outcome.poll(run.polls)
        state, now = poll.state, self._now()
        if state != data["state"]:
            data["state_history"].append({"update_time": now, "state": state})
        data["state"] = state
        error = {"code": 2, "message": outcome.error} if outcome.error else None
        if state == "FAILED" and error:
            data["error"] = error
        if state in FINAL_STATES:
            data["finished_at"] = now
        if poll.tasks is None:
            states = dict.fromkeys(data["_tasks"], "CANCELED" if state == "CANCELING" else state)
        else:
            states = {n: s for n in data["_tasks"] if (s := _named(poll.tasks, run.steps[n])) is not None}
        for label, step in run.steps.items():
            log = run.logs.setdefault(label, PodLog())
            log.text += _named(poll.logs, step) or ""
            log.gone = log.gone or step.label in poll.gone or step.name in poll.gone
        for name, task_state in states.items():
            task = run.tasks.setdefault(name, _Task(data["_tasks"].index(name), "", now))
            if task_state != task.state:
                task.history.append({"update_time": now, "state": task_state})
            task.state = task_state
            if task_state not in ("PENDING", "RUNTIME_STATE_UNSPECIFIED") and not task.started:
                task.started = now
            if task_state in FINAL_STATES and not task.ended:
                task.ended = now
        data["run_details"] = {
            "pipeline_context_id": "1",
            "pipeline_run_context_id": "2",
            "task_details": self._task_details(run, error),
        }

    def _task_details(self, run: _Run, error: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The run's task details as 2.17 lists them: one per Argo node (common/util/workflow.go NodeStatuses,
        server/api_converter.go toApiPipelineTaskDetail): display name, state, times and children's node IDs;
        no pod name, no parent. Every task is wrapped in a retry node, as on a default install."""
        return _ArgoNodes(run, error).details()

    def pod_name(self, run_id: str, label: str) -> str:
        """The pod Argo made for the step `label` ("train", "trial#1"): <workflow>-<template>-<fnv hash>."""
        run = self.runs[run_id]
        return f"{run.workflow}-{run.steps[label].template}-{fnv1a32(_ArgoNodes.executor_path(run, label))}"

    def node_id(self, run_id: str, label: str) -> str:
        run = self.runs[run_id]
        return f"{run.workflow}-{fnv1a32(_ArgoNodes.executor_path(run, label))}"

    def _pod(self, name: str) -> tuple[_Run, str] | None:
        """The run and step label of a pod, by pod name or node ID."""
        for run in self.runs.values():
            for label in run.tasks:
                if name in (self.pod_name(run.data["run_id"], label), self.node_id(run.data["run_id"], label)):
                    return run, label
        return None

    def _pod_namespace(self, run: _Run) -> str:
        return self.experiments[run.data["experiment_id"]]["namespace"] or "kubeflow"

    def _live_log(self, name: str, namespace: str) -> str | None:
        """What the Kubernetes API answers for the pod's log: only a pod that exists (by its pod name), has
        started, and lives in `namespace`."""
        found = self._pod(name)
        if found is None:
            return None
        run, label = found
        if name != self.pod_name(run.data["run_id"], label) or namespace != self._pod_namespace(run):
            return None
        task, log = run.tasks[label], run.logs.get(label)
        if log is None or log.gone or task.state in ("PENDING", "RUNTIME_STATE_UNSPECIFIED"):
            return None
        return log.text

    def _archived_log(self, name: str) -> str | None:
        """Argo's archived log (archiveLogs): written when the pod ends, found by node ID or pod name."""
        found = self._pod(name) if self.archive_logs else None
        if found is None:
            return None
        run, label = found
        if run.tasks[label].state not in FINAL_STATES:
            return None
        return run.logs[label].text

    def ui_pod_log(self, query: dict[str, str]) -> tuple[int, str]:
        """frontend/server/handlers/pod-logs.ts getPodLogsHandler (2.17.0, lines 81-137)."""
        if not query.get("podname"):
            return 400, "podname argument is required"
        namespace = query.get("podnamespace") or None
        if self.multi_user and not namespace:
            return 422, "podnamespace argument is required"
        if namespace and self.multi_user and namespace not in self.namespaces:
            return 403, "Access denied to namespace"
        live = self._live_log(query["podname"], namespace or "kubeflow")  # k8s-helper.ts getPodLogs
        if live is not None:
            return 200, live
        archived = self._archived_log(query["podname"])  # workflow-helper.ts getPodLogsStreamFromWorkflow
        if archived is not None:
            return 200, archived
        return 500, "Could not get main container logs: Error: Unable to find corresponding log artifact in node."

    def api_node_log(self, run_id: str, node_id: str) -> dict[str, str] | str:
        """server/run_log_server.go ReadRunLogV1 and resource_manager.go ReadLog: status 200 always (the header
        is written before reading), errors as {"error_message", "error_details"}; `follow` is ignored."""
        run = self.runs.get(run_id)
        if run is None:
            message = (
                f"BadRequestError: Failed to read logs for run {run_id} due to run fetching error: "
                f"ResourceNotFoundError: Run {run_id} not found"
            )
            return {"error_message": message, "error_details": message}
        # The pod is read in the run's namespace: "" in single-user mode, which no pod is in.
        namespace = self.experiments[run.data["experiment_id"]]["namespace"]
        live = self._live_log(node_id, namespace) if namespace else None
        if live is not None:
            return live
        archived = self._archived_log(node_id)
        if archived is not None:
            return archived
        if self.archive_logs:
            cause = (
                f"Failed to read logs from archive {node_id} due to error fetching the log file: "
                "The specified key does not exist."
            )
        else:
            cause = (
                f'Failed to read logs from pod {node_id} due to error opening log stream: pods "{node_id}" not found'
            )
        message = f"BadRequestError: Failed to read logs for run {run_id}: InternalServerError: {cause}"
        return {"error_message": message, "error_details": message}

    def _terminate(self, run_id: str) -> dict[str, Any]:
        run = self.runs.get(run_id)
        if run is None:
            raise ApiError(404, f"Run {run_id} not found")
        if run.data["state"] in FINAL_STATES:
            raise ApiError(400, f"Invalid input error: run {run_id} has already finished")
        run.terminate_polls = run.polls
        return {}


def fnv1a32(text: str) -> int:
    """Go's hash/fnv New32a, as Argo hashes node names (workflow_types.go NodeID, util/pod_name.go)."""
    value = 2166136261
    for byte in text.encode():
        value = ((value ^ byte) * 16777619) % 2**32
    return value


def _named(values: dict[str, Any], step: _StepSpec) -> Any:
    """A Poll's entry for `step`: by its label ("trial#1"), else by its name ("trial", every iteration)."""
    return values.get(step.label, values.get(step.name))


_PARAMETER_KINDS = {
    "NUMBER_DOUBLE": ((int, float), "double or integer", "number"),
    "NUMBER_INTEGER": ((int, float), "double or integer", "number"),
    "STRING": ((str,), "string", "string"),
    "BOOLEAN": ((bool,), "bool", "bool"),
    "LIST": ((list,), "list", "list"),
    "STRUCT": ((dict,), "struct", "struct"),
}


def _check_run_parameters(spec: dict[str, Any], parameters: dict[str, Any]) -> None:
    """template/v2_template.go validatePipelineJobInputs (2.17.0, lines 442-530), wrapped as CreateRun wraps it:
    a parameter the root does not define, one of the wrong type, or a required one missing is a 400."""
    defined = ((spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {}

    def invalid(message: str) -> ApiError:
        return ApiError(
            400,
            "Failed to create a new run: Failed to generate the ExecutionSpec: invalid pipeline job inputs: "
            f"Invalid input error: {message}",
            message,
        )

    for name, definition in sorted(defined.items()):
        if name not in parameters:
            if not definition.get("isOptional") and "defaultValue" not in definition:
                raise invalid(
                    f"parameter {name} is not optional, yet has neither default value nor user provided value"
                )
            continue
        kind = definition.get("parameterType", "PARAMETER_TYPE_ENUM_UNSPECIFIED")
        if kind not in _PARAMETER_KINDS:
            raise invalid(f"input parameter {name} has unspecified type")
        types, wanted, value_type = _PARAMETER_KINDS[kind]
        value = parameters[name]
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            the = "parameter value" if value_type == "number" else "input parameter"
            raise invalid(
                f"input parameter {name} requires type {wanted}, but the {the} is not of {value_type} value type"
            )
    extra = [name for name in parameters if name not in defined]
    if extra:
        raise invalid(f"parameter(s) provided are not required by pipeline: {', '.join(extra)}")


def _pipeline_steps(spec: dict[str, Any], parameters: dict[str, Any]) -> list[_StepSpec]:
    """Every container task the pipeline runs, loop iterations apart, with its executor's Argo template."""
    platform = spec.get("platform_spec") or {}
    executors = ((platform.get("platforms") or {}).get("kubernetes") or {}).get("deploymentSpec", {})
    executors = executors.get("executors") or {}
    spec = spec.get("pipeline_spec", spec)
    components = spec["components"]
    root_inputs = (spec["root"].get("inputDefinitions") or {}).get("parameters") or {}
    steps: list[_StepSpec] = []

    def count(iterator: dict[str, Any]) -> int:
        items = iterator.get("items") or {}
        if "raw" in items:
            return len(json.loads(items["raw"]))
        name = (items.get("inputParameter") or "").removeprefix("pipelinechannel--")
        value = parameters.get(name, (root_inputs.get(name) or {}).get("defaultValue"))
        return len(value) if isinstance(value, list) else 1

    def walk(dag: dict[str, Any], dags: tuple[tuple[str, int | None], ...], trial: int | None) -> None:
        for key in _in_dependency_order(dag["tasks"]):
            task = dag["tasks"][key]
            component = components[task["componentRef"]["name"]]
            if "dag" in component:
                iterator = task.get("parameterIterator")
                for i in range(count(iterator)) if iterator else [None]:
                    walk(component["dag"], (*dags, (key, i)), i if i is not None else trial)
                continue
            template = ("retry-" if task.get("retryPolicy") else "") + "system-container-impl"
            metadata = (executors.get(component.get("executorLabel", "")) or {}).get("podMetadata")
            if metadata is not None:
                annotations, labels = metadata.get("annotations") or {}, metadata.get("labels") or {}
                template = f"metadata-{len(annotations)}-{len(labels)}-{template}"
            steps.append(_StepSpec(key, (task.get("taskInfo") or {}).get("name", key), trial, dags, template))

    walk(spec["root"]["dag"], (), None)
    return steps


class _ArgoNodes:
    """The nodes of a KFP v2 workflow as argocompiler builds it (2.17.0 backend/src/v2/compiler/argocompiler:
    dag.go, container.go): entrypoint -> root-driver, root -> <task>-driver, <task> -> executor; a ParallelFor
    as <task>-iterations with one (i:i) node per iteration holding iteration-item. Every node that runs a
    template is a retry node whose one child is <name>(0): KFP's manifests give Argo templateDefaults with a
    retryStrategy (manifests/kustomize/third-party/argo/base/workflow-controller-configmap-patch.yaml).
    Node names join with "." (or add the suffix); IDs hash them."""

    def __init__(self, run: _Run, error: dict[str, Any] | None):
        self.run, self.error = run, error
        self.nodes: dict[str, dict[str, Any]] = {}

    @staticmethod
    def executor_path(run: _Run, label: str) -> str:
        step = run.steps[label]
        path = _ArgoNodes._task(f"{run.workflow}(0)", "root")
        for key, iteration in step.dags:
            if iteration is None:
                path = _ArgoNodes._task(path, key)
            else:
                path = _ArgoNodes._task(f"{path}.{key}-iterations({iteration}:{iteration})(0)", "iteration-item")
        return f"{_ArgoNodes._task(_ArgoNodes._task(path, step.key), 'executor')}"

    @staticmethod
    def _task(parent: str, key: str) -> str:
        """The node a retried DAG task `key` runs in: <parent>.<key>(0)."""
        return f"{parent}.{key}(0)"

    def _node(self, path: str, display: str, parent: str | None) -> dict[str, Any]:
        if path not in self.nodes:
            self.nodes[path] = {"display": display, "children": [], "pods": []}
            if parent is not None:
                self.nodes[parent]["children"].append(path)
        return self.nodes[path]

    def _retried(self, parent: str, path: str, display: str) -> str:
        self._node(path, display, parent)
        self._node(f"{path}(0)", f"{display}(0)", path)
        return f"{path}(0)"

    def _retried_root(self, workflow: str) -> str:
        """The entrypoint is retried too (templateDefaults apply to every template): <workflow>(0) runs it."""
        self._node(f"{workflow}(0)", f"{workflow}(0)", workflow)
        return f"{workflow}(0)"

    def _dag_task(self, parent: str, key: str) -> str:
        self._retried(parent, f"{parent}.{key}-driver", f"{key}-driver")
        return self._retried(parent, f"{parent}.{key}", key)

    def details(self) -> list[dict[str, Any]]:
        run, workflow = self.run, self.run.workflow
        self._node(workflow, workflow, None)
        entrypoint = self._retried_root(workflow)
        for label, task in sorted(run.tasks.items(), key=lambda item: (item[1].created, item[1].index)):
            step = run.steps[label]
            path = self._dag_task(entrypoint, "root")
            for key, iteration in step.dags:
                if iteration is None:
                    path = self._dag_task(path, key)
                    continue
                self._retried(path, f"{path}.{key}-driver", f"{key}-driver")
                group = f"{path}.{key}-iterations"
                self._node(group, f"{key}-iterations", path)
                item = self._retried(
                    group, f"{group}({iteration}:{iteration})", f"{key}-iterations({iteration}:{iteration})"
                )
                path = self._dag_task(item, "iteration-item")
            top = self._dag_task(path, step.key)
            pod = self._retried(top, f"{top}.executor", "executor")
            self.nodes[pod]["task"] = task
            self.nodes[top.removesuffix("(0)")]["outputs_of"] = task
        return [self._detail(path) for path in self.nodes]

    def _pods(self, path: str) -> list[_Task]:
        node = self.nodes[path]
        found = [node["task"]] if "task" in node else []
        for child in node["children"]:
            found += self._pods(child)
        return found

    def _detail(self, path: str) -> dict[str, Any]:
        run, node = self.run, self.nodes[path]
        data, workflow = run.data, run.workflow
        pods = self._pods(path)
        if path == workflow:
            state, created, started, ended = (
                data["state"],
                data["created_at"],
                data["created_at"],
                data.get("finished_at"),
            )
        elif not pods:  # a driver: it ran before its task's pod was listed
            state, created, started, ended = "SUCCEEDED", data["created_at"], data["created_at"], data["created_at"]
        else:
            states = [t.state for t in pods]
            mixed = next((s for s in ("FAILED", "RUNNING", "PENDING", "CANCELED") if s in states), "SUCCEEDED")
            state = states[0] if len(set(states)) == 1 else mixed
            created = min(t.created for t in pods)
            started = min((t.started for t in pods if t.started), default=None)
            ended = max(t.ended for t in pods) if all(t.ended for t in pods) else None
        detail: dict[str, Any] = {
            "run_id": data["run_id"],
            "task_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{data['run_id']}/{path}")),
            "display_name": node["display"],
            "create_time": created,
            "start_time": started or EPOCH,
            "end_time": ended or EPOCH,
            "state": state,
            "child_tasks": [{"pod_name": f"{workflow}-{fnv1a32(child)}"} for child in node["children"]],
        }
        if "task" in node:
            if state == "FAILED" and self.error:
                detail["error"] = self.error
        if node.get("outputs_of") is not None and node["outputs_of"].state == "SUCCEEDED":
            detail["outputs"] = {"metrics": {"artifact_ids": ["101"]}, "weights": {"artifact_ids": ["102"]}}
        return _emit(detail)


def _page_size(size: int) -> int:
    """list.go validatePageSize: 0 means 20, more than 200 means 200."""
    if size < 0:
        raise _invalid_input(f"The page size should be greater than 0. Got {size}")
    return min(size or 20, 200)


def _experiment_json(experiment: dict[str, Any]) -> dict[str, Any]:
    return _emit({**experiment, "last_run_created_at": experiment.get("last_run_created_at") or EPOCH})


def _run_json(run: dict[str, Any]) -> dict[str, Any]:
    """server/api_converter.go toApiRun."""
    out = _emit({**run, "finished_at": run.get("finished_at") or EPOCH})
    runtime_config = _emit(run.get("runtime_config") or {})
    if runtime_config:
        out["runtime_config"] = runtime_config
    else:
        out.pop("runtime_config", None)
    if "state_history" in out:
        out["state_history"] = [_emit(h) for h in out["state_history"]]
    return out


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
        if self.command == "GET" and re.fullmatch(r"(/pipeline)?/k8s/pod/logs", url.path) and kfp.ui_logs:
            with kfp._lock:
                status, text = kfp.ui_pod_log(query)
            return self._send_text(record, status, text)
        node_log = re.fullmatch(r"/apis/v1alpha1/runs/([^/]+)/nodes/([^/]+)/log", url.path)
        if self.command == "GET" and node_log and kfp.api_logs:
            with kfp._lock:
                answer = kfp.api_node_log(node_log[1], node_log[2])
            return self._send_text(record, 200, answer if isinstance(answer, str) else json.dumps(answer))
        if not url.path.startswith("/apis/"):  # the API server's http.ServeMux (main.go startHttpProxy)
            return self._send_text(record, 404, "404 page not found\n")
        try:
            result = kfp.dispatch(self.command, url.path, query, body, self.headers.get("Content-Type", ""))
        except ApiError as exc:
            return self._error(record, exc.status, exc.message, exc.detail)
        except Exception:  # a bug here: say so rather than drop the connection
            return self._error(record, 500, f"loopback KFP server failed: {traceback.format_exc()}")
        self._send(record, 200, result)
        run_id = re.fullmatch(API + r"/runs/([^/:]+)", url.path)
        if self.command == "GET" and run_id and kfp.after_get_run:
            kfp.after_get_run(run_id[1], kfp.runs[run_id[1]].polls)

    def _error(self, record: Request, status: int, message: str, detail: str | None = None) -> None:
        code = CODES.get(status, 13 if status >= 500 else 2)
        details = (
            [{"@type": "type.googleapis.com/google.rpc.Status", "code": code, "message": detail}] if detail else []
        )
        self._send(record, status, {"error": message, "code": code, "message": message, "details": details})

    def _send_text(self, record: Request, status: int, text: str) -> None:
        record.status = status
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

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
