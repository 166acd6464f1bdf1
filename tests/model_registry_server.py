"""A strict, stateful Kubeflow Model Registry REST API server on loopback, for tests.

No Model Registry can run on the test machines, so this speaks the part of its REST API that the
official client (`model-registry` 0.3.18, whose generated OpenAPI package is `mr_openapi`) calls:
registered models, model versions and model artifacts (create, get, update, find, list), under
the path prefix that client uses, /api/model_registry/v1. It follows the Go server of
kubeflow/model-registry (internal/server/openapi, internal/core) where yolokf depends on it:

- Request bodies are checked against the client's OWN generated pydantic models (RegisteredModelCreate,
  ModelVersionCreate, Artifact, the *Update models, the MetadataValue variants...), as the Go server,
  generated from the same OpenAPI spec, decodes them with DisallowUnknownFields: an unknown field or a
  value of the wrong type is answered 400, a required field missing or empty 422 (its RequiredError).
  Two places are stricter than the Go server, on purpose: inside the oneOf values (an Artifact body,
  a MetadataValue) it decodes with plain json.Unmarshal and lets unknown fields through, and Go matches
  field names case-insensitively; here both are 400, so what passes here passes there.
- Every answer is checked against the response models (RegisteredModel, ModelVersion, ModelArtifact,
  Artifact, the *List models) before it is sent; a mismatch is a bug here, answered 500 and kept in
  `bugs` (the fixtures assert it stays empty).
- Errors are the Error model, {"code": <HTTP status text>, "message": ...}, with the Go server's
  messages: 409 for a second registered model with the same name, a second version with the same name
  under one registered model, a second artifact with the same name in one version; 404 for unknown ids
  and for find (`/registered_model?name=`...) with no match, which the client turns into None; 400 for
  ids that are not numbers. Registered models and versions share one id sequence (both are MLMD
  contexts), artifacts have their own; times are milliseconds since the epoch, as strings.
- Lists take pageSize, orderBy (ID, CREATE_TIME, LAST_UPDATE_TIME), sortOrder and nextPageToken; the
  last page has nextPageToken "" (the client's Pager depends on that to stop). filterQuery is refused
  with 501: the loopback does not implement the filter language.

`token` makes it answer 401 "Unauthorized" (text/plain, as kube-rbac-proxy in front of the registry
does) to a request without `Authorization: Bearer <token>`; a token in `forbidden` gets 403. `fail()`
injects an error status, a dropped connection or a stall. Every request is recorded in `requests`.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import ssl
import threading
import time
import traceback
import types
import typing
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import mr_openapi.models as mr
from pydantic import BaseModel, ValidationError

API = "/api/model_registry/v1"  # the prefix of every path in mr_openapi's ModelRegistryServiceApi

# oneOf models of the spec and the field that tells their variants apart.
DISCRIMINATORS = {
    "MetadataValue": "metadataType",
    "Artifact": "artifactType",
    "ArtifactCreate": "artifactType",
    "ArtifactUpdate": "artifactType",
}


class ApiError(Exception):
    """An answer with an Error body: HTTP `status` and the Go server's `message`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class NotImplementedHere(ApiError):
    """Something the real server does that this loopback does not (501, so a test notices)."""

    def __init__(self, what: str):
        super().__init__(501, f"loopback Model Registry: {what} is not implemented")


# --- Checking JSON against the client's generated models -------------------------------------------------


