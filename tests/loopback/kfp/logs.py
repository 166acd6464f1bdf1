"""Step logs: the UI server's /k8s/pod/logs and the API server's node log, each reading a pod's live log (the
Kubernetes API) or, once the pod ended, Argo's archived one."""

from __future__ import annotations

from tests.loopback.kfp import argo
from tests.loopback.kfp.outcomes import FINAL_STATES
from tests.loopback.kfp.state import KfpState, Run


class PodLogsApi(KfpState):
    def pod_name(self, run_id: str, label: str) -> str:
        """The pod Argo made for the step `label` ("train", "trial#1"): <workflow>-<template>-<fnv hash>."""
        return argo.pod_name(self.runs[run_id], label)

    def node_id(self, run_id: str, label: str) -> str:
        return argo.node_id(self.runs[run_id], label)

    def _pod(self, name: str) -> tuple[Run, str] | None:
        """The run and step label of a pod, by pod name or node ID."""
        for run in self.runs.values():
            for label in run.tasks:
                if name in (self.pod_name(run.data["run_id"], label), self.node_id(run.data["run_id"], label)):
                    return run, label
        return None

    def _pod_namespace(self, run: Run) -> str:
        return self.experiments[run.data["experiment_id"]]["namespace"] or "kubeflow"

    def _live_log(self, name: str, namespace: str) -> str | None:
        """What the Kubernetes API answers for the pod's log: only a pod that exists (by its pod name), has
        started, and lives in `namespace`."""
        found = self._pod(name)
        if found is None:
            return None
        run, label = found
        if name != self.pod_name(run.data["run_id"], label) or namespace != self._pod_namespace(run):
            return None
        task, log = run.tasks[label], run.logs.get(label)
        if log is None or log.gone or task.state in ("PENDING", "RUNTIME_STATE_UNSPECIFIED"):
            return None
        return log.text[log.rotated :]

    def _archived_log(self, name: str) -> str | None:
        """Argo's archived log (archiveLogs): written when the pod ends, found by node ID or pod name."""
        found = self._pod(name) if self.archive_logs else None
        if found is None:
            return None
        run, label = found
        if run.tasks[label].state not in FINAL_STATES:
            return None
        return run.logs[label].text

    def ui_pod_log(self, query: dict[str, str]) -> tuple[int, str]:
        """frontend/server/handlers/pod-logs.ts getPodLogsHandler (2.17.0, lines 81-137)."""
        if not query.get("podname"):
            return 400, "podname argument is required"
        namespace = query.get("podnamespace") or None
        if self.multi_user and not namespace:
            return 422, "podnamespace argument is required"
        if namespace and self.multi_user and namespace not in self.namespaces:
            return 403, "Access denied to namespace"
        live = self._live_log(query["podname"], namespace or "kubeflow")  # k8s-helper.ts getPodLogs
        if live is not None:
            return 200, live
        archived = self._archived_log(query["podname"])  # workflow-helper.ts getPodLogsStreamFromWorkflow
        if archived is not None:
            return 200, archived
        return 500, "Could not get main container logs: Error: Unable to find corresponding log artifact in node."

    def api_node_log(self, run_id: str, node_id: str) -> dict[str, str] | str:
        """server/run_log_server.go ReadRunLogV1 and resource_manager.go ReadLog: status 200 always (the header
        is written before reading), errors as {"error_message", "error_details"}; `follow` is ignored."""
        run = self.runs.get(run_id)
        if run is None:
            message = (
                f"BadRequestError: Failed to read logs for run {run_id} due to run fetching error: "
                f"ResourceNotFoundError: Run {run_id} not found"
            )
            return {"error_message": message, "error_details": message}
        # The pod is read in the run's namespace: "" in single-user mode, which no pod is in.
        namespace = self.experiments[run.data["experiment_id"]]["namespace"]
        live = self._live_log(node_id, namespace) if namespace else None
        if live is not None:
            return live
        archived = self._archived_log(node_id)
        if archived is not None:
            return archived
        if self.archive_logs:
            cause = (
                f"Failed to read logs from archive {node_id} due to error fetching the log file: "
                "The specified key does not exist."
            )
        else:
            cause = (
                f'Failed to read logs from pod {node_id} due to error opening log stream: pods "{node_id}" not found'
            )
        message = f"BadRequestError: Failed to read logs for run {run_id}: InternalServerError: {cause}"
        return {"error_message": message, "error_details": message}
