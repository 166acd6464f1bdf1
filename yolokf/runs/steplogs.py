"""Which pod ran which step of a run, and its log, from what a Kubeflow Pipelines 2.17 cluster serves.

The v2beta1 run's task details are Argo's workflow nodes (backend/src/common/util/workflow.go NodeStatuses): a
node's display name, state and times, and its children's node IDs, but not its own ID or pod name
(server/api_converter.go toApiPipelineTaskDetail). Argo names a node `<workflow>-<fnv1a32(node name)>` and its pod
`<workflow>-<template>-<same hash>` (argo-workflows v4 pkg/apis/workflow/v1alpha1/workflow_types.go NodeID,
workflow/util/pod_name.go GeneratePodName), where a node's name is its parent's name plus `.<display name>` (a DAG
task) or plus the suffix its display name adds to the parent's (`(0)` for a retry, `(3:3)` for a loop iteration).
So each node's name follows from the root's by checking the hash against the parent's child IDs, and the pod name
of a step's `executor` node from its name. Logs then come from the UI server's /k8s/pod/logs (live, with the
archive behind it) or the API server's /apis/v1alpha1/runs/{run}/nodes/{node}/log (archived).
docs/cluster.md "Watching a run" says what each answers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from yolokf.runs.kfp_api import get_text

if TYPE_CHECKING:
    from yolokf.runs.kfp_api import Cluster

# kfp derives a task's key from its component function: pipeline.yolo_train -> yolo-train (tests compile it).
TRAIN_STEP = "yolo-train"
# backend/src/v2/compiler/argocompiler/container.go: the DAG task that runs a step's container is "executor",
# its template "system-container-impl", "retry-" before it when the task has a retry policy, and
# "metadata-<annotations>-<labels>-" before that when it sets pod labels or annotations.
EXECUTOR = "executor"
IMPL_TEMPLATE = "system-container-impl"
_SUFFIX = re.compile(r"\([^()]*\)$")
_ITERATION = re.compile(r"-iterations\((\d+):")


def fnv1a32(text: str) -> int:
    """Go's hash/fnv New32a over the UTF-8 bytes of `text`."""
    value = 0x811C9DC5
    for byte in text.encode():
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


@dataclass(frozen=True)
class Node:
    """One task detail of the run: an Argo node as the API lists it."""

    display: str
    state: str
    children: tuple[str, ...]
    index: int  # its place in the API's list


@dataclass(frozen=True)
class StepPod:
    """A step's container as Argo ran it: the node that runs the pod, and the pod's name."""

    key: str  # the pipeline's task key, e.g. yolo-train
    trial: int | None  # the loop iteration for a step inside a sweep's ParallelFor
    attempt: int  # the retry: executor(N)
    node: Node  # the node whose state and times are the step's: the retry node around the pod, else its DAG
    node_id: str
    pod_name: str
    path: str  # the node's name in the workflow
    members: tuple[int, ...] = ()  # the step's nodes (its retry wrapper, DAG, executor...), by place in the list


@dataclass(frozen=True)
class PipelineNames:
    """What the run's pipeline spec says about its tasks: the names the UI shows, and each executor's template."""

    names: dict[str, str]
    templates: dict[str, str]

    def name(self, key: str) -> str:
        return self.names.get(key, key)

    def template(self, key: str) -> str:
        return self.templates.get(key, IMPL_TEMPLATE)


NO_NAMES = PipelineNames({}, {})


def pipeline_names(spec: Any) -> PipelineNames:
    """Task names and executor templates from a pipeline spec as the API returns it (dict, or with platform_spec)."""
    if not isinstance(spec, dict):
        return NO_NAMES
    platform = spec.get("platform_spec") or {}
    spec = spec.get("pipeline_spec", spec)
    executors = (
        ((platform.get("platforms") or {}).get("kubernetes") or {}).get("deploymentSpec", {}).get("executors", {})
    )
    components = spec.get("components") or {}
    names, templates = {}, {}
    dags = [spec.get("root") or {}, *components.values()]
    for dag in dags:
        for key, task in ((dag.get("dag") or {}).get("tasks") or {}).items():
            names[key] = (task.get("taskInfo") or {}).get("name") or key
            component = components.get((task.get("componentRef") or {}).get("name", ""), {})
            if "dag" in component:
                continue
            template = ("retry-" if task.get("retryPolicy") else "") + IMPL_TEMPLATE
            metadata = (executors.get(component.get("executorLabel", "")) or {}).get("podMetadata")
            if metadata is not None:
                annotations, labels = metadata.get("annotations") or {}, metadata.get("labels") or {}
                template = f"metadata-{len(annotations)}-{len(labels)}-{template}"
            templates[key] = template
    return PipelineNames(names, templates)


