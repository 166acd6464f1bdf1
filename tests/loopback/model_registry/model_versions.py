"""Model versions: create (a name used once per registered model) at the top level or under a registered model, get,
update, find by name and parent or by externalId, and list (all, or one registered model's)."""

from __future__ import annotations

from typing import Any

import mr_openapi.models as mr

from tests.loopback.base import ApiError
from tests.loopback.model_registry.entities import (
    RegistryState,
    find_one,
    get,
    like,
    new,
    page,
    parse_id,
    read_body,
    same_name,
    update,
)


class ModelVersionsApi(RegistryState):
    def _add_version(self, fields: dict[str, Any], registered_model_id: str) -> dict[str, Any]:
        parent = get(self.registered_models, registered_model_id, "registered model")
        # Stored as "<registered model id>:<name>" under the unique key (type_id, name): compared as names are.
        if any(
            v["registeredModelId"] == parent["id"] and same_name(v["name"], fields["name"])
            for v in self.versions.values()
        ):
            raise ApiError(409, f"model version with name {fields['name']} already exists: conflict")
        self._unique_external_id(fields)
        version = new(fields, id=str(next(self._context_ids)), registeredModelId=parent["id"])
        self.versions[version["id"]] = version
        return version

    def _create_version(self, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        fields = read_body(mr.ModelVersionCreate, body).to_dict()
        return 201, mr.ModelVersion, self._add_version(fields, fields.pop("registeredModelId"))

    def _create_registered_model_version(self, id_: str, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        fields = read_body(mr.ModelVersion, body).to_dict()
        for key in ("id", "createTimeSinceEpoch", "lastUpdateTimeSinceEpoch", "registeredModelId"):
            fields.pop(key, None)
        return 201, mr.ModelVersion, self._add_version(fields, id_)

    def _get_version(self, id_: str, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        return 200, mr.ModelVersion, get(self.versions, id_, "model version")

    def _update_version(self, id_: str, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        version = get(self.versions, id_, "model version")
        changes = read_body(mr.ModelVersionUpdate, body).to_dict()
        return 200, mr.ModelVersion, update(version, changes)

    def _find_version(self, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        name, external_id = query.get("name") or None, query.get("externalId") or None
        parent = query.get("parentResourceId") or None
        if (name is None or parent is None) and external_id is None:
            raise ApiError(
                400, "invalid parameters call, supply either (name and parentResourceId), or externalId: bad request"
            )
        if parent is not None:
            parent = parse_id(parent, "registered model")
        # kubeflow/hub v0.3.8 internal/db/service/model_version.go:58-73: `name LIKE "<parent>:<name>"` (or
        # "%:<name>" with no parent) when a name is given, else externalId; a parent is always a filter.
        found = [
            v
            for v in self.versions.values()
            if (_version_like(v, name, parent) if name is not None else v.get("externalId") == external_id)
            and (parent is None or v["registeredModelId"] == parent)
        ]
        params = f"name={name or ''}, parentResourceId={parent or ''}, externalId={external_id or ''}"
        return 200, mr.ModelVersion, find_one(found, "model version", params)

    def _list_versions(self, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        return page(list(self.versions.values()), query, mr.ModelVersionList)

    def _list_registered_model_versions(self, id_: str, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        parent = parse_id(id_, "registered model")
        versions = [
            v
            for v in self.versions.values()
            if v["registeredModelId"] == parent
            and (not query.get("name") or v["name"] == query["name"])
            and (not query.get("externalId") or v.get("externalId") == query["externalId"])
        ]
        return page(versions, query, mr.ModelVersionList)


def _version_like(version: dict[str, Any], name: str, parent: str | None) -> bool:
    # Stored as "<parent>:<name>": with a parent the pattern's literal prefix pins it, without one "%:" lets the
    # name match any part of a stored name that follows a colon.
    return like(version["name"], name) if parent is not None else like(":" + version["name"], "%:" + name)