def _json_kind(value: Any) -> str:
    """The JSON type name Go's encoding/json puts in its errors."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _one_of(model: type[BaseModel]) -> tuple[str, dict[str, type[BaseModel]]] | None:
    """For a oneOf model: its discriminator field and {discriminator value: variant model}."""
    if "actual_instance" not in model.model_fields:
        return None
    key = DISCRIMINATORS[model.__name__]
    choices = {}
    for name in sorted(model.model_fields["one_of_schemas"].default):
        variant = getattr(mr, name)
        field = next(f for n, f in variant.model_fields.items() if (f.alias or n) == key)
        # Artifacts carry their type as the field's default (artifactType "model-artifact"); the
        # MetadataValue variants are named by their class (metadataType "MetadataIntValue").
        choices[field.default if isinstance(field.default, str) else name] = variant
    return key, choices


def _nested(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """('model'|'list'|'dict', model) when a field holds generated models, else None."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            if found := _nested(arg):
                return found
        return None
    if origin in (list, dict):
        inner = _nested(typing.get_args(annotation)[-1])
        return ("list" if origin is list else "dict", inner[1]) if inner and inner[0] == "model" else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", annotation
    return None


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    """The model's fields by JSON name, limited to the properties the spec gives it."""
    known = set(getattr(model, f"_{model.__name__}__properties"))
    return {(f.alias or n): f for n, f in model.model_fields.items() if (f.alias or n) in known}


def _check(model: type[BaseModel], doc: Any, where: str, top: bool, request: bool = True) -> None:
    """Check `doc` against `model` and the models inside it, as the Go server decodes a request body.

    Raises ApiError: 400 for a value that is not an object where one is due, an unknown field (Go's
    DisallowUnknownFields decoder) or a value of the wrong type; 422 when a required field of the body
    itself is missing, null or empty (the generated server's RequiredError answers 422). For an answer
    (`request` False) only a missing or null required field counts: "" is a string like any other.
    """
    if one_of := _one_of(model):
        key, choices = one_of
        if not isinstance(doc, dict):
            raise ApiError(400, f"json: cannot unmarshal {_json_kind(doc)} into Go value of type openapi.{where}")
        if doc.get(key) not in choices:
            raise ApiError(
                400, f"failed to unmarshal {where}: {key} {json.dumps(doc.get(key))} is not one of {sorted(choices)}"
            )
        return _check(choices[doc[key]], doc, where, top, request)
    if not isinstance(doc, dict):
        raise ApiError(400, f"json: cannot unmarshal {_json_kind(doc)} into Go value of type openapi.{where}")
    fields = _fields(model)
    nested_present = set()
    for key, value in doc.items():
        if key not in fields:
            raise ApiError(400, f'json: unknown field "{key}"')
        nested = _nested(fields[key].annotation)
        if value is None or nested is None:
            continue
        kind, inner = nested
        nested_present.add(key)
        if kind == "model":
            _check(inner, value, f"{where}.{key}", False, request)
        elif kind == "list":
            if not isinstance(value, list):
                raise ApiError(400, f"json: cannot unmarshal {_json_kind(value)} into Go struct field {where}.{key}")
            for item in value:
                _check(inner, item, f"{where}.{key}", False, request)
        else:
            if not isinstance(value, dict):
                raise ApiError(400, f"json: cannot unmarshal {_json_kind(value)} into Go struct field {where}.{key}")
            for name, item in value.items():
                _check(inner, item, f"{where}.{key}[{name}]", False, request)
    zero = {
        alias
        for alias, field in fields.items()
        if field.is_required() and doc.get(alias) in ((None, "") if request else (None,))
    }
    # The scalar fields, typed by the model itself (pydantic, strict as the generated models are).
    scalars = {k: v for k, v in doc.items() if k not in nested_present and k not in zero}
    try:
        model.model_validate(scalars)
    except ValidationError as exc:
        skip = zero | nested_present
        errors = [e for e in exc.errors() if not (e["type"] == "missing" and e["loc"] and e["loc"][0] in skip)]
        if errors:
            error = errors[0]
            field = ".".join(str(part) for part in error["loc"])
            raise ApiError(
                400,
                f"json: cannot unmarshal {_json_kind(error.get('input'))} into Go struct field "
                f"{where}.{field}: {error['msg']}",
            ) from None
    if zero:
        raise ApiError(422 if top else 400, f"required field '{sorted(zero)[0]}' is zero value.")


def parse(model: type[BaseModel], doc: Any) -> Any:
    """Parse a request body as `model` (a class of mr_openapi.models) as strictly as the Go server does."""
    _check(model, doc, model.__name__, True)
    parsed = typing.cast(Any, model).from_dict(doc)  # every generated model has it
    assert parsed is not None
    return parsed


