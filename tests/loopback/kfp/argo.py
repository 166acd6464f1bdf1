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


def in_dependency_order(tasks: dict[str, Any]) -> list[str]:
    """A DAG's task keys, each after the tasks it depends on: the order a cluster starts them."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name not in order:
            for upstream in tasks[name].get("dependentTasks", []):
                visit(upstream)
            order.append(name)

    for name in tasks:
        visit(name)
    return order


class ArgoNodes:
    """The nodes of a KFP v2 workflow as argocompiler builds it and Argo runs it.

    Names: a DAG task's node is `<its DAG's node name>.<task>` (argo-workflows v4.0.5
    workflow/controller/dag.go 112-114 taskNodeName), so a name follows from the DAGs around it, never from where
    the node hangs. Every node that runs a template is a retry node whose attempt is `<name>(0)`: KFP's manifests
    give Argo templateDefaults with a retryStrategy (kubeflow/pipelines 2.17.0
    manifests/kustomize/third-party/argo/base/workflow-controller-configmap-patch.yaml); the workflow's own node
    is retried the same way, `<workflow>(0)` running the entrypoint.

    Parents: a task without dependencies is a child of its DAG's node; a task with dependencies is a child of
    each dependency's outbound node instead (dag.go 505-528), and a retry node's outbound node is its last
    attempt (workflow/controller/operator.go 3251-3255). argocompiler (2.17.0
    backend/src/v2/compiler/argocompiler/dag.go) makes `root` depend on `root-driver` (170), each task's DAG
    or executor on its `-driver` (277, 335), each driver on the task's dependentTasks (269, 316) and a
    ParallelFor's `iteration-iterations` on `iteration-driver` (473). So `root` hangs under `root-driver(0)`,
    `yolo-train` under `yolo-train-driver(0)`, and that driver under `fetch-dataset(0)` when the training reads
    the download's output.

    A ParallelFor is its task's node (the loop template, dag.go 392-405) holding `iteration-driver` and the
    TaskGroup `iteration-iterations` (dag.go 584-596 in Argo), whose expanded tasks are
    `iteration-iterations(i:i)`, each running `iteration-item-driver` and `iteration-item` (dag.go 423-486).
    Only what the listed steps need is built: their DAGs and, as nodes without pods, the tasks they depend on.
    """

    def __init__(self, run: Run, error: dict[str, Any] | None):
        self.run, self.error = run, error
        self.nodes: dict[str, dict[str, Any]] = {}
        self.components = run.spec.get("components") or {}
        self.listed = {(step.dags, step.key): label for label, step in run.steps.items() if label in run.tasks}

    @staticmethod
    def executor_path(run: Run, label: str) -> str:
        """The name of the step's executor pod: its DAGs' names, whatever the nodes hang under."""
        step = run.steps[label]
        path = f"{run.workflow}(0).root(0)"
        for key, iteration in step.dags:
            path = f"{path}.{key}(0)"
            if iteration is not None:
                path = f"{path}.iteration-iterations({iteration}:{iteration})(0).iteration-item(0)"
        return f"{path}.{step.key}(0).executor(0)"

    def _node(self, path: str, display: str, parents: list[str]) -> dict[str, Any]:
        if path not in self.nodes:
            self.nodes[path] = {"display": display, "children": [], "pods": []}
        for parent in parents:
            if path not in self.nodes[parent]["children"]:
                self.nodes[parent]["children"].append(path)
        return self.nodes[path]

    def _task(self, dag: str, key: str, after: list[str], under: str | None = None) -> str:
        """The retry node of task `key` in the DAG node `dag`, hung under `after` (its dependencies' outbound
        nodes) or, without dependencies, under `under` or the DAG; returns its attempt, its outbound node."""
        path = f"{dag}.{key}"
        self._node(path, key, after or [under or dag])
        self._node(f"{path}(0)", f"{key}(0)", [path])
        return f"{path}(0)"

    def details(self) -> list[dict[str, Any]]:
        workflow = self.run.workflow
        self._node(workflow, workflow, [])
        entrypoint = f"{workflow}(0)"
        self._node(entrypoint, entrypoint, [workflow])
        driver = self._task(entrypoint, "root-driver", [])
        root = self._task(entrypoint, "root", [driver])
        self._dag(root, self.run.spec["root"]["dag"]["tasks"], ())
        # The API server builds task details from the workflow's Status.Nodes, a Go map keyed by node ID
        # (common/util/workflow.go NodeStatuses, server/api_converter.go toApiPipelineTaskDetail): the list is
        # not in the DAG's order. Listed here by node ID, a fixed order that is not the DAG's either.
        return [self._detail(path) for path in sorted(self.nodes, key=lambda path: fnv1a32(path))]

    def _contains(self, chain: tuple[tuple[str, int | None], ...], key: str) -> set[int | None]:
        """The loop iterations (None outside a loop) of task `key` in the DAG at `chain` that hold listed steps."""
        found = set()
        for dags, step in self.listed:
            if dags == chain and step == key:
                found.add(None)
            elif dags[: len(chain)] == chain and len(dags) > len(chain) and dags[len(chain)][0] == key:
                found.add(dags[len(chain)][1])
        return found

    def _dag(self, dag: str, tasks: dict[str, Any], chain: tuple[tuple[str, int | None], ...]) -> None:
        inside = {key: self._contains(chain, key) for key in tasks}
        needed = {key for key, held in inside.items() if held}
        for key in reversed(in_dependency_order(tasks)):  # and what they depend on, which ran before them
            if key in needed:
                needed.update(tasks[key].get("dependentTasks", []))
        outbound: dict[str, str] = {}
        for key in in_dependency_order(tasks):
            if key not in needed:
                continue
            task = tasks[key]
            after = [outbound[d] for d in task.get("dependentTasks", [])]
            component = self.components.get(task["componentRef"]["name"], {})
            if "parameterIterator" in task or "artifactIterator" in task:
                loop = outbound[key] = self._task(dag, key, after)
                driver = self._task(loop, "iteration-driver", [])
                group = f"{loop}.iteration-iterations"
                for i in sorted(i for i in inside[key] if i is not None):
                    self._node(group, "iteration-iterations", [driver])
                    item = self._task(loop, f"iteration-iterations({i}:{i})", [], under=group)
                    item_driver = self._task(item, "iteration-item-driver", [])
                    body = self._task(item, "iteration-item", [item_driver])
                    self._dag(body, component["dag"]["tasks"], (*chain, (key, i)))
                continue
            driver = self._task(dag, f"{key}-driver", after)
            attempt = outbound[key] = self._task(dag, key, [driver])
            if "dag" in component:
                if inside[key]:
                    self._dag(attempt, component["dag"]["tasks"], (*chain, (key, None)))
            elif (label := self.listed.get((chain, key))) is not None:
                pod = self._task(attempt, "executor", [])
                self.nodes[pod]["task"] = self.run.tasks[label]
                self.nodes[f"{dag}.{key}"]["outputs_of"] = self.run.tasks[label]

    def _pods(self, path: str) -> list[Task]:
        """The listed pods a node runs: those named inside it (its attempts, its DAG's tasks). Not its children:
        a node's children include the tasks that depend on it."""
        inside = (f"{path}.", f"{path}(")
        return [n["task"] for p, n in self.nodes.items() if "task" in n and (p == path or p.startswith(inside))]

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
        elif not pods:  # a driver, or a task a listed one depends on: it ran before the listed pods
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
