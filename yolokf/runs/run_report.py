"""A cluster run as yolokf reports it (`RunReport`): its state, each task's state, pod and error, and the run's
outputs, read from the KFP API in one place. Nothing here draws or waits.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from yolokf.core.errors import ClusterError, UsageError
from yolokf.runs.kfp_api import Cluster
from yolokf.runs.progress import Epoch
from yolokf.runs.steplogs import (
    NO_NAMES,
    Node,
    PipelineNames,
    StepPod,
    pipeline_names,
    step_pods,
)

TERMINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED")


# A PAUSED run moves again only when someone resumes it; following it would poll forever.
STOP_STATES = ("PAUSED",)


# RUNTIME_STATE_UNSPECIFIED (or no state) is what the server reports before it has scheduled a run. Past this
# many seconds of it, yolokf stops following instead of polling forever.
UNSPECIFIED_LIMIT = 600.0


UNSPECIFIED_STATES = ("RUNTIME_STATE_UNSPECIFIED",)


@dataclass
class StepProgress:
    """A running training's place, from its log: the latest epoch and the best main figure so far."""

    name: str
    epoch: Epoch | None
    best: tuple[str, float] | None = None
    seconds_left: float | None = None

    def line(self, *, best: bool = False) -> str:
        """e.g. `train  epoch 12/50  mAP50 0.613  mAP50-95 0.402  (8 min left)`."""
        if self.epoch is None:
            return f"{self.name}  starting"
        parts = [f"{self.name}  epoch {self.epoch.epoch}/{self.epoch.epochs}"]
        figures = self.epoch.readable()
        shown = ("top1_accuracy",) if "top1_accuracy" in figures else ("mAP50", "mAP50-95")
        parts += [f"{name} {figures[name]:.3f}" for name in shown if name in figures]
        if best and self.best:
            parts.append(f"best {self.best[0]} {self.best[1]:.3f}")
        if self.seconds_left is not None and self.epoch.epoch < self.epoch.epochs:
            parts.append(f"({format_seconds(self.seconds_left)} left)")
        return "  ".join(parts)


@dataclass
class TaskState:
    name: str
    state: str
    seconds: float | None = None
    error: str | None = None
    outputs: dict[str, list[str]] = field(default_factory=dict)
    is_step: bool = True  # False for the run's own DAG task
    last_change: datetime.datetime | None = None  # when it ended, else when it started
    pod: StepPod | None = None  # the container that ran it, where the nodes show it (Argo on KFP 2.17)
    step: str = ""  # the name `yolokf logs --step` takes: the task's name in the UI
    started: datetime.datetime | None = None

    @property
    def trial(self) -> int | None:
        return self.pod.trial if self.pod else None


@dataclass
class RunReport:
    """A run as `yolokf status` shows it."""

    run_id: str
    name: str
    state: str
    url: str
    created_at: datetime.datetime | None = None
    finished_at: datetime.datetime | None = None
    error: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)  # the run arguments: what the training step got
    tasks: list[TaskState] = field(default_factory=list)
    progress: list[StepProgress] = field(default_factory=list)  # the running trainings' epochs, while followed
    terminated: bool = False  # someone asked the cluster to stop it: it went CANCELING (KFP 2.17 ends it FAILED)

    @property
    def seconds(self) -> float | None:
        if not self.created_at:
            return None
        end = self.finished_at or datetime.datetime.now(datetime.timezone.utc)
        return max(0.0, (end - _aware(self.created_at)).total_seconds())

    @property
    def current_task(self) -> TaskState | None:
        """The task to show: the last one running, else the one that changed last (its times are whole seconds, so
        tasks that changed within the same second keep the order they ran in, `_in_run_order`)."""
        steps = [t for t in self.tasks if t.is_step]
        running = [t for t in steps if t.state == "RUNNING"]
        if running:
            return running[-1]
        epoch = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
        ranked = sorted(enumerate(steps), key=lambda item: (item[1].last_change or epoch, item[0]))
        return ranked[-1][1] if ranked else None


def _aware(moment: datetime.datetime) -> datetime.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def _time(moment: datetime.datetime | None) -> datetime.datetime | None:
    """A timestamp of the API, or None where it means "not yet": the server sends 1970-01-01 for unset times."""
    if moment is None or moment.year <= 1970:
        return None
    return _aware(moment)


def _error_text(error: Any) -> str | None:
    if error is None:
        return None
    message = getattr(error, "message", None) if not isinstance(error, dict) else error.get("message")
    return (message or "").strip() or None