def check_response(model: type[BaseModel], doc: Any) -> None:
    """Assert that an answer is what the client's response model `model` accepts, and nothing more."""
    try:
        _check(model, doc, model.__name__, True, request=False)
    except ApiError as exc:
        raise AssertionError(f"answer is not a valid {model.__name__}: {exc.message}: {json.dumps(doc)}") from None


# --- The server -----------------------------------------------------------------------------------------


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
class Fault:
    status: int  # HTTP status to answer, 0 to close the connection without answering
    times: int
    method: str | None = None
    path: str | None = None  # regex searched in the request path
    delay: float = 0.0  # wait this long first (a stalled proxy); with status 200 the request is then served
    body: str | None = None  # regex searched in the request body

    def matches(self, method: str, path: str, body: bytes) -> bool:
        return (
            (self.method is None or self.method == method)
            and (self.path is None or re.search(self.path, path) is not None)
            and (self.body is None or re.search(self.body, body.decode(errors="replace")) is not None)
        )


# kube-rbac-proxy's answer to a token that is valid but may not use the registry.
FORBIDDEN = (
    b"Forbidden (user=system:serviceaccount:kubeflow-user:default-editor, verb=get, resource=services, "
    b"subresource=proxy)\n"
)
_ORDER_KEYS = {"ID": "id", "CREATE_TIME": "createTimeSinceEpoch", "LAST_UPDATE_TIME": "lastUpdateTimeSinceEpoch"}


