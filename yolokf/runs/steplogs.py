"""Which pod ran which step of a run, and its log, from what a Kubeflow Pipelines 2.17 cluster serves.

The v2beta1 run's task details are Argo's workflow nodes (backend/src/common/util/workflow.go NodeStatuses): a
node's display name, state and times, and its children's node IDs, but not its own ID or pod name
(server/api_converter.go toApiPipelineTaskDetail). Argo names a node `<workflow>-<fnv1a32(node name)>` and its pod
`<workflow>-<template>-<same hash>` (argo-workflows v4 pkg/apis/workflow/v1alpha1/workflow_types.go NodeID,
workflow/util/pod_name.go GeneratePodName), where a node's name is its DAG's name plus `.<display name>` (a DAG
task, a loop iteration `iteration-iterations(3:3)`, an attempt `yolo-train(0)`), or the workflow's plus `(N)`.
Where a node hangs says nothing of its name: a task with dependencies hangs under the nodes it depends on. So
names are found from the workflow's by checking their hashes against all the child IDs the run lists, and the pod
name of a step's `executor` node from its name. Logs then come from the UI server's /k8s/pod/logs (live, with the
archive behind it) or the API server's /apis/v1alpha1/runs/{run}/nodes/{node}/log (archived).
docs/cluster.md "Watching a run" says what each answers.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from yolokf.core.errors import ClusterUnavailableError
from yolokf.pipeline.components import train_nodes_component, yolo_train
from yolokf.runs.kfp_api import TextAnswer, get_text

if TYPE_CHECKING:
    from yolokf.runs.kfp_api import Cluster

# backend/src/v2/compiler/argocompiler/container.go: the DAG task that runs a step's container is "executor",
# its template "system-container-impl", "retry-" before it when the task has a retry policy, and
# "metadata-<annotations>-<labels>-" before that when it sets pod labels or annotations.
EXECUTOR = "executor"
IMPL_TEMPLATE = "system-container-impl"
_SUFFIX = re.compile(r"\([^()]*\)$")
_ITERATION = re.compile(r"-iterations\((\d+):")


def training_steps() -> tuple[str, ...]:
    """The training steps' task keys: kfp keys a task by its component's name (yolo_train -> yolo-train; the
    `--nodes` launcher, yolo_train_nodes -> yolo-train-nodes)."""
    return (yolo_train.name, train_nodes_component().name)


@functools.cache
def _training_key() -> re.Pattern[str]:
    # A later task of the same name is keyed -2, -3... (kfp/dsl/pipeline_context.py add_task): a sweep's halving
    # rounds train as yolo-train-2, yolo-train-3.
    return re.compile("(?:" + "|".join(map(re.escape, training_steps())) + r")(?:-\d+)?")


def is_training(key: str) -> bool:
    """Whether the task `key` runs one of the training components (in one pod, or across nodes)."""
    return _training_key().fullmatch(key) is not None


def fnv1a32(text: str, value: int = 0x811C9DC5) -> int:
    """Go's hash/fnv New32a over the UTF-8 bytes of `text`; from `value`, the hash of what came before it."""
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
    ranks: dict[str, int] = field(default_factory=dict)  # each task's place in its DAG's dependency order

    def name(self, key: str) -> str:
        return self.names.get(key, key)

    def rank(self, key: str) -> int:
        """Where the task `key` comes in its DAG: after every task it depends on (unknown: last)."""
        return self.ranks.get(key, len(self.ranks))

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
    names: dict[str, str] = {}
    templates: dict[str, str] = {}
    ranks: dict[str, int] = {}
    _rank(spec.get("root") or {}, components, ranks)
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
    return PipelineNames(names, templates, ranks)


def _rank(dag: dict[str, Any], components: dict[str, Any], ranks: dict[str, int]) -> None:
    """Number the tasks of `dag` in the order they can run: each after those it depends on (`dependentTasks`), a
    sub-DAG's tasks (a loop's, a condition's) where the sub-DAG's task comes."""
    tasks = (dag.get("dag") or {}).get("tasks") or {}
    done: set[str] = set()

    def visit(key: str) -> None:
        if key in done or key not in tasks:
            return
        done.add(key)
        for upstream in tasks[key].get("dependentTasks") or []:
            visit(upstream)
        ranks.setdefault(key, len(ranks))
        inner = components.get((tasks[key].get("componentRef") or {}).get("name", ""), {})
        if "dag" in inner:
            _rank(inner, components, ranks)

    for key in tasks:
        visit(key)