def step_pods(nodes: list[Node], names: PipelineNames = NO_NAMES) -> list[StepPod]:
    """Every step container the nodes show, its latest attempt only, in the order the API listed them.

    Nodes with the same display name (every step has an `executor`) are told apart by their children's IDs,
    which hash their own name. A leaf (a pod) has none, so a pod is known by its ID in its parent's children,
    and its step's state is its parent's: the retry node around it, or the step's DAG without retries.
    """
    ids = {child for node in nodes for child in node.children}
    roots = [n for n in nodes if ids and all(i.startswith(n.display + "-") for i in ids)]
    if not roots:
        return []
    root = max(roots, key=lambda n: len(n.display))
    workflow = root.display
    displays = sorted({n.display for n in nodes})

    def node_id(path: str) -> str:
        return f"{workflow}-{fnv1a32(path)}"

    def fits(node: Node, path: str) -> bool:
        children = set(node.children)
        return any(node_id(c) in children for d in displays for c in _child_paths(path, d))

    paths: dict[int, str] = {root.index: workflow}
    waiting: dict[str, list[Node]] = {}
    for node in nodes:
        if node is not root and node.children:
            waiting.setdefault(node.display, []).append(node)
    queue = [root]
    while queue:
        parent = queue.pop()
        path, children = paths[parent.index], set(parent.children)
        for display, group in waiting.items():
            for candidate in _child_paths(path, display):
                if node_id(candidate) in children and (found := next((n for n in group if fits(n, candidate)), None)):
                    group.remove(found)
                    paths[found.index] = candidate
                    queue.append(found)
    by_index = {node.index: node for node in nodes}
    resolved = set(paths.values())
    latest: dict[tuple[str, int | None], StepPod] = {}
    for index, path in paths.items():
        parent, children = by_index[index], set(by_index[index].children)
        last = path.rsplit(".", 1)[-1]
        if _SUFFIX.sub("", last) == EXECUTOR:  # the retry node around the executor: its children are attempts
            attempts = [n for n in range(len(children) + 8) if node_id(f"{path}({n})") in children]
            pods = [(f"{path}({n})", n) for n in attempts[-1:]]
        else:  # no retry node: the executor pod sits right in the step's DAG
            pod_path = f"{path}.{EXECUTOR}"
            pods = [(pod_path, 0)] if node_id(pod_path) in children and pod_path not in resolved else []
        for pod_path, attempt in pods:
            parts = pod_path[len(workflow) :].split(".")  # ["" or "(0)" (a retried entrypoint), ..., "executor(N)"]
            if len(parts) < 3:
                continue
            key = _SUFFIX.sub("", parts[-2])
            iteration = next((m for part in parts if (m := _ITERATION.search(part))), None)
            top = workflow + ".".join([*parts[:-2], key])
            members = sorted(i for i, p in paths.items() if p == top or p.startswith((top + "(", top + ".")))
            digest = fnv1a32(pod_path)
            pod = StepPod(
                key,
                int(iteration[1]) if iteration else None,
                attempt,
                parent,
                f"{workflow}-{digest}",
                f"{workflow}-{names.template(key)}-{digest}",
                pod_path,
                tuple(members),
            )
            slot = (key, pod.trial)
            if slot not in latest or latest[slot].attempt <= pod.attempt:
                latest[slot] = pod
    return sorted(latest.values(), key=lambda p: p.node.index)


def _child_paths(path: str, display: str) -> list[str]:
    """The names a node shown as `display` can have under the node named `path`: a DAG task (`.display`), or
    the parent's name with the suffix the display adds (a retry's `(0)`, a loop iteration's `(3:3)`)."""
    last = path.rsplit(".", 1)[-1]
    candidates = [f"{path}.{display}"]
    if display.startswith(last) and display != last:
        candidates.append(path + display[len(last) :])
    return candidates


@dataclass(frozen=True)
class LogRead:
    """A step's log, or why none could be read."""

    text: str | None
    problem: str | None = None


def read_log(cluster: Cluster, run_id: str, pod: StepPod) -> LogRead:
    """The pod's whole log so far: the UI's pod log (live, archive behind it), else the API's archived log."""

    query = {"podname": pod.pod_name}
    if cluster.multi_user and cluster.namespace:
        query["podnamespace"] = cluster.namespace  # required there (422), and checked (403)
    ui = get_text(cluster, f"Reading the log of pod {pod.pod_name}", "/k8s/pod/logs", query, ui=True)
    if ui.status == 200:
        return LogRead(ui.text)
    api = get_text(
        cluster, f"Reading the log of pod {pod.pod_name}", f"/apis/v1alpha1/runs/{run_id}/nodes/{pod.pod_name}/log", {}
    )
    error = _api_log_error(api.text) if api.status == 200 else None
    if api.status == 200 and error is None:
        return LogRead(api.text)
    ui_why = f"the UI's /k8s/pod/logs answered {ui.status}" + (f" ({_short(ui.text)})" if ui.text.strip() else "")
    api_why = (
        f"the API's log answered: {error}"
        if error
        else f"the API's /apis/v1alpha1 log answered {api.status}" + (f" ({_short(api.text)})" if api.text else "")
    )
    return LogRead(None, f"{ui_why}; {api_why}")


def _api_log_error(text: str) -> str | None:
    """server/run_log_server.go answers errors with status 200 and {"error_message", "error_details"}."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        body = json.loads(text)
    except ValueError:
        return None
    if isinstance(body, dict) and set(body) <= {"error_message", "error_details"} and body.get("error_message"):
        return str(body["error_message"])
    return None


def _short(text: str, width: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
