"""The Argo workflow behind a run: its nodes (the run's task details), and the names Argo gives nodes and pods."""

from __future__ import annotations

import uuid
from typing import Any

from tests.loopback.kfp.protojson import EPOCH, emit
from tests.loopback.kfp.state import Run, Task


def fnv1a32(text: str) -> int:
    """Go's hash/fnv New32a, as Argo hashes node names (workflow_types.go NodeID, util/pod_name.go)."""
    value = 2166136261
    for byte in text.encode():
        value = ((value ^ byte) * 16777619) % 2**32
    return value


class ArgoNodes:
    """The nodes of a KFP v2 workflow as argocompiler builds it (2.17.0 backend/src/v2/compiler/argocompiler:
    dag.go, container.go): entrypoint -> root-driver, root -> <task>-driver, <task> -> executor; a ParallelFor
    as <task>-iterations with one (i:i) node per iteration holding iteration-item. Every node that runs a
    template is a retry node whose one child is <name>(0): KFP's manifests give Argo templateDefaults with a
    retryStrategy (manifests/kustomize/third-party/argo/base/workflow-controller-configmap-patch.yaml).
    Node names join with "." (or add the suffix); IDs hash them."""

    def __init__(self, run: Run, error: dict[str, Any] | None):
        self.run, self.error = run, error
        self.nodes: dict[str, dict[str, Any]] = {}

    @staticmethod
    def executor_path(run: Run, label: str) -> str:
        step = run.steps[label]
        path = ArgoNodes._task(f"{run.workflow}(0)", "root")
        for key, iteration in step.dags:
            if iteration is None:
                path = ArgoNodes._task(path, key)
            else:
                path = ArgoNodes._task(f"{path}.{key}-iterations({iteration}:{iteration})(0)", "iteration-item")
        return f"{ArgoNodes._task(ArgoNodes._task(path, step.key), 'executor')}"

    @staticmethod
    def _task(parent: str, key: str) -> str:
        """The node a retried DAG task `key` runs in: <parent>.<key>(0)."""
        return f"{parent}.{key}(0)"

    def _node(self, path: str, display: str, parent: str | None) -> dict[str, Any]:
        if path not in self.nodes:
            self.nodes[path] = {"display": display, "children": [], "pods": []}
            if parent is not None:
                self.nodes[parent]["children"].append(path)
        return self.nodes[path]

    def _retried(self, parent: str, path: str, display: str) -> str:
        self._node(path, display, parent)
        self._node(f"{path}(0)", f"{display}(0)", path)
        return f"{path}(0)"

    def _retried_root(self, workflow: str) -> str:
        """The entrypoint is retried too (templateDefaults apply to every template): <workflow>(0) runs it."""
        self._node(f"{workflow}(0)", f"{workflow}(0)", workflow)
        return f"{workflow}(0)"

    def _dag_task(self, parent: str, key: str) -> str:
        self._retried(parent, f"{parent}.{key}-driver", f"{key}-driver")
        return self._retried(parent, f"{parent}.{key}", key)

    def details(self) -> list[dict[str, Any]]:
        run, workflow = self.run, self.run.workflow
        self._node(workflow, workflow, None)
        entrypoint = self._retried_root(workflow)
        for label, task in sorted(run.tasks.items(), key=lambda item: (item[1].created, item[1].index)):
            step = run.steps[label]
            path = self._dag_task(entrypoint, "root")
            for key, iteration in step.dags:
                if iteration is None:
                    path = self._dag_task(path, key)
                    continue
                self._retried(path, f"{path}.{key}-driver", f"{key}-driver")
                group = f"{path}.{key}-iterations"
                self._node(group, f"{key}-iterations", path)
                item = self._retried(
                    group, f"{group}({iteration}:{iteration})", f"{key}-iterations({iteration}:{iteration})"
                )
                path = self._dag_task(item, "iteration-item")
            top = self._dag_task(path, step.key)
            pod = self._retried(top, f"{top}.executor", "executor")
            self.nodes[pod]["task"] = task
            self.nodes[top.removesuffix("(0)")]["outputs_of"] = task
        return [self._detail(path) for path in self.nodes]

    def _pods(self, path: str) -> list[Task]:
        node = self.nodes[path]
        found = [node["task"]] if "task" in node else []
        for child in node["children"]:
            found += self._pods(child)
        return found

    def _detail(self, path: str) -> dict[str, Any]:
        run, node = self.run, self.nodes[path]
        data, workflow = run.data, run.workflow
        pods = self._pods(path)
        if path == workflow:
            state, created, started, ended = (
                data["state"],
                data["created_at"],
                data["created_at"],
                data.get("finished_at"),
            )
        elif not pods:  # a driver: it ran before its task's pod was listed
            state, created, started, ended = "SUCCEEDED", data["created_at"], data["created_at"], data["created_at"]
        else:
            states = [t.state for t in pods]
            mixed = next((s for s in ("FAILED", "RUNNING", "PENDING", "CANCELED") if s in states), "SUCCEEDED")
            state = states[0] if len(set(states)) == 1 else mixed
            created = min(t.created for t in pods)
            started = min((t.started for t in pods if t.started), default=None)
            ended = max(t.ended for t in pods) if all(t.ended for t in pods) else None
        detail: dict[str, Any] = {
            "run_id": data["run_id"],
            "task_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{data['run_id']}/{path}")),
            "display_name": node["display"],
            "create_time": created,
            "start_time": started or EPOCH,
            "end_time": ended or EPOCH,
            "state": state,
            "child_tasks": [{"pod_name": f"{workflow}-{fnv1a32(child)}"} for child in node["children"]],
        }
        if "task" in node:
            if state == "FAILED" and self.error:
                detail["error"] = self.error
        if node.get("outputs_of") is not None and node["outputs_of"].state == "SUCCEEDED":
            detail["outputs"] = {"metrics": {"artifact_ids": ["101"]}, "weights": {"artifact_ids": ["102"]}}
        return emit(detail)


def pod_name(run: Run, label: str) -> str:
    """The pod Argo made for the step `label` ("train", "trial#1"): <workflow>-<template>-<fnv hash>."""
    return f"{run.workflow}-{run.steps[label].template}-{fnv1a32(ArgoNodes.executor_path(run, label))}"


def node_id(run: Run, label: str) -> str:
    return f"{run.workflow}-{fnv1a32(ArgoNodes.executor_path(run, label))}"
