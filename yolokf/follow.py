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


def report(cluster: Cluster, run: Any) -> RunReport:
    """Summarise a kfp_server_api V2beta1Run."""
    tasks = []
    details = getattr(getattr(run, "run_details", None), "task_details", None) or []
    for task in details:
        start, end = _time(task.start_time) or _time(task.create_time), _time(task.end_time)
        seconds = (end - start).total_seconds() if start and end else None
        outputs = {k: list(v.artifact_ids or []) for k, v in (task.outputs or {}).items()}
        tasks.append(
            TaskState(
                task.display_name or task.task_id,
                str(task.state or "PENDING"),
                seconds,
                _error_text(task.error),
                outputs,
                is_step=bool(task.parent_task_id) or not task.child_tasks,
                last_change=end or start,
            )
        )
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


def get_report(cluster: Cluster, run_id: str) -> RunReport:
    """The current state of run `run_id`."""
    run_id = run_id.strip()
    if not run_id:
        raise UsageError("RUN_ID is empty: give the id `yolokf run --host ...` printed.")
    return report(cluster, cluster.call(f"Reading run {run_id}", cluster.client.get_run, run_id))


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def wait(
    cluster: Cluster,
    run_id: str,
    *,
    timeout: float | None = None,
    poll_interval: float = 5.0,
    on_update: Callable[[RunReport], None] = lambda report: None,
    unspecified_limit: float = UNSPECIFIED_LIMIT,
) -> RunReport:
    """Poll the run until it ends; return its report when it SUCCEEDED.

    Raises RunFailedError on FAILED, CANCELED, SKIPPED, PAUSED, a state that stays unspecified past
    `unspecified_limit` seconds, or `timeout`. kfp's `wait_for_run_completion` is not used: in kfp 2.17 it
    never returns on CANCELED. Ctrl-C (KeyboardInterrupt) propagates: the caller decides what happens to the run.
    """
    started = time.monotonic()
    deadline = started + timeout if timeout else None
    current: RunReport | None = None
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
        current = report(cluster, run)
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
    error = f": {current.error}" if current.error else " (the server gave no error message)"
    raise RunFailedError(
        f"Run {current.name} ({run_id}) {current.state} after {format_seconds(current.seconds)}{error}. "
        f"Details and logs: {current.url}"
    )


def terminate(cluster: Cluster, run_id: str) -> None:
    """Ask the cluster to terminate run `run_id` (it ends as CANCELED)."""
    cluster.call(f"Terminating run {run_id}", cluster.client.terminate_run, run_id)
