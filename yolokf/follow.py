"""Follow and report runs on a Kubeflow Pipelines cluster: state, tasks, errors, outputs.

Nothing here draws: `wait` hands every new state to a callback (the CLI shows it live) and asks a callback
what to do on Ctrl-C.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from yolokf.errors import ClusterError, RunFailedError, UsageError
from yolokf.kfp_api import Cluster
from yolokf.progress import TAIL_LINES, Epoch, EpochParser, seconds_left, step_error
from yolokf.steplogs import (
    NO_NAMES,
    TRAIN_STEP,
    LogRead,
    Node,
    PipelineNames,
    StepPod,
    pipeline_names,
    read_log,
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

    @property
    def seconds(self) -> float | None:
        if not self.created_at:
            return None
        end = self.finished_at or datetime.datetime.now(datetime.timezone.utc)
        return max(0.0, (end - _aware(self.created_at)).total_seconds())

    @property
    def current_task(self) -> TaskState | None:
        """The task to show: the last one running, else the one that changed last (the server lists in any order;
        its times are whole seconds, so tasks that changed within the same second keep the server's order)."""
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
    runtime = run.runtime_config
    return RunReport(
        run_id=run.run_id,
        name=run.display_name or run.run_id,
        state=str(run.state or "RUNTIME_STATE_UNSPECIFIED"),
        url=cluster.run_url(run.run_id),
        created_at=_time(run.created_at),
        finished_at=_time(run.finished_at) if str(run.state) in TERMINAL_STATES else None,
        error=_error_text(run.error) or next((t.error for t in tasks if t.error), None),
        parameters=dict(getattr(runtime, "parameters", None) or {}),
        tasks=tasks,
    )


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


_MAIN_FIGURES = ("mask_mAP50-95", "pose_mAP50-95", "mAP50-95", "top1_accuracy")


class ProgressWatch:
    """Reads the running training steps' logs at each poll and keeps each one's epochs.

    A log that cannot be read is said once through `notify`; following goes on by state alone.
    """

    def __init__(self, cluster: Cluster, run_id: str, notify: Callable[[str], None]):
        self.cluster, self.run_id, self.notify = cluster, run_id, notify
        self.seen: dict[str, tuple[EpochParser, int]] = {}  # by pod name: the parser and the lines read
        self.told = False

    def update(self, run: RunReport) -> list[StepProgress]:
        rows = []
        for task in run.tasks:
            pod = task.pod
            if pod is None or pod.key != TRAIN_STEP or (task.state != "RUNNING" and pod.pod_name not in self.seen):
                continue
            parser, count = self.seen.get(pod.pod_name, (EpochParser(), 0))
            if task.state == "RUNNING":
                log = read_log(self.cluster, self.run_id, pod)
                if log.text is None:
                    if not self.told and log.problem:
                        why = log.problem.rstrip(".")
                        self.notify(f"No log of {task.name} could be read ({why}); following by state alone.")
                        self.told = True
                else:
                    lines = log.text.splitlines()
                    parser.feed_all(lines[count:] if len(lines) >= count else lines)
                    count = len(lines)
            self.seen[pod.pod_name] = (parser, count)
            if task.state == "RUNNING":
                rows.append(_progress(task.name, parser.epochs))
        return rows


def _progress(name: str, epochs: list[Epoch]) -> StepProgress:
    best = None
    for epoch in epochs:
        figures = epoch.readable()
        main = next((n for n in _MAIN_FIGURES if n in figures), None)
        if main is not None and (best is None or figures[main] > best[1]):
            best = (main, figures[main])
    return StepProgress(name, epochs[-1] if epochs else None, best, seconds_left(epochs))


@dataclass
class Failure:
    """Why a step failed, in its own words where its log has them."""

    step: str
    error: str | None
    tail: list[str]
    command: str
    problem: str | None = None  # why no log could be read


def logs_command(cluster: Cluster, run_id: str, task: TaskState) -> str:
    """The `yolokf logs` command that prints `task`'s whole log (with the flags that reach this cluster)."""
    words = ["yolokf", "logs", run_id, "--step", task.step or task.name]
    if task.trial is not None:
        words += ["--trial", str(task.trial)]
    words += ["--host", cluster.host]
    if cluster.namespace:
        words += ["--namespace", cluster.namespace]
    return " ".join(words)


def explain_failure(cluster: Cluster, run: RunReport) -> Failure | None:
    """The failed step's own error (or its last lines) and the command for its whole log; None if no step failed."""
    failed = [t for t in run.tasks if t.state == "FAILED" and t.pod is not None]
    if not failed:
        return None
    task = failed[-1]
    assert task.pod is not None
    log = read_log(cluster, run.run_id, task.pod)
    command = logs_command(cluster, run.run_id, task)
    if log.text is None:
        return Failure(task.name, None, [], command, log.problem)
    lines = [line for line in log.text.splitlines() if line.strip()]
    error = step_error(lines)
    return Failure(task.name, error, [] if error else lines[-TAIL_LINES:], command)


class StepFailedError(RunFailedError):
    """A run that ended FAILED; `tail` holds the failed step's last log lines when it printed no error line."""

    def __init__(self, message: str, tail: list[str]):
        super().__init__(message)
        self.tail = tail


def wait(
    cluster: Cluster,
    run_id: str,
    *,
    timeout: float | None = None,
    poll_interval: float = 5.0,
    on_update: Callable[[RunReport], None] = lambda report: None,
    unspecified_limit: float = UNSPECIFIED_LIMIT,
    watch: ProgressWatch | None = None,
) -> RunReport:
    """Poll the run until it ends; return its report when it SUCCEEDED.

    With `watch`, each report carries the running trainings' progress from their logs. Raises RunFailedError
    on FAILED (StepFailedError, with the failed step's own error), CANCELED, SKIPPED, PAUSED, a state that stays
    unspecified past `unspecified_limit` seconds, or `timeout`. kfp's `wait_for_run_completion` is not used:
    in kfp 2.17 it never returns on CANCELED. Ctrl-C (KeyboardInterrupt) propagates: the caller decides what
    happens to the run.
    """
    started = time.monotonic()
    deadline = started + timeout if timeout else None
    current: RunReport | None = None
    names: PipelineNames | None = None
    unspecified_since: float | None = None
    while True:
        try:
            run = cluster.call(f"Reading run {run_id}", cluster.client.get_run, run_id)
        except ClusterError as exc:
            if current is None:
                raise
            raise ClusterError(
                f"{exc} yolokf stopped following; the run itself is not affected: yolokf status {run_id}"
            ) from None
        names = names if names is not None else run_names(cluster, run)
        current = report(cluster, run, names)
        if watch is not None:
            current.progress = watch.update(current)
        on_update(current)
        now = time.monotonic()
        if current.state in TERMINAL_STATES or current.state in STOP_STATES:
            break
        if current.state in UNSPECIFIED_STATES:
            unspecified_since = unspecified_since if unspecified_since is not None else now
            if now - unspecified_since >= unspecified_limit:
                raise RunFailedError(
                    f"Run {current.name} ({run_id}) has had no state for {format_seconds(now - unspecified_since)}: "
                    f"the cluster has not scheduled it. yolokf stopped following; check the KFP API server and "
                    f"`yolokf status {run_id}` or {current.url}"
                )
        else:
            unspecified_since = None
        if deadline is not None and now >= deadline:
            raise RunFailedError(
                f"Run {current.name} ({run_id}) is still {current.state} after --timeout "
                f"{format_seconds(timeout)}; it keeps running on the cluster. Follow it with "
                f"`yolokf status {run_id}` or {current.url}"
            )
        time.sleep(poll_interval if deadline is None else max(0.0, min(poll_interval, deadline - now)))
    if current.state == "SUCCEEDED":
        return current
    if current.state == "PAUSED":
        raise RunFailedError(
            f"Run {current.name} ({run_id}) is PAUSED on the cluster after {format_seconds(current.seconds)}; it "
            f"goes on only when resumed. yolokf stopped following: resume it in the UI, then "
            f"`yolokf status {run_id} --wait`. {current.url}"
        )
    failure = explain_failure(cluster, current) if current.state == "FAILED" else None
    head = f"Run {current.name} ({run_id}) {current.state} after {format_seconds(current.seconds)}"
    if failure is not None and failure.error:
        raise StepFailedError(
            f"{head}: step {failure.step}: {failure.error}. Whole log: {failure.command}; details: {current.url}", []
        )
    if failure is not None and failure.tail:
        raise StepFailedError(
            f"{head}: step {failure.step} failed; its last {len(failure.tail)} log lines are above. "
            f"Whole log: {failure.command}; details: {current.url}",
            failure.tail,
        )
    error = f": {current.error}" if current.error else " (the server gave no error message)"
    raise RunFailedError(f"{head}{error}. Details and logs: {current.url}")


def terminate(cluster: Cluster, run_id: str) -> None:
    """Ask the cluster to terminate run `run_id` (it ends as CANCELED)."""
    cluster.call(f"Terminating run {run_id}", cluster.client.terminate_run, run_id)


def find_step(run: RunReport, step: str | None, trial: int | None) -> TaskState:
    """The step `step` (its name as `status` shows it, or its task key; default the training) of `run`."""
    steps = [t for t in run.tasks if t.pod is not None]
    if not steps:
        raise UsageError(
            f"Run {run.name} ({run.run_id}) is {run.state} and no step has a pod yet; try again once a step started."
        )
    named = [t for t in steps if t.pod and (t.pod.key == TRAIN_STEP if step is None else step in (t.step, t.pod.key))]
    if not named:
        have = ", ".join(dict.fromkeys(t.step for t in steps))
        what = "no training step yet" if step is None else f"no step {step!r}"
        raise UsageError(f"Run {run.name} ({run.run_id}) has {what}; its steps: {have}. Pick one with --step NAME.")
    trials = [t.trial for t in named if t.trial is not None]
    if trial is not None:
        named = [t for t in named if t.trial == trial]
        if not named:
            have = ", ".join(str(t) for t in trials) or "none (it is not in a sweep)"
            raise UsageError(f"Step {step or TRAIN_STEP} of run {run.run_id} has no trial {trial}; its trials: {have}.")
    elif len(named) > 1:
        raise UsageError(
            f"Step {named[0].step} of run {run.run_id} ran once per trial: add --trial N, one of "
            f"{', '.join(str(t) for t in trials)}."
        )
    return named[0]


def stream_log(
    cluster: Cluster,
    run_id: str,
    echo: Callable[[str], None],
    *,
    step: str | None = None,
    trial: int | None = None,
    tail: int | None = None,
    follow: bool = False,
    poll_interval: float = 5.0,
    notify: Callable[[str], None] = lambda line: None,
) -> TaskState:
    """Write a step's log to `echo` (its last `tail` lines); with `follow`, go on writing new lines until the
    step ends. Returns the step as last seen. A log that cannot be read raises ClusterError, or with `follow`
    is said once through `notify` while the step is followed by state alone."""
    waiting = False
    while True:  # with `follow`, a step that has not started yet is waited for until the run ends
        run = get_report(cluster, run_id)
        try:
            task = find_step(run, step, trial)
            break
        except UsageError:
            if not follow or run.state in TERMINAL_STATES or run.state in STOP_STATES:
                raise
        if not waiting:
            notify(f"Run {run.name} is {run.state}; waiting for step {step or TRAIN_STEP} to start.")
            waiting = True
        time.sleep(poll_interval)
    names: PipelineNames | None = None
    pod_name, written, told = "", 0, False
    while True:
        assert task.pod is not None
        if task.pod.pod_name != pod_name:
            if pod_name:
                notify(f"Step {task.name} is retried: attempt {task.pod.attempt}, pod {task.pod.pod_name}")
            pod_name, written = task.pod.pod_name, 0
        ended = task.state in TERMINAL_STATES
        started = task.state not in ("PENDING", "RUNTIME_STATE_UNSPECIFIED")  # a pod not running has no log yet
        log = read_log(cluster, run_id, task.pod) if started or not follow else LogRead(None, None)
        if log.text is None:
            message = f"No log of step {task.name} could be read: {(log.problem or '').rstrip('.')}."
            if not follow:
                raise ClusterError(f"{message} Its pod is {task.pod.pod_name}.")
            if started and not told:
                notify(f"{message} Following its state alone.")
                told = True
        else:
            text = log.text if (ended or not follow) else log.text[: log.text.rfind("\n") + 1]  # whole lines
            lines = text.splitlines(keepends=True)
            if written == 0 and tail is not None:
                written = max(0, len(lines) - tail)
            if lines[written:]:
                echo("".join(lines[written:]))
            written = max(written, len(lines))
        if not follow or ended:
            return task
        time.sleep(poll_interval)
        raw = cluster.call(f"Reading run {run_id}", cluster.client.get_run, run_id)
        names = names if names is not None else run_names(cluster, raw)
        task = find_step(report(cluster, raw, names), step or task.step, trial if trial is not None else task.trial)
