"""List filters as the API server reads them (backend/api/v2beta1/filter.proto, filter/filter.go), and how its MySQL
database compares the values they name."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory, timestamp_pb2


class InvalidInput(Exception):
    """util.UserError with InvalidArgument: `internal` is what the Status message carries (after the
    caller's wrapping), `external` what its google.rpc.Status detail carries."""

    def __init__(self, internal: str, external: str):
        super().__init__(internal)
        self.internal = internal
        self.external = external


def invalid_input(message: str) -> InvalidInput:  # util.NewInvalidInputError
    return InvalidInput(f"Invalid input error: {message}", message)


def _unknown_api_version(what: str, type_name: str) -> InvalidInput:  # util.NewUnknownApiVersionError
    message = f"Error using {what} with {type_name}"
    return InvalidInput(f"UnknownApiVersionError: {message}", message)


def go_quote(text: str) -> str:
    """Go's %q of a string."""
    return json.dumps(text, ensure_ascii=False)


def _go_value(value: Any) -> str:
    """Go's %v of a predicate value."""
    if isinstance(value, list):
        return "[" + " ".join(str(v) for v in value) + "]"
    return str(value)


def query_unescape(text: str) -> str:
    """Go's url.QueryUnescape: the API server decodes the (already decoded) filter once more."""
    out, i = bytearray(), 0
    raw = text.encode()
    while i < len(raw):
        c = raw[i : i + 1]
        if c == b"%":
            escape = raw[i : i + 3]
            if len(escape) < 3 or not re.fullmatch(rb"%[0-9A-Fa-f]{2}", escape):
                raise ValueError(f"invalid URL escape {go_quote(escape.decode(errors='replace'))}")
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
        return f"proto: unknown field {go_quote(m[1])}"
    if m := re.search(r"Invalid enum value (.+?) for enum type", text):
        return f"proto: invalid value for enum field operation: {go_quote(m[1])}"
    if "multiple" in text and "oneof" in text:
        return "proto: oneof kubeflow.pipelines.backend.api.v2beta1.Predicate.value is already set"
    if m := re.search(r"Failed to parse (\w+) field: (?!.*Failed to parse)(.*?)\.?$", text):
        return f"proto: invalid value for field {m[1]}: {m[2]}"
    return f"proto: {text}"


def parse_filter_json(text: str) -> Any:
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
class Predicate:
    operation: str
    key: str
    value: Any  # int, str, or a list of them (a timestamp is its Unix seconds)
    value_type: str  # Go's %T of the value: int32, int64, string, []int32, []int64, []string


def predicates(message: Any) -> list[Predicate]:
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
            raise invalid_input(f"Predicate key cannot be empty for operation {operation} and value {_go_value(value)}")
        out.append(Predicate(operation, p.key, value, value_type))
    for p in out:
        is_list = p.value_type.startswith("[]")
        if p.operation == "IN" and not is_list:
            raise invalid_input(f"cannot use IN operator with scalar type {p.value_type}")
        if p.operation == "IS_SUBSTRING" and p.value_type != "string":
            # filter.go passes (operation, value) to "...type %T with operator %v": hence "type string".
            raise invalid_input(f"cannot use non string value type string with operator {_go_value(p.value)}")
        if p.operation not in ("IN", "IS_SUBSTRING") and is_list:
            raise invalid_input(f"cannot use scalar operator {p.operation} on array type {p.value_type}")
    return out


OPERATION_ORDER = ("EQUALS", "NOT_EQUALS", "GREATER_THAN", "GREATER_THAN_EQUALS", "LESS_THAN", "LESS_THAN_EQUALS")
OPERATION_ORDER += ("IN", "IS_SUBSTRING")


def _sql_number(text: str) -> float:
    """MySQL's cast of a string to a number: its numeric prefix, else 0."""
    m = re.match(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text)
    return float(m[0]) if m else 0.0


def _collate(text: str) -> str:
    # The KFP database is MySQL with charset utf8 (backend/src/apiserver/client/sql.go), whose default
    # collation utf8_general_ci ignores case and trailing spaces.
    return text.casefold().rstrip(" ")


def sql_compare(a: Any, b: Any) -> int:
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


def matches(item_value: Any, operation: str, value: Any) -> bool:
    if operation == "IN":
        return any(sql_compare(item_value, v) == 0 for v in value)
    if operation == "IS_SUBSTRING":
        return _sql_like(item_value, f"%{value}%")
    order = sql_compare(item_value, value)
    return {
        "EQUALS": order == 0,
        "NOT_EQUALS": order != 0,
        "GREATER_THAN": order > 0,
        "GREATER_THAN_EQUALS": order >= 0,
        "LESS_THAN": order < 0,
        "LESS_THAN_EQUALS": order <= 0,
    }[operation]


def sort_value(value: Any) -> Any:
    return (0, "") if value is None else (1, _collate(value)) if isinstance(value, str) else (1, value)
