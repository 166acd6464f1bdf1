"""The core/v1 resources the launcher reads: the pods of a running TrainJob (one per node process), their logs, and
PersistentVolumeClaims."""

from __future__ import annotations

import uuid
from typing import Any

from tests.loopback.base import ApiError, Handler
from tests.loopback.kube.runtime import TrainJobRun


def _pod(namespace: str, name: str, index: int, run: TrainJobRun) -> dict[str, Any]:
    """Node `index`'s pod as the runtime makes it: the TrainJob's runtime patches applied to the `node` container
    and the pod spec (volumes and their mounts, tolerations, node selector, pull secrets), the trainer's image and
    resources."""
    process = run.processes[index] if index < len(run.processes) else None
    code = process.poll() if process else None
    phase = "Running" if code is None else ("Succeeded" if code == 0 else "Failed")
    labels = {"jobset.sigs.k8s.io/jobset-name": name, "batch.kubernetes.io/job-completion-index": str(index)}
    trainer = run.body["spec"]["trainer"]
    container: dict[str, Any] = {"name": "node", "image": trainer.get("image", "")}
    if trainer.get("resourcesPerNode"):
        container["resources"] = trainer["resourcesPerNode"]
    spec: dict[str, Any] = {"containers": [container]}
    for patch in run.body["spec"].get("runtimePatches") or []:
        jobset = ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}
        for job in jobset.get("replicatedJobs") or []:
            if job.get("name") != "node":
                continue
            pod_patch = (((job.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
            for key in ("volumes", "tolerations", "imagePullSecrets"):
                spec[key] = spec.get(key, []) + (pod_patch.get(key) or [])
            if pod_patch.get("nodeSelector"):
                spec["nodeSelector"] = {**spec.get("nodeSelector", {}), **pod_patch["nodeSelector"]}
            for patched in pod_patch.get("containers") or []:
                if patched.get("name") == "node":
                    container["volumeMounts"] = container.get("volumeMounts", []) + (patched.get("volumeMounts") or [])
    metadata = {"name": run.pods[index], "namespace": namespace, "labels": labels}
    metadata["creationTimestamp"] = run.created[index]
    return {"metadata": metadata, "spec": spec, "status": {"phase": phase}}


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

    def _log(self, http: Handler, namespace: str, pod: str, container: str | None, timestamps: bool) -> None:
        """The newest log file of the pod's container, each line with its timestamp when asked (`timestamps`)."""
        for (ns, _), run in list(self.trainjobs.items()):
            for index, log in enumerate(run.logs):
                if ns == namespace and pod == run.pods[index]:
                    if container not in (None, "node"):
                        raise ApiError(400, f"container {container} is not valid")
                    text = log.read_text(errors="replace") if log.is_file() else ""
                    if not timestamps:
                        text = "".join(line.partition(" ")[2] for line in text.splitlines(keepends=True))
                    return http.send_text(200, text, "text/plain")
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