def step_pods(nodes: list[Node], names: PipelineNames = NO_NAMES) -> list[StepPod]:
    """Every step container the nodes show, its latest attempt only, in the order the API listed them.

    A node's name is never read from where it hangs: Argo hangs a task that has dependencies under its
    dependencies' last nodes (a `yolo-train` under `yolo-train-driver(0)`), not under its DAG. Names are
    found from the workflow's instead, as Argo makes them: a DAG task is `<its DAG's name>.<display name>`
    (argo-workflows v4.0.5 workflow/controller/dag.go 112-114), an attempt `<retry node's name>(N)`; a name is
    kept when its ID, `<workflow>-<fnv1a32(name)>`, is among the children the run lists. A node of the list is
    then the one with that display name whose children are named inside it (a pod, with none, is known by its
    name alone), and a step's state is that of the retry node around its pod, or of its DAG without retries.
    """
    ids = {child for node in nodes for child in node.children}
    roots = [n for n in nodes if ids and all(i.startswith(n.display + "-") for i in ids)]
    if not roots:
        return []
    workflow = max(roots, key=lambda n: len(n.display)).display
    found = _node_names(workflow, ids, sorted({n.display for n in nodes}))
    by_id = {_node_id(workflow, fnv1a32(name)): name for name in found}
    named: dict[str, list[str]] = {}  # display name -> the names found with it
    for name, display in found.items():
        named.setdefault(display, []).append(name)
    records: dict[str, Node] = {}  # name -> the listed node
    for node in nodes:
        inside = [by_id[c] for c in node.children if c in by_id]
        record = next(
            (n for n in named.get(node.display, []) if any(c.startswith((n + ".", n + "(")) for c in inside)),
            workflow if node.display == workflow else None,
        )
        if record is not None:
            records.setdefault(record, node)
    latest: dict[tuple[str, int | None], StepPod] = {}
    for path in found:
        if path.rsplit(".", 1)[-1] != EXECUTOR:
            continue
        attempts = [n for n in range(len(found)) if f"{path}({n})" in found]
        if attempts:  # the retry node around the executor: its children are attempts
            pod_path, attempt, state = f"{path}({max(attempts)})", max(attempts), records.get(path)
        else:  # no retry node: the executor pod sits right in the step's DAG
            pod_path, attempt, state = path, 0, records.get(path.rsplit(".", 1)[0])
        parts = pod_path[len(workflow) :].split(".")  # ["" or "(0)" (a retried entrypoint), ..., "executor(N)"]
        if state is None or len(parts) < 3:
            continue
        key = _SUFFIX.sub("", parts[-2])
        iteration = next((m for part in parts if (m := _ITERATION.search(part))), None)
        top = workflow + ".".join([*parts[:-2], key])
        members = sorted(n.index for p, n in records.items() if p == top or p.startswith((top + "(", top + ".")))
        digest = fnv1a32(pod_path)
        pod = StepPod(
            key,
            int(iteration[1]) if iteration else None,
            attempt,
            state,
            _node_id(workflow, digest),
            f"{workflow}-{names.template(key)}-{digest}",
            pod_path,
            tuple(members),
        )
        slot = (key, pod.trial)
        if slot not in latest or latest[slot].attempt <= pod.attempt:
            latest[slot] = pod
    return sorted(latest.values(), key=lambda p: p.node.index)


def _node_id(workflow: str, digest: int) -> str:
    return f"{workflow}-{digest}"


def _node_names(workflow: str, ids: set[str], displays: list[str]) -> dict[str, str]:
    """Each node name whose ID is in `ids`, with its display name, found from the workflow's name: `<name>.<display>`
    for every display name listed, and `<name>(N)` (the workflow's own node is retried too). FNV-1a hashes a name
    byte by byte, so each `<name>.` is hashed once and each display name continues from there."""
    found = {workflow: workflow}
    queue = [workflow]
    while queue:
        name = queue.pop()
        prefix = fnv1a32(name + ".")
        for display in displays:
            candidate = f"{name}.{display}"
            if candidate not in found and _node_id(workflow, fnv1a32(display, prefix)) in ids:
                found[candidate] = display
                queue.append(candidate)
        attempt = 0
        while _node_id(workflow, fnv1a32(f"{name}({attempt})")) in ids:  # numbered from 0 without gaps
            if f"{name}({attempt})" not in found:
                found[f"{name}({attempt})"] = f"{found[name]}({attempt})"
                queue.append(f"{name}({attempt})")
            attempt += 1
    return found


SEEN_WINDOW = 20  # lines of what was read last that mark where a log read again continues


def unseen(seen: list[str], lines: list[str]) -> list[str]:
    """The lines of a log read again (`lines`) that follow what was read before (`seen`, its last lines at least),
    found by content, not by count: the kubelet serves only a container's newest log file (rotated at 10 MiB by
    default), so a long training's log can come back shorter, starting after the lines already read. Where the two
    share nothing (the log rotated past them between two reads), all of `lines` is new; lines rotated away unread are
    lost, as with `kubectl logs`."""
    if not seen:
        return lines
    window = seen[-SEEN_WINDOW:]
    for end in range(len(lines), 0, -1):  # the latest place where the window ends, or where a rotated file starts
        size = min(len(window), end)
        if lines[end - size : end] == window[-size:] and (size == len(window) or end == size):
            return lines[end:]
    return lines


@dataclass(frozen=True)
class LogRead:
    """A step's log, or why none could be read."""

    text: str | None
    problem: str | None = None


def read_log(cluster: Cluster, run_id: str, pod: StepPod) -> LogRead:
    """The pod's whole log so far: the UI's pod log (live, archive behind it), else the API's archived log.
    Raises ClusterUnavailableError when the API server's does not answer either, through its retries."""

    query = {"podname": pod.pod_name}
    if cluster.multi_user and cluster.namespace:
        query["podnamespace"] = cluster.namespace  # required there (422), and checked (403)
    try:
        ui = get_text(cluster, f"Reading the log of pod {pod.pod_name}", "/k8s/pod/logs", query, ui=True)
    except ClusterUnavailableError as exc:  # the API server may still have it
        ui, ui_why = TextAnswer(0, ""), f"the UI's /k8s/pod/logs could not be read ({exc})"
    else:
        ui_why = f"the UI's /k8s/pod/logs answered {ui.status}" + (f" ({_short(ui.text)})" if ui.text.strip() else "")
    if ui.status == 200:
        return LogRead(ui.text)
    api = get_text(
        cluster, f"Reading the log of pod {pod.pod_name}", f"/apis/v1alpha1/runs/{run_id}/nodes/{pod.pod_name}/log", {}
    )
    error = _api_log_error(api.text) if api.status == 200 else None
    if api.status == 200 and error is None:
        return LogRead(api.text)
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
