"""Proto3 JSON as the API server's gateway reads and writes it: strict request bodies, answers with zero values left
out, times in whole seconds, and errors as google.rpc.Status."""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

import kfp_server_api

from tests.loopback import base

EPOCH = "1970-01-01T00:00:00Z"  # what the server answers for a time it does not have

# google.rpc.Code values the API server uses.
INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, UNAUTHENTICATED = 3, 5, 6, 7, 16
CODES = {400: INVALID_ARGUMENT, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: NOT_FOUND, 409: ALREADY_EXISTS}


class ApiError(base.ApiError):
    """An error answer: HTTP `status`, the Status `message`, and `detail`, the google.rpc.Status the
    API server adds to `details` (util.UserError.GRPCStatus: the message without the wrapping)."""

    def __init__(self, status: int, message: str, detail: str | None = None):
        super().__init__(status, message)
        self.detail = detail


def status_json(error: base.ApiError) -> dict[str, Any]:
    """The error as google.rpc.Status JSON, plus the `error` field older gateways added."""
    code = CODES.get(error.status, 13 if error.status >= 500 else 2)
    detail = error.detail if isinstance(error, ApiError) else None
    details = [{"@type": "type.googleapis.com/google.rpc.Status", "code": code, "message": detail}] if detail else []
    return {"error": error.message, "code": code, "message": error.message, "details": details}


def timestamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def seconds(stamp: str | None) -> int:
    """A stored timestamp as the Unix seconds the database keeps (CreatedAtInSec...); 0 when unset."""
    if not stamp:
        return 0
    moment = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
    return int(moment.replace(tzinfo=datetime.timezone.utc).timestamp())


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def check_body(value: Any, openapi_type: str, name: str = "") -> Any:
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
    if inner := base.container(openapi_type):
        kind, item_type = inner
        if kind == "list":
            if not isinstance(value, list):
                raise wrong("list")
            return [check_body(item, item_type, name) for item in value]
        if not isinstance(value, dict):
            raise wrong("map")
        return {key: check_body(item, item_type, name) for key, item in value.items()}
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

    def unknown(key: str) -> ApiError:
        return ApiError(400, f"proto: unknown field {json.dumps(key)}")

    return {
        proto: check_body(item, model.openapi_types[proto], proto)
        for _, item, proto in base.fields(value, names, unknown)
    }


def read_json_body(body: bytes, openapi_type: str) -> dict[str, Any]:
    try:
        doc = json.loads(body or b"{}")
    except ValueError as exc:
        raise ApiError(400, f"proto: syntax error: {exc}") from None
    return check_body(doc, openapi_type)


def _is_zero(value: Any) -> bool:
    if isinstance(value, str):
        return value in ("", "RUNTIME_STATE_UNSPECIFIED", "STORAGE_STATE_UNSPECIFIED")  # enum 0 is zero too
    return value is None or (isinstance(value, int | float | list | dict) and not value)


def emit(message: dict[str, Any]) -> dict[str, Any]:
    """One message's fields as protojson writes them with EmitUnpopulated=false: zero values left out.
    Not recursive, as values inside a Struct (a pipeline spec, run parameters) keep their zeros."""
    return {k: v for k, v in message.items() if not k.startswith("_") and not _is_zero(v)}
