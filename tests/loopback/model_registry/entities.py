"""What the registry holds (registered models, versions and artifacts, each kept as the JSON the server answers), and
what every endpoint does with it: ids, times, lookups, finds, pages and edits as the Go server does them."""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
import unicodedata
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from tests.loopback.base import ApiError
from tests.loopback.model_registry.validation import parse

_ORDER_KEYS = {"ID": "id", "CREATE_TIME": "createTimeSinceEpoch", "LAST_UPDATE_TIME": "lastUpdateTimeSinceEpoch"}


class NotImplementedHere(ApiError):
    """Something the real server does that this loopback does not (501, so a test notices)."""

    def __init__(self, what: str):
        super().__init__(501, f"loopback Model Registry: {what} is not implemented")


def read_body(model: type[BaseModel], body: bytes) -> Any:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise ApiError(400, "EOF" if not body else f"invalid character in JSON: {exc}") from None
    return parse(model, doc)


def now() -> str:
    return str(time.time_ns() // 1_000_000)


def parse_id(value: str, what: str) -> str:
    """apiutils.ValidateIDAsInt32: ids are int32 numbers, anything else is a bad request."""
    if not re.fullmatch(r"-?\d+", value) or not -(2**31) <= int(value) < 2**31:
        raise ApiError(400, f'invalid {what} ID: strconv.ParseInt: parsing "{value}": invalid syntax: bad request')
    return str(int(value))


def get(table: dict[str, dict[str, Any]], id_: str, what: str) -> dict[str, Any]:
    entity = table.get(parse_id(id_, what))
    if entity is None:
        raise ApiError(404, f"no {what} found for id {id_}: not found")
    return entity


def new(fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
    stamp = now()
    entity = {**fields, **extra, "createTimeSinceEpoch": stamp, "lastUpdateTimeSinceEpoch": stamp}
    entity.setdefault("customProperties", {})
    return entity


def update(entity: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    # Name, id, parent and times are not editable; customProperties are replaced when given.
    for key in ("name", "id", "registeredModelId", "createTimeSinceEpoch", "lastUpdateTimeSinceEpoch"):
        changes.pop(key, None)
    entity.update(changes)
    entity["lastUpdateTimeSinceEpoch"] = now()
    return entity


def page(
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
    found = ordered[start : start + size] if size > 0 else ordered[start:]
    more = size > 0 and start + size < len(ordered)
    next_token = base64.urlsafe_b64encode(json.dumps({"offset": start + size}).encode()).decode() if more else ""
    return 200, model, {"nextPageToken": next_token, "pageSize": size, "size": len(found), "items": found}


def find_one(found: list[dict[str, Any]], what: str, params: str) -> dict[str, Any]:
    # kubeflow/hub v0.3.8 internal/core/registered_model.go:122-128 (model_version.go:165-171, artifact.go:452-458):
    # two matches of the LIKE below are "multiple ... found", answered 404 like none.
    if not found:
        raise ApiError(404, f"no {what}s found for {params}: not found")
    if len(found) > 1:
        raise ApiError(404, f"multiple {what}s found for {params}: not found")
    return found[0]


def _fold(text: str) -> str:
    """A name as MySQL 8's default collation, utf8mb4_0900_ai_ci, compares it: case- and accent-insensitive.

    kubeflow/hub's manifests run mysql:8.3 with no collation set (manifests/kustomize/overlays/db/
    model-registry-db-deployment.yaml:28), and its tables set none (internal/datastore/embedmd/mysql/migrations).
    Approximated by case folding and dropping combining marks.
    """
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def same_name(a: str, b: str) -> bool:
    """`a = b` under that collation: the unique key (type_id, name) of the Context and Artifact tables
    (migrations 000005 and 000001) refuses `YOLO` beside `yolo`, gorm's ErrDuplicatedKey, answered 409."""
    return _fold(a) == _fold(b)


def like(value: str, pattern: str) -> bool:
    r"""`value LIKE pattern` under that collation, as the finds by name query: `%` is any run of characters, `_` any
    one, `\` makes the next one plain; characters compare one by one (MySQL's LIKE is per character, unlike `=`).

    kubeflow/hub v0.3.8 internal/db/service/registered_model.go:47, model_version.go:60-62 and artifact.go:82
    pass the name as the pattern without escaping it.
    """
    tokens: list[tuple[str, str]] = []  # ("%", ""), ("_", ""), or ("char", its folded form)
    chars = iter(pattern)
    for char in chars:
        if char == "\\":
            char = next(chars, "\\")  # a trailing backslash stands for itself
            tokens.append(("char", _fold(char)))
        elif char in "%_":
            tokens.append((char, ""))
        else:
            tokens.append(("char", _fold(char)))
    text = [_fold(char) for char in value]
    reachable = {0}  # positions in `text` the tokens so far can end at
    for kind, folded in tokens:
        if kind == "%":
            reachable = set(range(min(reachable), len(text) + 1)) if reachable else set()
        else:
            reachable = {i + 1 for i in reachable if i < len(text) and (kind == "_" or text[i] == folded)}
    return len(text) in reachable


class RegistryState:
    """The registry's tables, which `ModelRegistryServer` sets up. Registered models and versions share one id
    sequence (both are MLMD contexts), artifacts have their own."""

    registered_models: dict[str, dict[str, Any]]  # id -> the JSON the server answers
    versions: dict[str, dict[str, Any]]
    artifacts: dict[str, dict[str, Any]]
    artifact_parent: dict[str, str | None]  # artifact id -> model version id
    _context_ids: Iterator[int]  # registered models and versions: MLMD contexts
    _artifact_ids: Iterator[int]

    def _unique_external_id(self, fields: dict[str, Any]) -> None:
        external_id = fields.get("externalId")
        tables = (self.registered_models, self.versions, self.artifacts)
        if external_id and any(e.get("externalId") == external_id for t in tables for e in t.values()):
            raise ApiError(409, f"externalId {external_id} already exists: conflict")