def report(cluster: Cluster, run: Any, names: PipelineNames = NO_NAMES) -> RunReport:
    """Summarise a kfp_server_api V2beta1Run: one task per step container where the nodes show them."""
    details = getattr(getattr(run, "run_details", None), "task_details", None) or []
    nodes = [
        Node(
            t.display_name or t.task_id or "",
            str(t.state or "PENDING"),
            tuple(c.pod_name for c in t.child_tasks or [] if c.pod_name),
            i,
        )
        for i, t in enumerate(details)
    ]
    pods = step_pods(nodes, names)
    if pods:
        tasks = [_task_state(details[p.node.index], p, names, [details[i] for i in p.members]) for p in pods]
    else:  # not Argo's nodes (an older or another backend): every listed task but the run's own DAG
        tasks = [_task_state(t, None, names, [t]) for t in details]
    tasks = _in_run_order(tasks, names)
    runtime = run.runtime_config
    state = str(run.state or "RUNTIME_STATE_UNSPECIFIED")
    # A terminated run is CANCELING, then ends FAILED, not CANCELED (KFP 2.17 resource/resource_manager.go
    # 1537-1540): what tells it from a failure is the CANCELING in its history (storage/run_store.go 618-623).
    history = [str(entry.state) for entry in getattr(run, "state_history", None) or []]
    terminated = state in ("CANCELING", "FAILED", "CANCELED") and "CANCELING" in (state, *history)
    error = _error_text(run.error) or next((t.error for t in tasks if t.error), None)
    if terminated and error is None and state != "CANCELING":
        error = f"The run was terminated (KFP reports a terminated run as {state}); no step failed on its own."
    return RunReport(
        run_id=run.run_id,
        name=run.display_name or run.run_id,
        state=state,
        url=cluster.run_url(run.run_id),
        created_at=_time(run.created_at),
        finished_at=_time(run.finished_at) if str(run.state) in TERMINAL_STATES else None,
        error=error,
        parameters=dict(getattr(runtime, "parameters", None) or {}),
        tasks=tasks,
        terminated=terminated,
    )


def _in_run_order(tasks: list[TaskState], names: PipelineNames) -> list[TaskState]:
    """Tasks in the order they ran: the API server lists them from a Go map (the workflow's nodes by ID,
    server/api_converter.go toApiPipelineTaskDetail), not in the DAG's order. By start (the ones not started last);
    within one second (the API's times are whole seconds), by the pipeline's dependency order, then trial number."""
    never = datetime.datetime.max.replace(tzinfo=datetime.timezone.utc)

    def key(item: tuple[int, TaskState]) -> tuple[Any, ...]:
        index, task = item
        trial = task.trial if task.trial is not None else -1
        rank = names.rank(task.pod.key) if task.pod else len(names.ranks)  # no pod: no task key to place
        return (task.started or never, rank, trial, index)

    return [task for _, task in sorted(enumerate(tasks), key=key)]


def _task_state(task: Any, pod: StepPod | None, names: PipelineNames, members: list[Any]) -> TaskState:
    start, end = _time(task.start_time) or _time(task.create_time), _time(task.end_time)
    outputs: dict[str, list[str]] = {}
    for member in members:  # a step's artifacts sit on one of its nodes
        for key, value in (member.outputs or {}).items():
            outputs.setdefault(key, []).extend(value.artifact_ids or [])
    step = names.name(pod.key) if pod else task.display_name or task.task_id
    label = f"{step} #{pod.trial}" if pod and pod.trial is not None else step
    return TaskState(
        label,
        str(task.state or "PENDING"),
        (end - start).total_seconds() if start and end else None,
        next((e for m in members if (e := _error_text(m.error))), None),
        outputs,
        is_step=pod is not None or bool(task.parent_task_id) or not task.child_tasks,
        last_change=end or start,
        pod=pod,
        step=step,
        started=start,
    )


def run_names(cluster: Cluster, run: Any) -> PipelineNames:
    """The task names and executor templates of the run's pipeline: its spec, or its pipeline version's."""
    spec = getattr(run, "pipeline_spec", None)
    reference = getattr(run, "pipeline_version_reference", None)
    if spec is None and reference is not None and reference.pipeline_version_id:
        try:
            version = cluster.call(
                f"Reading pipeline version {reference.pipeline_version_id}",
                cluster.client.get_pipeline_version,
                reference.pipeline_id,
                reference.pipeline_version_id,
            )
        except ClusterError:
            return NO_NAMES  # task keys and the default template still name the steps and pods
        spec = version.pipeline_spec
    return pipeline_names(spec)


def get_report(cluster: Cluster, run_id: str) -> RunReport:
    """The current state of run `run_id`."""
    run_id = run_id.strip()
    if not run_id:
        raise UsageError("RUN_ID is empty: give the id `yolokf run --host ...` printed.")
    run = cluster.call(f"Reading run {run_id}", cluster.client.get_run, run_id)
    return report(cluster, run, run_names(cluster, run))


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
