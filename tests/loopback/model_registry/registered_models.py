"""Registered models: create (a name used once), get, update, find by name or externalId, and list."""

from __future__ import annotations

from typing import Any

import mr_openapi.models as mr
from pydantic import BaseModel

from tests.loopback.base import ApiError
from tests.loopback.model_registry.entities import (
    RegistryState,
    find_one,
    get,
    like,
    new,
    page,
    read_body,
    same_name,
    update,
)


class RegisteredModelsApi(RegistryState):
    def _create_registered_model(self, *, query: dict[str, str], body: bytes) -> tuple[int, type[BaseModel], Any]:
        fields = read_body(mr.RegisteredModelCreate, body).to_dict()
        if any(same_name(m["name"], fields["name"]) for m in self.registered_models.values()):
            raise ApiError(409, f"registered model with name {fields['name']} already exists: conflict")
        self._unique_external_id(fields)
        model = new(fields, id=str(next(self._context_ids)))
        self.registered_models[model["id"]] = model
        return 201, mr.RegisteredModel, model

    def _get_registered_model(self, id_: str, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        return 200, mr.RegisteredModel, get(self.registered_models, id_, "registered model")

    def _update_registered_model(self, id_: str, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        model = get(self.registered_models, id_, "registered model")
        changes = read_body(mr.RegisteredModelUpdate, body).to_dict()
        return 200, mr.RegisteredModel, update(model, changes)

    def _find_registered_model(self, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        name, external_id = query.get("name") or None, query.get("externalId") or None
        if name is None and external_id is None:
            raise ApiError(400, "invalid parameters call, supply either name or externalId: bad request")
        # kubeflow/hub v0.3.8 internal/db/service/registered_model.go:46-50: `name LIKE ?` when a name is given (so
        # `yolo-det` also finds `yolo_det`, and `YOLO` finds `yolo`), else externalId.
        found = [
            m
            for m in self.registered_models.values()
            if (like(m["name"], name) if name is not None else m.get("externalId") == external_id)
        ]
        params = f"name={name or ''}, externalId={external_id or ''}"
        return 200, mr.RegisteredModel, find_one(found, "registered model", params)

    def _list_registered_models(self, *, query: dict[str, str], body: bytes) -> tuple[int, Any, Any]:
        return page(list(self.registered_models.values()), query, mr.RegisteredModelList)
