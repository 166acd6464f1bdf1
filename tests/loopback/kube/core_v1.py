"""The core/v1 resources the launcher reads: the pods of a running TrainJob (one per node process), their logs, and
PersistentVolumeClaims."""

from __future__ import annotations

import uuid
from typing import Any

from tests.loopback.base import ApiError, Handler
from tests.loopback.kube.runtime import TrainJobRun


def _pod(namespace: str, name: str, index: int, run: TrainJobRun) -> dict[str, Any]:
    process = run.processes[index] if index < len(run.processes) else None
    code = process.poll() if process else None
    phase = "Running" if code is None else ("Succeeded" if code == 0 else "Failed")
    labels = {"jobset.sigs.k8s.io/jobset-name": name, "batch.kubernetes.io/job-completion-index": str(index)}
    return {
        "metadata": {"name": f"{name}-node-0-{index}", "namespace": namespace, "labels": labels},
        "spec": {"containers": [{"name": "node", "image": run.body["spec"]["trainer"].get("image", "")}]},
        "status": {"phase": phase},
    }


class CoreV1Api:
    trainjobs: dict[tuple[str, str], TrainJobRun]
    pvcs: dict[str, list[str]]

    def _pods(self, http: Handler, namespace: str, selector: str) -> None:
        wanted = dict(item.split("=", 1) for item in selector.split(",") if item)
        items = [
            pod
            for (ns, name), run in list(self.trainjobs.items())
            if ns == namespace
            for index in range(len(run.processes))
            for pod in [_pod(ns, name, index, run)]
            if all(pod["metadata"]["labels"].get(k) == v for k, v in wanted.items())
        ]
        http.send_json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})

    def _log(self, http: Handler, namespace: str, pod: str, container: str | None) -> None:
        for (ns, name), run in list(self.trainjobs.items()):
            for index, log in enumerate(run.logs):
                if ns == namespace and pod == f"{name}-node-0-{index}":
                    if container not in (None, "node"):
                        raise ApiError(400, f"container {container} is not valid")
                    return http.send_text(200, log.read_text(errors="replace"), "text/plain")
        raise ApiError(404, f'pods "{pod}" not found')

    def _pvc(self, http: Handler, namespace: str, name: str) -> None:
        from kubernetes import client

        modes = self.pvcs.get(name)
        if modes is None:
            raise ApiError(404, f'persistentvolumeclaims "{name}" not found')
        pvc = client.V1PersistentVolumeClaim(
            api_version="v1",
            kind="PersistentVolumeClaim",
            metadata=client.V1ObjectMeta(name=name, namespace=namespace, uid=str(uuid.uuid5(uuid.NAMESPACE_DNS, name))),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=modes,
                resources=client.V1VolumeResourceRequirements(requests={"storage": "10Gi"}),
                volume_mode="Filesystem",
            ),
            status=client.V1PersistentVolumeClaimStatus(phase="Bound", access_modes=modes),
        )
        http.send_json(200, client.ApiClient().sanitize_for_serialization(pvc))
