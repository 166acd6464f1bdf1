"""Artifacts (only model artifacts are stored; the client's other kinds are not needed by yolokf): a version's
artifacts (upsert, list), and model artifacts at the top level (create, get, update, find, list)."""

from __future__ import annotations

import uuid
from typing import Any

import mr_openapi.models as mr

from tests.loopback.base import ApiError
from tests.loopback.model_registry.entities import (
    NotImplementedHere,
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


class ArtifactsApi(RegistryState):
    def _add_artifact(self, fields: dict[str, Any], parent: str | None) -> dict[str, Any]:
        fields.setdefault("name", str(uuid.uuid4()))  # ensureArtifactName: the server names a nameless artifact
        # Stored as "<parent>:<name>" under the unique key (type_id, name), one without a parent under a fresh
        # uuid (internal/converter/openapi_converter_util.go:59-71 PrefixWhenOwned): compared as names are.
        same_parent = [a for i, a in self.artifacts.items() if parent is not None and self.artifact_parent[i] == parent]
        if any(same_name(a.get("name") or "", fields["name"]) for a in same_parent):
            raise ApiError(409, f"model artifact with name {fields['name']} already exists: conflict")
        self._unique_external_id(fields)
        artifact = new(fields, id=str(next(self._artifact_ids)), artifactType="model-artifact")
        artifact.setdefault("state", "UNKNOWN")
        self.artifacts[artifact["id"]] = artifact
        self.artifact_parent[artifact["id"]] = parent
        return artifact

    def _upsert_version_artifact(self, id_: str, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        version = get(self.versions, id_, "model version")
        artifact = read_body(mr.Artifact, body).actual_instance
        if not isinstance(artifact, mr.ModelArtifact):
            raise NotImplementedHere(f"storing a {type(artifact).__name__}")
        fields = artifact.to_dict()
        if fields.get("id"):
            existing = get(self.artifacts, fields["id"], "artifact")
            return 200, mr.Artifact, update(existing, fields)
        for key in ("createTimeSinceEpoch", "lastUpdateTimeSinceEpoch"):
            fields.pop(key, None)
        return 201, mr.Artifact, self._add_artifact(fields, version["id"])

    def _list_version_artifacts(self, id_: str, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        parent = parse_id(id_, "parent resource")
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
        return page(artifacts, query, mr.ArtifactList)

    def _list_model_artifacts(self, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        return page(list(self.artifacts.values()), query, mr.ModelArtifactList)

    def _create_model_artifact(self, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        fields = read_body(mr.ModelArtifactCreate, body).to_dict()
        return 201, mr.ModelArtifact, self._add_artifact(fields, None)

    def _get_model_artifact(self, id_: str, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        return 200, mr.ModelArtifact, get(self.artifacts, id_, "artifact")

    def _update_model_artifact(self, id_: str, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        artifact = get(self.artifacts, id_, "artifact")
        changes = read_body(mr.ModelArtifactUpdate, body).to_dict()
        return 200, mr.ModelArtifact, update(artifact, changes)

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
            parent = parse_id(parent, "parent resource")
        # kubeflow/hub v0.3.8 internal/core/artifact.go:439-443 lists with internal/db/service/artifact.go:79-84:
        # `name LIKE "%:<name>"` on the stored "<parent>:<name>" when a name is given, else externalId; a parent is
        # always a filter.
        found = [
            a
            for i, a in self.artifacts.items()
            if (
                like(":" + (a.get("name") or ""), "%:" + name)
                if name is not None
                else a.get("externalId") == external_id
            )
            and (parent is None or self.artifact_parent[i] == parent)
        ]
        params = f"name={name or ''}, parentResourceId={parent or ''}, externalId={external_id or ''}"
        return 200, mr.ModelArtifact, find_one(found, "model artifact", params)
