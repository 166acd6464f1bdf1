"""Authorization: RBAC as a set of granted (group, resource, verb) rules, in every namespace; a request outside them
is answered 403 as RBAC answers, and a SelfSubjectAccessReview answers from them."""

from __future__ import annotations

import json
from typing import Any

from tests.loopback.base import ApiError, Handler
from tests.loopback.kube.decoding import check_model, deserialize
from yolokf.core.errors import UsageError


def forbidden(namespace: str, group: str, resource: str, verb: str, name: str = "") -> ApiError:
    kind = f"{resource.split('/')[0]}.{group}" if group else resource.split("/")[0]
    return ApiError(
        403,
        f'{kind}{f" {json.dumps(name)}" if name else ""} is forbidden: User "system:serviceaccount:{namespace}:'
        f'pipeline-runner" cannot {verb} resource "{resource}" in API group "{group}" in the namespace '
        f'"{namespace}"',
    )


class AuthorizationApi:
    granted: frozenset[tuple[str, str, str]]
    reviews: list[dict[str, Any]]

    def _authorize(self, namespace: str, group: str, resource: str, verb: str, name: str = "") -> None:
        if (group, resource, verb) not in self.granted:
            raise forbidden(namespace, group, resource, verb, name)

    def _review(self, http: Handler, body: Any) -> None:
        """A SelfSubjectAccessReview, answered as the API server does: 201 with the review echoed and its status
        (`reason` when RBAC allows it); every token may ask (system:basic-user)."""
        try:
            check_model("V1SelfSubjectAccessReview", body)
            deserialize("V1SelfSubjectAccessReview", body)
        except (UsageError, ValueError) as exc:
            raise ApiError(400, f"strict decoding error: {exc}") from None
        if (body.get("apiVersion", "authorization.k8s.io/v1"), body.get("kind", "SelfSubjectAccessReview")) != (
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
        ):
            raise ApiError(400, "the API version in the data does not match the path")
        spec = body["spec"]
        attributes = spec.get("resourceAttributes")
        if (attributes is None) == (spec.get("nonResourceAttributes") is None):
            raise ApiError(
                422,
                'SelfSubjectAccessReview.authorization.k8s.io "" is invalid: spec.resourceAttributes: Invalid value: '
                '"null": exactly one of nonResourceAttributes or resourceAttributes must be specified',
            )
        status: dict[str, Any] = {"allowed": False}
        if attributes is not None:
            self.reviews.append(attributes)
            resource = attributes.get("resource", "")
            if attributes.get("subresource"):
                resource += "/" + attributes["subresource"]
            if (attributes.get("group", ""), resource, attributes.get("verb", "")) in self.granted:
                status = {"allowed": True, "reason": 'RBAC: allowed by RoleBinding "yolokf-trainjobs"'}
        http.send_json(201, {**body, "metadata": body.get("metadata") or {}, "status": status})
