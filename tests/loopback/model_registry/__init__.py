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
  and for find (`/registered_model?name=`...) with no match or with several, which the client turns into None; 400
  for ids that are not numbers.
- Names compare as on the registry's default database, MySQL 8 (utf8mb4_0900_ai_ci): a find by name is
  `name LIKE ?` (`_` and `%` are wildcards, `\\` escapes), a create refuses a name equal to another, both ignoring
  case and accents (entities.like, same_name). Registered models and versions share one id sequence (both are MLMD
  contexts), artifacts have their own; times are milliseconds since the epoch, as strings.
- Lists take pageSize, orderBy (ID, CREATE_TIME, LAST_UPDATE_TIME), sortOrder and nextPageToken; the
  last page has nextPageToken "" (the client's Pager depends on that to stop). filterQuery is refused
  with 501: the loopback does not implement the filter language.

`token` makes it answer 401 "Unauthorized" (text/plain, as kube-rbac-proxy in front of the registry
does) to a request without `Authorization: Bearer <token>`; a token in `forbidden` gets 403. `fail()`
injects an error status, a dropped connection or a stall. Every request is recorded in `requests`.

The modules: server (settings, routes, the proxy in front), registered_models, model_versions and artifacts (the
endpoints), entities (ids, times, finds, pages), validation (bodies and answers against the client's models).
"""

from tests.loopback.base import ApiError
from tests.loopback.model_registry.entities import NotImplementedHere
from tests.loopback.model_registry.server import API, FORBIDDEN, ModelRegistryServer
from tests.loopback.model_registry.validation import check_response, parse

__all__ = ["API", "FORBIDDEN", "ApiError", "ModelRegistryServer", "NotImplementedHere", "check_response", "parse"]
