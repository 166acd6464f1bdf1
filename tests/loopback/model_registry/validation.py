"""Request bodies and answers checked against the client's OWN generated models (`mr_openapi.models`), as the Go
server, generated from the same OpenAPI spec, decodes them."""

from __future__ import annotations

import json
import types
import typing
from typing import Any

import mr_openapi.models as mr
from pydantic import BaseModel, ValidationError

from tests.loopback import base
from tests.loopback.base import ApiError

# oneOf models of the spec and the field that tells their variants apart.
DISCRIMINATORS = {
    "MetadataValue": "metadataType",
    "Artifact": "artifactType",
    "ArtifactCreate": "artifactType",
    "ArtifactUpdate": "artifactType",
}


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


def _unknown(key: str) -> ApiError:
    return ApiError(400, f'json: unknown field "{key}"')


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
    for key, value, field in base.fields(doc, fields, _unknown):
        nested = _nested(field.annotation)
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
