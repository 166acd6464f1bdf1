"""The loopback Model Registry: its settings, the routes of /api/model_registry/v1, and kube-rbac-proxy in front."""

from __future__ import annotations

import contextlib
import itertools
import re
import traceback
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import mr_openapi.models as mr
from pydantic import BaseModel

from tests.loopback.base import ApiError, Handler, LoopbackServer, Request
from tests.loopback.model_registry.artifacts import ArtifactsApi
from tests.loopback.model_registry.entities import NotImplementedHere
from tests.loopback.model_registry.model_versions import ModelVersionsApi
from tests.loopback.model_registry.registered_models import RegisteredModelsApi
from tests.loopback.model_registry.validation import check_response

API = "/api/model_registry/v1"  # the prefix of every path in mr_openapi's ModelRegistryServiceApi

# kube-rbac-proxy's answer to a token that is valid but may not use the registry.
FORBIDDEN = (
    b"Forbidden (user=system:serviceaccount:kubeflow-user:default-editor, verb=get, resource=services, "
    b"subresource=proxy)\n"
)


class ModelRegistryServer(RegisteredModelsApi, ModelVersionsApi, ArtifactsApi, LoopbackServer):
    """The server. Use `start()`/`stop()`, or the fixtures in tests/test_registry.py."""

    name = "model-registry"
    methods = ("GET", "POST", "PATCH", "PUT", "DELETE")

    def __init__(
        self, *, token: str | None = None, forbidden: tuple[str, ...] = (), tls: tuple[Path, Path] | None = None
    ):
        super().__init__(tls=tls)
        self.token = token
        self.forbidden = set(forbidden)
        self.bugs: list[str] = []  # answers that failed check_response, and crashes
        self.races: list[tuple[str, str, Any]] = []  # (method, path regex, what another client does first)
        self.registered_models = {}
        self.versions = {}
        self.artifacts = {}
        self.artifact_parent = {}
        self._context_ids = itertools.count(1)
        self._artifact_ids = itertools.count(1)

    # Test helpers.

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

    def writes(self) -> list[Request]:
        """The requests that asked for a change (POST, PATCH), whatever the answer."""
        return [r for r in self.requests if r.method in ("POST", "PATCH")]

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

    def _routes(self) -> list[tuple[str, dict[str, Callable[..., Any]]]]:
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

    # HTTP.

    def serve(self, http: Handler, record: Request) -> None:
        if self.token is not None:
            # kube-rbac-proxy (or Istio) in front of the registry: plain-text refusals.
            header = http.headers.get("Authorization", "")
            sent = header[len("Bearer ") :] if header.startswith("Bearer ") else None
            if sent in self.forbidden:
                return http.send(403, FORBIDDEN, "text/plain; charset=utf-8")
            if sent != self.token:
                return http.send(401, b"Unauthorized\n", "text/plain; charset=utf-8")
        action = self._race_for(record.method, record.path)
        if action is not None:
            action()
        try:
            status, model, payload = self.dispatch(record.method, record.path, record.query, record.body)
        except ApiError:
            raise
        except Exception:  # a bug here: say so rather than drop the connection
            self.bugs.append(traceback.format_exc())
            raise ApiError(500, f"loopback Model Registry failed: {traceback.format_exc()}") from None
        try:
            check_response(model, payload)
        except AssertionError as exc:
            self.bugs.append(str(exc))
            raise ApiError(500, f"loopback Model Registry bug: {exc}") from None
        http.send_json(status, payload)

    def error_body(self, error: ApiError) -> Any:
        # The Go server's ErrorResponse: {"code": <status text>, "message": ...}; its 422 for a missing
        # required field carries the 400 status text (DefaultErrorHandler).
        code = HTTPStatus(400 if error.status == 422 else error.status).phrase
        body = {"code": code, "message": error.message}
        check_response(mr.Error, body)
        return body

    def carry_out(self, http: Handler, record: Request) -> None:
        with contextlib.suppress(ApiError):
            self.dispatch(record.method, record.path, record.query, record.body)
