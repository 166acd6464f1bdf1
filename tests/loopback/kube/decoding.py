"""How the API server reads a request body: decoding against the official client's models, where an unknown field
is refused (`fieldValidation=Strict`) or dropped with a warning (the default, Warn; KEP-2885, k8s 1.27 GA:
"Warn ... This is the default in v1.23+", the API reference's fieldValidation parameter)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.loopback import base
from yolokf.core.errors import UsageError
from yolokf.pipeline.trainjob import _inner

TRUE = ("1", "t", "T", "true", "True", "TRUE")  # Go's strconv.ParseBool, as the API server reads watch=


def check_model(klass: str, value: Any, where: str = "") -> None:
    """UsageError naming the first key in `value` (JSON) that the official client's model `klass` (or a model inside
    it) does not define, as the API server's strict decoding refuses it."""
    from kubernetes import client

    inner = base.container(klass)
    if inner and inner[0] == "list" and isinstance(value, list):
        for index, item in enumerate(value):
            check_model(inner[1], item, f"{where}[{index}]")
    elif inner and inner[0] == "dict" and isinstance(value, dict):
        for key, item in value.items():
            check_model(inner[1], item, f"{where}.{key}")
    elif hasattr(client, klass) and hasattr(getattr(client, klass), "attribute_map"):
        model = getattr(client, klass)
        if not isinstance(value, dict):
            raise UsageError(f"{where or klass}: expected an object")
        attributes = {key: attribute for attribute, key in model.attribute_map.items()}

        def unknown(key: str) -> UsageError:
            return UsageError(f'unknown field "{f"{where}.{key}" if where else key}"')

        for key, item, attribute in base.fields(value, attributes, unknown):
            check_model(model.openapi_types[attribute], item, f"{where}.{key}" if where else key)


@dataclass
class _Response:
    """What ApiClient.deserialize reads a body from."""

    data: str


def deserialize(klass: str, value: Any) -> Any:
    """`value` as the official client's model `klass`: ValueError where the client refuses it."""
    from kubernetes import client

    return client.ApiClient().deserialize(_Response(json.dumps(value)), klass)


def unknown_fields(model: Any, value: Any, where: str = "") -> list[tuple[dict[str, Any], str, str]]:
    """(the object, its key, the key's path) for each key of `value` that the kubeflow-trainer-api (pydantic) model
    `model`, or a model inside it, does not define: what the API server drops or refuses."""
    import pydantic

    found: list[tuple[dict[str, Any], str, str]] = []
    if isinstance(value, list):
        for index, item in enumerate(value):
            found += unknown_fields(model, item, f"{where}[{index}]")
        return found
    if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)) or not isinstance(value, dict):
        return found
    if "actual_instance" in model.model_fields:  # a oneOf wrapper such as Quantity: a plain value
        return found
    fields = {(info.alias or name): info.annotation for name, info in model.model_fields.items()}
    for key, item in value.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            found.append((value, key, path))
        else:
            found += unknown_fields(_inner(fields[key]), item, path)
    return found
