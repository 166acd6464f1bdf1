"""`trainjobs.trainer.kubeflow.org/v1alpha1`: create (bodies checked key by key against kubeflow-trainer-api's
models; a `PET_*` variable in `spec.trainer.env` is refused as Trainer's webhook refuses it), list and watch, get,
and delete."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

from tests.loopback.base import ApiError, Handler
from tests.loopback.kube.decoding import TRUE
from tests.loopback.kube.runtime import TorchRuntime, TrainJobRun
from yolokf.core.errors import UsageError
from yolokf.pipeline.trainjob import check_fields


class TrainJobsApi(TorchRuntime):
    trainjobs: dict[tuple[str, str], TrainJobRun]
    deleted: list[str]
    _lock: Any

    def _create(self, http: Handler, namespace: str, body: Any) -> None:
        try:
            check_fields(TrainerV1alpha1TrainJob, body)
            TrainerV1alpha1TrainJob.from_dict(body)
        except (UsageError, ValueError) as exc:
            raise ApiError(400, f"strict decoding error: {exc}") from None
        if (body.get("apiVersion"), body.get("kind")) != ("trainer.kubeflow.org/v1alpha1", "TrainJob"):
            raise ApiError(400, "the API version in the data does not match the path")
        trainer = body["spec"].get("trainer") or {}
        if any(e.get("name", "").startswith("PET_") for e in trainer.get("env") or []):
            raise ApiError(422, "spec.trainer.env: PET_ variables are set by the runtime")
        name = body["metadata"]["name"]
        with self._lock:
            if (namespace, name) in self.trainjobs:
                raise ApiError(409, f'trainjobs "{name}" already exists')
            body["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), resourceVersion=self._version())
            body["status"] = {}
            run = self.trainjobs[(namespace, name)] = TrainJobRun(body)
        self._start(run, trainer)
        http.send_json(201, body)

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

    def _delete(self, http: Handler, namespace: str, name: str) -> None:
        with self._lock:
            run = self.trainjobs.pop((namespace, name), None)
        if run is None:
            raise ApiError(404, f'trainjobs.trainer.kubeflow.org "{name}" not found')
        self._kill(run)
        self.deleted.append(name)
        http.send_json(200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}})
