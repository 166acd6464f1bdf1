"""`trainjobs.trainer.kubeflow.org/v1alpha1`: create (bodies read key by key against kubeflow-trainer-api's
models, an unknown field dropped with a warning or, with `fieldValidation=Strict`, refused; a `PET_*` variable in
`spec.trainer.env` and a runtime that does not exist refused as Trainer's webhook refuses them; owner references
checked as the API server checks them), list and watch, get, and delete."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

from tests.loopback.base import ApiError, Handler
from tests.loopback.kube.decoding import TRUE, unknown_fields
from tests.loopback.kube.runtime import TorchRuntime, TrainJobRun
from yolokf.core.errors import UsageError
from yolokf.pipeline.trainjob import check_fields

# Trainer v2.3's TrainJob validating webhook (manifests/base/webhook/manifests.yaml), and the API server's wording of
# a webhook's denial (k8s.io/apiserver pkg/admission/plugin/webhook/errors/statuserror.go `ToStatusErr`).
WEBHOOK = "validator.trainjob.trainer.kubeflow.org"


class TrainJobsApi(TorchRuntime):
    trainjobs: dict[tuple[str, str], TrainJobRun]
    deleted: list[str]
    collected: list[str]
    _lock: Any

    runtimes: set[str]
    pods: dict[tuple[str, str], str]

    def _create(self, http: Handler, namespace: str, body: Any, query: dict[str, str]) -> None:
        """Decoding as the API server decodes (fieldValidation: Strict refuses an unknown field with 400, Warn, the
        default, drops it with a `Warning: 299` header per field, Ignore drops it silently), then admission."""
        mode = query.get("fieldValidation") or "Warn"
        if mode not in ("Strict", "Warn", "Ignore"):
            raise ApiError(400, f'fieldValidation "{mode}" is not a valid value: must be Ignore, Warn or Strict')
        unknown = unknown_fields(TrainerV1alpha1TrainJob, body)
        if unknown and mode == "Strict":
            raise ApiError(
                400,
                'TrainJob in version "v1alpha1" cannot be handled as a TrainJob: strict decoding error: '
                + ", ".join(f'unknown field "{path}"' for _, _, path in unknown),
            )
        for holder, key, _ in unknown:
            del holder[key]
        try:
            check_fields(TrainerV1alpha1TrainJob, body)
            TrainerV1alpha1TrainJob.from_dict(body)
        except (UsageError, ValueError) as exc:
            raise ApiError(400, f"strict decoding error: {exc}") from None
        if (body.get("apiVersion"), body.get("kind")) != ("trainer.kubeflow.org/v1alpha1", "TrainJob"):
            raise ApiError(400, "the API version in the data does not match the path")
        self._check_owners(namespace, body)
        trainer = body["spec"].get("trainer") or {}
        if any(e.get("name", "").startswith("PET_") for e in trainer.get("env") or []):
            raise ApiError(422, "spec.trainer.env: PET_ variables are set by the runtime")
        ref = body["spec"].get("runtimeRef") or {}
        if (
            ref.get("kind", "ClusterTrainingRuntime") == "ClusterTrainingRuntime"
            and ref.get("name") not in self.runtimes
        ):
            # Trainer v2.3 pkg/runtime/core/clustertrainingruntime.go 99-107: the runtime is read, and a failed read
            # is a field.Invalid; pkg/webhooks/trainjob_webhook.go returns it as an aggregate error, which
            # controller-runtime answers with admission.Denied, code 403 (webhook/admission/validator_custom.go).
            value = json.dumps(ref, separators=(",", ":"))
            raise ApiError(
                403,
                f'admission webhook "{WEBHOOK}" denied the request: spec.RuntimeRef: Invalid value: {value}: '
                f'clustertrainingruntimes.trainer.kubeflow.org "{ref.get("name")}" not found: specified '
                "clusterTrainingRuntime must be created before the TrainJob is created",
            )
        name = body["metadata"]["name"]
        with self._lock:
            if (namespace, name) in self.trainjobs:
                raise ApiError(409, f'trainjobs.trainer.kubeflow.org "{name}" already exists')
            body["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), resourceVersion=self._version())
            body["status"] = {}
            run = self.trainjobs[(namespace, name)] = TrainJobRun(body)
        self._start(run, trainer)
        warnings = {"Warning": ", ".join(f'299 - "unknown field \\"{path}\\""' for _, _, path in unknown)}
        http.send_json(201, body, warnings if unknown and mode == "Warn" else None)
        self._collect_later()

    def _check_owners(self, namespace: str, body: dict[str, Any]) -> None:
        """metadata.ownerReferences as the API server validates them (apimachinery
        pkg/api/validation/objectmeta.go `ValidateOwnerReference`: apiVersion, kind, name and uid required), and
        blockOwnerDeletion refused to whoever may not update the owner's finalizers (the
        OwnerReferencesPermissionEnforcement admission plugin, on in most clusters)."""
        for index, owner in enumerate(body["metadata"].get("ownerReferences") or []):
            for field in ("apiVersion", "kind", "name", "uid"):
                if not owner.get(field):
                    raise ApiError(
                        422,
                        f'TrainJob.trainer.kubeflow.org "{body["metadata"].get("name", "")}" is invalid: '
                        f'metadata.ownerReferences[{index}].{field}: Invalid value: "": {field} must not be empty',
                    )
            if owner.get("blockOwnerDeletion"):
                raise ApiError(
                    403,
                    f'trainjobs.trainer.kubeflow.org "{body["metadata"].get("name", "")}" is forbidden: cannot set '
                    "blockOwnerDeletion if an ownerReference refers to a resource you can't set finalizers on: "
                    f'User "system:serviceaccount:{namespace}:pipeline-runner" cannot update resource '
                    f'"{owner["kind"].lower()}s/finalizers" in API group "" in the namespace "{namespace}"',
                )

    def _collect_later(self) -> None:
        threading.Timer(0.2, self.collect_garbage).start()

    def collect_garbage(self) -> list[str]:
        """Delete each TrainJob whose owners are all gone (kube-controller-manager's garbage collector: an object
        whose every ownerReference names an object that does not exist, by uid, is deleted in the background,
        https://kubernetes.io/docs/concepts/architecture/garbage-collection/#owners-dependents); their names."""
        live = set(self.pods.values())
        with self._lock:
            orphans = [
                key
                for key, run in self.trainjobs.items()
                if run.body["metadata"].get("ownerReferences")
                and not any(o["uid"] in live for o in run.body["metadata"]["ownerReferences"])
            ]
            runs = [self.trainjobs.pop(key) for key in orphans]
        for run in runs:
            self._kill(run)
        self.collected.extend(name for _, name in orphans)
        return [name for _, name in orphans]

    def _list(self, http: Handler, namespace: str, query: dict[str, str]) -> None:
        """A list, or with watch=true a stream of watch events (ADDED, then MODIFIED and DELETED as they happen)
        until timeoutSeconds, one JSON object a line, as the API server sends them."""
        selector = query.get("fieldSelector", "")
        wanted = selector.removeprefix("metadata.name=") if selector.startswith("metadata.name=") else None

        def matching() -> dict[str, dict[str, Any]]:
            return {
                name: json.loads(json.dumps(run.body))
                for (ns, name), run in list(self.trainjobs.items())
                if ns == namespace and wanted in (None, name)
            }

        if query.get("watch") not in TRUE:
            items = list(matching().values())
            return http.send_json(
                200,
                {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJobList", "metadata": {}, "items": items},
            )
        http.record.status = 200
        http.send_response(200)
        http.send_header("Content-Type", "application/json")
        http.end_headers()  # HTTP/1.0: the stream ends when the connection closes
        seen: dict[str, dict[str, Any]] = {}
        end = time.monotonic() + float(query.get("timeoutSeconds", "30"))
        while time.monotonic() < end:
            now = matching()
            events = [
                ("ADDED" if name not in seen else "MODIFIED", body)
                for name, body in now.items()
                if seen.get(name) != body
            ]
            events += [("DELETED", body) for name, body in seen.items() if name not in now]
            for kind, body in events:
                http.wfile.write((json.dumps({"type": kind, "object": body}) + "\n").encode())
                http.wfile.flush()
            seen = now
            time.sleep(0.1)

    def _get(self, http: Handler, namespace: str, name: str) -> None:
        run = self.trainjobs.get((namespace, name))
        if run is None:
            raise ApiError(404, f'trainjobs.trainer.kubeflow.org "{name}" not found')
        http.send_json(200, run.body)

    def _patch(self, http: Handler, namespace: str, name: str, patch: Any, content_type: str) -> None:
        """A JSON merge patch (RFC 7386) of the TrainJob's metadata: what a launcher changes (its owners); other
        patch types and spec changes are not what yolokf sends, so they are refused."""
        if content_type.split(";")[0] != "application/merge-patch+json":
            raise ApiError(
                415,
                f"the body of the request was in an unknown format - accepted media types include: "
                f"application/merge-patch+json (got {content_type})",
            )
        if set(patch) - {"metadata"} or set(patch.get("metadata") or {}) - {"ownerReferences", "labels", "annotations"}:
            raise ApiError(422, "the loopback server patches metadata.ownerReferences, labels and annotations only")
        with self._lock:
            run = self.trainjobs.get((namespace, name))
            if run is None:
                raise ApiError(404, f'trainjobs.trainer.kubeflow.org "{name}" not found')
            changed = json.loads(json.dumps(run.body))
            for key, value in patch["metadata"].items():
                if value is None:
                    changed["metadata"].pop(key, None)
                else:
                    changed["metadata"][key] = value
            self._check_owners(namespace, changed)
            changed["metadata"]["resourceVersion"] = self._version()
            run.body = changed
        http.send_json(200, changed)

    def _delete(self, http: Handler, namespace: str, name: str) -> None:
        with self._lock:
            run = self.trainjobs.pop((namespace, name), None)
        if run is None:
            raise ApiError(404, f'trainjobs.trainer.kubeflow.org "{name}" not found')
        self._kill(run)
        self.deleted.append(name)
        http.send_json(200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}})