class ModelRegistryServer:
    """The server. Use `start()`/`stop()`, or the fixtures in tests/test_registry.py."""

    def __init__(
        self, *, token: str | None = None, forbidden: tuple[str, ...] = (), tls: tuple[Path, Path] | None = None
    ):
        self.token = token
        self.forbidden = set(forbidden)
        self.tls = tls
        self.requests: list[Request] = []
        self.bugs: list[str] = []  # answers that failed check_response, and crashes
        self.faults: list[Fault] = []
        self.races: list[tuple[str, str, Any]] = []  # (method, path regex, what another client does first)
        self.registered_models: dict[str, dict[str, Any]] = {}  # id -> the JSON the server answers
        self.versions: dict[str, dict[str, Any]] = {}
        self.artifacts: dict[str, dict[str, Any]] = {}
        self.artifact_parent: dict[str, str | None] = {}  # artifact id -> model version id
        self._context_ids = itertools.count(1)  # registered models and versions: MLMD contexts
        self._artifact_ids = itertools.count(1)
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None

    # Lifecycle and test helpers.

    def start(self) -> ModelRegistryServer:
        server = self

        class Handler(_Handler):
            registry = server

        httpd = _HTTPServer(("127.0.0.1", 0), Handler)
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        self._httpd = httpd
        threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="model-registry", daemon=True
        ).start()
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
        body: str | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer the next `times` requests that match (method, and regexes searched in path and body) with
        `status`, after `delay` seconds. Status 0 drops the connection; 200 serves the request after the delay."""
        with self._lock:
            self.faults.append(Fault(status, times, method, path, delay, body))

    def race(self, method: str, path: str, action: Any) -> None:
        """Before the next request that matches (method, regex searched in the path) is served, run `action()`:
        another client's requests, served first, as when two steps register at once."""
        with self._lock:
            self.races.append((method, path, action))

    def _race_for(self, method: str, path: str) -> Any:
        with self._lock:
            for race in self.races:
                if race[0] == method and re.search(race[1], path):
                    self.races.remove(race)
                    return race[2]
        return None

    def calls(self, method: str, path_regex: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.search(path_regex, r.path)]

    def writes(self) -> list[Request]:
        """The requests that asked for a change (POST, PATCH), whatever the answer."""
        return [r for r in self.requests if r.method in ("POST", "PATCH")]

    def _fault_for(self, method: str, path: str, body: bytes) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.matches(method, path, body):
                    fault.times -= 1
                    return fault
        return None

    # Routing.

    def dispatch(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, type[BaseModel], Any]:
        """Carry out one request: (status, response model, JSON answer). Raises ApiError."""
        if not path.startswith(API + "/"):
            raise ApiError(404, f"no route for {path}")
        route = path[len(API) :]
        for pattern, handlers in self._routes():
            match = re.fullmatch(pattern, route)
            if match:
                if method not in handlers:
                    raise ApiError(405, f"method {method} is not allowed on {path}")
                with self._lock:
                    return handlers[method](*match.groups(), query=query, body=body)
        if re.match(r"/(serving_environment|inference_service|experiment|artifact)", route):
            raise NotImplementedHere(f"{method} {path}")
        raise ApiError(404, f"no route for {path}")

    def _routes(self) -> list[tuple[str, dict[str, Any]]]:
        return [
            (r"/registered_models", {"GET": self._list_registered_models, "POST": self._create_registered_model}),
            (
                r"/registered_models/([^/]+)",
                {"GET": self._get_registered_model, "PATCH": self._update_registered_model},
            ),
            (
                r"/registered_models/([^/]+)/versions",
                {"GET": self._list_registered_model_versions, "POST": self._create_registered_model_version},
            ),
            (r"/registered_model", {"GET": self._find_registered_model}),
            (r"/model_versions", {"GET": self._list_versions, "POST": self._create_version}),
            (r"/model_versions/([^/]+)", {"GET": self._get_version, "PATCH": self._update_version}),
            (
                r"/model_versions/([^/]+)/artifacts",
                {"GET": self._list_version_artifacts, "POST": self._upsert_version_artifact},
            ),
            (r"/model_version", {"GET": self._find_version}),
            (r"/model_artifacts", {"GET": self._list_model_artifacts, "POST": self._create_model_artifact}),
            (r"/model_artifacts/([^/]+)", {"GET": self._get_model_artifact, "PATCH": self._update_model_artifact}),
            (r"/model_artifact", {"GET": self._find_model_artifact}),
        ]

    # Helpers shared by the endpoints.

    @staticmethod
    def _body(model: type[BaseModel], body: bytes) -> Any:
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise ApiError(400, "EOF" if not body else f"invalid character in JSON: {exc}") from None
        return parse(model, doc)

    @staticmethod
    def _now() -> str:
        return str(time.time_ns() // 1_000_000)

    @staticmethod
    def _id(value: str, what: str) -> str:
        """apiutils.ValidateIDAsInt32: ids are int32 numbers, anything else is a bad request."""
        if not re.fullmatch(r"-?\d+", value) or not -(2**31) <= int(value) < 2**31:
            raise ApiError(400, f'invalid {what} ID: strconv.ParseInt: parsing "{value}": invalid syntax: bad request')
        return str(int(value))

    def _get(self, table: dict[str, dict[str, Any]], id_: str, what: str) -> dict[str, Any]:
        entity = table.get(self._id(id_, what))
        if entity is None:
            raise ApiError(404, f"no {what} found for id {id_}: not found")
        return entity

    @staticmethod
    def _new(fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
        now = ModelRegistryServer._now()
        entity = {**fields, **extra, "createTimeSinceEpoch": now, "lastUpdateTimeSinceEpoch": now}
        entity.setdefault("customProperties", {})
        return entity

    def _update(self, entity: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
        # Name, id, parent and times are not editable; customProperties are replaced when given.
        for key in ("name", "id", "registeredModelId", "createTimeSinceEpoch", "lastUpdateTimeSinceEpoch"):
            changes.pop(key, None)
        entity.update(changes)
        entity["lastUpdateTimeSinceEpoch"] = self._now()
        return entity

    @staticmethod
    def _page(
        items: list[dict[str, Any]], query: dict[str, str], model: type[BaseModel]
    ) -> tuple[int, type[BaseModel], Any]:
        """One page of `items` as a *List answer (internal/server/openapi buildListOption, GenericRepository.List)."""
        if query.get("filterQuery"):
            raise NotImplementedHere("filterQuery")
        size_text = query.get("pageSize", "")
        if size_text and not re.fullmatch(r"-?\d+", size_text):
            raise ApiError(400, f'strconv.ParseInt: parsing "{size_text}": invalid syntax: bad request')
        size = int(size_text or 0)
        order = query.get("orderBy") or "ID"
        direction = query.get("sortOrder") or "ASC"
        if order not in _ORDER_KEYS:
            raise ApiError(400, f"invalid orderBy {order!r}: use one of {', '.join(_ORDER_KEYS)}: bad request")
        if direction not in ("ASC", "DESC"):
            raise ApiError(400, f"invalid sortOrder {direction!r}: use ASC or DESC: bad request")
        token = query.get("nextPageToken", "")
        start = 0
        if token:
            try:
                start = int(json.loads(base64.urlsafe_b64decode(token.encode()))["offset"])
            except (binascii.Error, ValueError, KeyError, TypeError):
                raise ApiError(400, f"invalid nextPageToken: cannot decode cursor {token!r}: bad request") from None
        key = _ORDER_KEYS[order]
        ordered = sorted(items, key=lambda e: (int(e[key]), int(e["id"])), reverse=direction == "DESC")
        page = ordered[start : start + size] if size > 0 else ordered[start:]
        more = size > 0 and start + size < len(ordered)
        next_token = base64.urlsafe_b64encode(json.dumps({"offset": start + size}).encode()).decode() if more else ""
        return 200, model, {"nextPageToken": next_token, "pageSize": size, "size": len(page), "items": page}

    @staticmethod
    def _find_one(found: list[dict[str, Any]], what: str, params: str) -> dict[str, Any]:
        if not found:
            raise ApiError(404, f"no {what}s found for {params}: not found")
        if len(found) > 1:
            raise ApiError(404, f"multiple {what}s found for {params}: not found")
        return found[0]

    # Registered models.

    def _create_registered_model(self, *, query: dict[str, str], body: bytes) -> tuple[int, type[BaseModel], Any]:
        fields = self._body(mr.RegisteredModelCreate, body).to_dict()
        if any(m["name"] == fields["name"] for m in self.registered_models.values()):
            raise ApiError(409, f"registered model with name {fields['name']} already exists: conflict")
        self._unique_external_id(fields)
        model = self._new(fields, id=str(next(self._context_ids)))
        self.registered_models[model["id"]] = model
        return 201, mr.RegisteredModel, model

    def _get_registered_model(self, id_: str, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        return 200, mr.RegisteredModel, self._get(self.registered_models, id_, "registered model")

    def _update_registered_model(self, id_: str, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        model = self._get(self.registered_models, id_, "registered model")
        changes = self._body(mr.RegisteredModelUpdate, body).to_dict()
        return 200, mr.RegisteredModel, self._update(model, changes)

    def _find_registered_model(self, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        name, external_id = query.get("name") or None, query.get("externalId") or None
        if name is None and external_id is None:
            raise ApiError(400, "invalid parameters call, supply either name or externalId: bad request")
        found = [
            m
            for m in self.registered_models.values()
            if (name is None or m["name"] == name) and (external_id is None or m.get("externalId") == external_id)
        ]
        params = f"name={name or ''}, externalId={external_id or ''}"
        return 200, mr.RegisteredModel, self._find_one(found, "registered model", params)

    def _list_registered_models(self, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        return self._page(list(self.registered_models.values()), query, mr.RegisteredModelList)

    # Model versions.

    def _add_version(self, fields: dict[str, Any], registered_model_id: str) -> dict[str, Any]:
        parent = self._get(self.registered_models, registered_model_id, "registered model")
        if any(v["registeredModelId"] == parent["id"] and v["name"] == fields["name"] for v in self.versions.values()):
            raise ApiError(409, f"model version with name {fields['name']} already exists: conflict")
        self._unique_external_id(fields)
        version = self._new(fields, id=str(next(self._context_ids)), registeredModelId=parent["id"])
        self.versions[version["id"]] = version
        return version

    def _create_version(self, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        fields = self._body(mr.ModelVersionCreate, body).to_dict()
        return 201, mr.ModelVersion, self._add_version(fields, fields.pop("registeredModelId"))

    def _create_registered_model_version(self, id_: str, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        fields = self._body(mr.ModelVersion, body).to_dict()
        for key in ("id", "createTimeSinceEpoch", "lastUpdateTimeSinceEpoch", "registeredModelId"):
            fields.pop(key, None)
        return 201, mr.ModelVersion, self._add_version(fields, id_)

    def _get_version(self, id_: str, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        return 200, mr.ModelVersion, self._get(self.versions, id_, "model version")

    def _update_version(self, id_: str, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        version = self._get(self.versions, id_, "model version")
        changes = self._body(mr.ModelVersionUpdate, body).to_dict()
        return 200, mr.ModelVersion, self._update(version, changes)

    def _find_version(self, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        name, external_id = query.get("name") or None, query.get("externalId") or None
        parent = query.get("parentResourceId") or None
        if (name is None or parent is None) and external_id is None:
            raise ApiError(
                400, "invalid parameters call, supply either (name and parentResourceId), or externalId: bad request"
            )
        if parent is not None:
            parent = self._id(parent, "registered model")
        found = [
            v
            for v in self.versions.values()
            if (name is None or v["name"] == name)
            and (parent is None or v["registeredModelId"] == parent)
            and (external_id is None or v.get("externalId") == external_id)
        ]
        params = f"name={name or ''}, parentResourceId={parent or ''}, externalId={external_id or ''}"
        return 200, mr.ModelVersion, self._find_one(found, "model version", params)

    def _list_versions(self, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        return self._page(list(self.versions.values()), query, mr.ModelVersionList)

    def _list_registered_model_versions(self, id_: str, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        parent = self._id(id_, "registered model")
        versions = [
            v
            for v in self.versions.values()
            if v["registeredModelId"] == parent
            and (not query.get("name") or v["name"] == query["name"])
            and (not query.get("externalId") or v.get("externalId") == query["externalId"])
        ]
        return self._page(versions, query, mr.ModelVersionList)

    # Artifacts (only model artifacts are stored; the client's other kinds are not needed by yolokf).

    def _unique_external_id(self, fields: dict[str, Any]) -> None:
        external_id = fields.get("externalId")
        tables = (self.registered_models, self.versions, self.artifacts)
        if external_id and any(e.get("externalId") == external_id for t in tables for e in t.values()):
            raise ApiError(409, f"externalId {external_id} already exists: conflict")

    def _add_artifact(self, fields: dict[str, Any], parent: str | None) -> dict[str, Any]:
        fields.setdefault("name", str(uuid.uuid4()))  # ensureArtifactName: the server names a nameless artifact
        same_parent = [a for i, a in self.artifacts.items() if self.artifact_parent[i] == parent]
        if any(a.get("name") == fields["name"] for a in same_parent):
            raise ApiError(409, f"model artifact with name {fields['name']} already exists: conflict")
        self._unique_external_id(fields)
        artifact = self._new(fields, id=str(next(self._artifact_ids)), artifactType="model-artifact")
        artifact.setdefault("state", "UNKNOWN")
        self.artifacts[artifact["id"]] = artifact
        self.artifact_parent[artifact["id"]] = parent
        return artifact

    def _upsert_version_artifact(self, id_: str, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        version = self._get(self.versions, id_, "model version")
        artifact = self._body(mr.Artifact, body).actual_instance
        if not isinstance(artifact, mr.ModelArtifact):
            raise NotImplementedHere(f"storing a {type(artifact).__name__}")
        fields = artifact.to_dict()
        if fields.get("id"):
            existing = self._get(self.artifacts, fields["id"], "artifact")
            return 200, mr.Artifact, self._update(existing, fields)
        for key in ("createTimeSinceEpoch", "lastUpdateTimeSinceEpoch"):
            fields.pop(key, None)
        return 201, mr.Artifact, self._add_artifact(fields, version["id"])

    def _list_version_artifacts(self, id_: str, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        parent = self._id(id_, "parent resource")
        if query.get("artifactType") not in (None, "", "model-artifact"):
            artifacts: list[dict[str, Any]] = []  # only model artifacts are ever stored here
        else:
            artifacts = [
                a
                for i, a in self.artifacts.items()
                if self.artifact_parent[i] == parent
                and (not query.get("name") or a.get("name") == query["name"])
                and (not query.get("externalId") or a.get("externalId") == query["externalId"])
            ]
        return self._page(artifacts, query, mr.ArtifactList)

    def _list_model_artifacts(self, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        return self._page(list(self.artifacts.values()), query, mr.ModelArtifactList)

    def _create_model_artifact(self, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        fields = self._body(mr.ModelArtifactCreate, body).to_dict()
        return 201, mr.ModelArtifact, self._add_artifact(fields, None)

    def _get_model_artifact(self, id_: str, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        return 200, mr.ModelArtifact, self._get(self.artifacts, id_, "artifact")

    def _update_model_artifact(self, id_: str, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        artifact = self._get(self.artifacts, id_, "artifact")
        changes = self._body(mr.ModelArtifactUpdate, body).to_dict()
        return 200, mr.ModelArtifact, self._update(artifact, changes)

    def _find_model_artifact(self, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        name, external_id = query.get("name") or None, query.get("externalId") or None
        parent = query.get("parentResourceId") or None
        if (name is None or parent is None) and external_id is None:
            raise ApiError(
                400,
                "invalid parameters call, supply either (artifactName and parentResourceId), or externalId: "
                "bad request",
            )
        if parent is not None:
            parent = self._id(parent, "parent resource")
        found = [
            a
            for i, a in self.artifacts.items()
            if (name is None or a.get("name") == name)
            and (parent is None or self.artifact_parent[i] == parent)
            and (external_id is None or a.get("externalId") == external_id)
        ]
        params = f"name={name or ''}, parentResourceId={parent or ''}, externalId={external_id or ''}"
        return 200, mr.ModelArtifact, self._find_one(found, "artifact", params)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up is not a server failure


class _Handler(BaseHTTPRequestHandler):
    registry: ModelRegistryServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        registry = self.registry
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        record = Request(self.command, url.path, query, {k.lower(): v for k, v in self.headers.items()}, body)
        with registry._lock:
            registry.requests.append(record)
        fault = registry._fault_for(self.command, url.path, body)
        if fault and fault.delay:
            time.sleep(fault.delay)
        if fault and fault.status == 0:
            record.status = 0
            self.close_connection = True
            self.connection.close()
            return
        if fault and fault.status != 200:
            return self._error(record, fault.status, "injected fault")
        if registry.token is not None:
            # kube-rbac-proxy (or Istio) in front of the registry: plain-text refusals.
            header = self.headers.get("Authorization", "")
            sent = header[len("Bearer ") :] if header.startswith("Bearer ") else None
            if sent in registry.forbidden:
                return self._send(record, 403, FORBIDDEN, "text/plain; charset=utf-8")
            if sent != registry.token:
                return self._send(record, 401, b"Unauthorized\n", "text/plain; charset=utf-8")
        action = registry._race_for(self.command, url.path)
        if action is not None:
            action()
        try:
            status, model, payload = registry.dispatch(self.command, url.path, query, body)
        except ApiError as exc:
            return self._error(record, exc.status, exc.message)
        except Exception:  # a bug here: say so rather than drop the connection
            registry.bugs.append(traceback.format_exc())
            return self._error(record, 500, f"loopback Model Registry failed: {traceback.format_exc()}")
        try:
            check_response(model, payload)
        except AssertionError as exc:
            registry.bugs.append(str(exc))
            return self._error(record, 500, f"loopback Model Registry bug: {exc}")
        self._send(record, status, json.dumps(payload).encode())

    def _error(self, record: Request, status: int, message: str) -> None:
        # The Go server's ErrorResponse: {"code": <status text>, "message": ...}; its 422 for a missing
        # required field carries the 400 status text (DefaultErrorHandler).
        code = HTTPStatus(400 if status == 422 else status).phrase
        error = {"code": code, "message": message}
        check_response(mr.Error, error)
        self._send(record, status, json.dumps(error).encode())

    def _send(self, record: Request, status: int, data: bytes, content_type: str = "application/json") -> None:
        record.status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
