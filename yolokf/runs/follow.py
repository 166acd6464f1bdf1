"""Follow and report runs on a Kubeflow Pipelines cluster: state, tasks, errors, outputs.

Nothing here draws: `wait` hands every new state to a callback (the CLI shows it live) and asks a callback
what to do on Ctrl-C.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from yolokf.core.errors import ClusterError, ClusterUnavailableError, RunFailedError, UsageError
from yolokf.runs.kfp_api import Cluster
from yolokf.runs.progress import TAIL_LINES, Epoch, EpochParser, seconds_left, step_error
from yolokf.runs.run_report import (
    STOP_STATES,
    TERMINAL_STATES,
    UNSPECIFIED_LIMIT,
    UNSPECIFIED_STATES,
    RunReport,
    StepProgress,
    TaskState,
    format_seconds,
    get_report,
    report,
    run_names,
)
from yolokf.runs.steplogs import (
    SEEN_WINDOW,
    LogRead,
    PipelineNames,
    is_training,
    read_log,
    unseen,
)

_MAIN_FIGURES = ("mask_mAP50-95", "pose_mAP50-95", "mAP50-95", "top1_accuracy")
# While following, an API that stops answering (its server restarting, a proxy dropping connections or answering
# 503) is waited out this long, beyond each request's own retries (kfp_api.RETRY), before yolokf stops following.
OUTAGE_LIMIT = 600.0


class Lifeline:
    """The run, read again at each poll while following. A poll that fails with a transient error (connection,
    timeout, 5xx, 429) after its retries is skipped, for up to OUTAGE_LIMIT seconds of failed polls in a row;
    any other failure stops following at once. Either way the run on the cluster is not affected."""

    def __init__(self, cluster: Cluster, run_id: str):
        self.cluster, self.run_id = cluster, run_id
        self.since: float | None = None  # when the polls started failing

    def read(self) -> Any | None:
        """The run (kfp_server_api's V2beta1Run), or None when the API did not answer this poll."""
        stopped = f"the run itself is not affected: yolokf status {self.run_id}"
        try:
            run = self.cluster.call(f"Reading run {self.run_id}", self.cluster.client.get_run, self.run_id)
        except ClusterUnavailableError as exc:
            now = time.monotonic()
            if self.since is None:
                self.since = now
                self.cluster.notify(
                    f"{exc} yolokf keeps following for up to {format_seconds(OUTAGE_LIMIT)}; the run itself is not "
                    "affected."
                )
            if now - self.since < OUTAGE_LIMIT:
                return None
            raise ClusterError(
                f"{exc} yolokf stopped following after {format_seconds(now - self.since)} without an answer; {stopped}"
            ) from None
        except ClusterError as exc:
            raise ClusterError(f"{exc} yolokf stopped following; {stopped}") from None
        if self.since is not None:
            lasted = format_seconds(time.monotonic() - self.since)
            self.cluster.notify(f"Reading run {self.run_id}: the API answers again, after {lasted}.")
            self.since = None
        return run


class ProgressWatch:
    """Reads the running training steps' logs at each poll and keeps each one's epochs.

    A log that cannot be read is said once through `notify`; following goes on by state alone.
    """

    def __init__(self, cluster: Cluster, run_id: str, notify: Callable[[str], None]):
        self.cluster, self.run_id, self.notify = cluster, run_id, notify
        self.seen: dict[str, tuple[EpochParser, list[str]]] = {}  # by pod name: the parser, the last lines read
        self.told = False

    def update(self, run: RunReport) -> list[StepProgress]:
        rows = []
        for task in run.tasks:
            pod = task.pod
            if pod is None or not is_training(pod.key) or (task.state != "RUNNING" and pod.pod_name not in self.seen):
                continue
            parser, last = self.seen.get(pod.pod_name, (EpochParser(), []))
            if task.state == "RUNNING":
                try:
                    log = read_log(self.cluster, self.run_id, pod)
                except ClusterUnavailableError:  # retried and said already; the next poll reads it again
                    log = LogRead(None)
                if log.text is None:
                    if not self.told and log.problem:
                        why = log.problem.rstrip(".")
                        self.notify(f"No log of {task.name} could be read ({why}); following by state alone.")
                        self.told = True
                else:
                    lines = log.text.splitlines()
                    new = unseen(last, lines)
                    parser.feed_all(new)
                    last = (last + new)[-SEEN_WINDOW:]
            self.seen[pod.pod_name] = (parser, last)
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
    """The failed step's own error (or its last lines) and the command for its whole log; None if no step failed,
    or if the run was terminated: its steps were stopped, they did not fail."""
    failed = [t for t in run.tasks if t.state == "FAILED" and t.pod is not None]
    if not failed or run.terminated:
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
    unspecified past `unspecified_limit` seconds, or `timeout`; an API that stops answering is waited out
    (`Lifeline`). kfp's `wait_for_run_completion` is not used:
    in kfp 2.17 it never returns on CANCELED. Ctrl-C (KeyboardInterrupt) propagates: the caller decides what
    happens to the run.
    """
    started = time.monotonic()
    deadline = started + timeout if timeout else None
    current: RunReport | None = None
    names: PipelineNames | None = None
    unspecified_since: float | None = None
    lifeline = Lifeline(cluster, run_id)
    while True:
        if current is None:  # the first read says at once what is wrong (a wrong id, host or token)
            run = cluster.call(f"Reading run {run_id}", cluster.client.get_run, run_id)
        else:  # later ones wait out an API that stops answering
            run = lifeline.read()
        if run is not None:
            names = names if names is not None else run_names(cluster, run)
            current = report(cluster, run, names)
            if watch is not None:
                current.progress = watch.update(current)
            on_update(current)
        assert current is not None
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
    if current.terminated:
        raise RunFailedError(
            f"Run {current.name} ({run_id}) was terminated after {format_seconds(current.seconds)}: stopped on "
            f"request, no step failed on its own (KFP reports a terminated run as {current.state}). {current.url}"
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
    """Ask the cluster to terminate run `run_id`: it is CANCELING, then ends FAILED (KFP 2.17). A run that is
    already CANCELING or has ended is left as it is: the server answers 400 to terminating it again."""
    try:
        cluster.call(f"Terminating run {run_id}", cluster.client.terminate_run, run_id)
    except ClusterError:
        run = cluster.call(f"Reading run {run_id}", cluster.client.get_run, run_id)
        if str(run.state) not in ("CANCELING", *TERMINAL_STATES):
            raise


def find_step(run: RunReport, step: str | None, trial: int | None) -> TaskState:
    """The step `step` (its name as `status` shows it, or its task key; default the training) of `run`."""
    steps = [t for t in run.tasks if t.pod is not None]
    if not steps:
        raise UsageError(
            f"Run {run.name} ({run.run_id}) is {run.state} and no step has a pod yet; try again once a step started."
        )
    named = [t for t in steps if t.pod and (is_training(t.pod.key) if step is None else step in (t.step, t.pod.key))]
    if not named:
        have = ", ".join(dict.fromkeys(t.step for t in steps))
        what = "no training step yet" if step is None else f"no step {step!r}"
        raise UsageError(f"Run {run.name} ({run.run_id}) has {what}; its steps: {have}. Pick one with --step NAME.")
    trials = sorted({t.trial for t in named if t.trial is not None})
    if trial is not None:
        named = [t for t in named if t.trial == trial]
        if not named:
            have = ", ".join(str(t) for t in trials) or "none (it is not in a sweep)"
            raise UsageError(
                f"{_step(step, capital=True)} of run {run.run_id} has no trial {trial}; its trials: {have}."
            )
    if len({t.step for t in named}) > 1:  # a sweep's halving rounds each train
        have = ", ".join(dict.fromkeys(t.step for t in named))
        raise UsageError(
            f"Run {run.name} ({run.run_id}) has several training steps: {have}. Pick one with --step NAME."
        )
    if len(named) > 1:
        raise UsageError(
            f"Step {named[0].step} of run {run.run_id} ran once per trial: add --trial N, one of "
            f"{', '.join(str(t) for t in trials)}."
        )
    return named[0]


def _step(step: str | None, *, capital: bool = False) -> str:
    words = f"step {step}" if step else "the training step"
    return words[0].upper() + words[1:] if capital else words


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
    step ends. Returns the step as last seen; with `follow`, a step stopped because the run was terminated raises
    RunFailedError. A log that cannot be read raises ClusterError, or with `follow` is said once through `notify`
    while the step is followed by state alone."""
    lifeline = Lifeline(cluster, run_id)
    run, waiting = get_report(cluster, run_id), False
    names: PipelineNames | None = None
    while True:  # with `follow`, a step that has not started yet is waited for until the run ends
        try:
            task = find_step(run, step, trial)
            break
        except UsageError:
            if not follow or run.state in TERMINAL_STATES or run.state in STOP_STATES:
                raise
        if not waiting:
            notify(f"Run {run.name} is {run.state}; waiting for {_step(step)} to start.")
            waiting = True
        time.sleep(poll_interval)
        if (raw := lifeline.read()) is not None:
            names = names if names is not None else run_names(cluster, raw)
            run = report(cluster, raw, names)
    pod_name, told = "", False
    seen: list[str] = []  # the last lines written
    while True:
        assert task.pod is not None
        if task.pod.pod_name != pod_name:
            if pod_name:
                notify(f"Step {task.name} is retried: attempt {task.pod.attempt}, pod {task.pod.pod_name}")
            pod_name, seen = task.pod.pod_name, []
        ended = task.state in TERMINAL_STATES
        started = task.state not in ("PENDING", "RUNTIME_STATE_UNSPECIFIED")  # a pod not running has no log yet
        try:
            log = read_log(cluster, run_id, task.pod) if started or not follow else LogRead(None, None)
        except ClusterUnavailableError as exc:
            if not follow:
                raise
            log = LogRead(None, str(exc))  # the next poll reads it again
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
            new = unseen(seen, lines)
            shown = new
            if not seen and tail is not None:  # the first read: its last `tail` lines
                shown = new[max(0, len(new) - tail) :] if tail else []
            if shown:
                echo("".join(shown))
            seen = (seen + new)[-SEEN_WINDOW:]
        if follow and ended and task.state != "SUCCEEDED" and run.terminated:
            raise RunFailedError(
                f"Step {task.name} of run {run_id} was stopped: the run was terminated (KFP reports the step "
                f"{task.state})."
            )
        if not follow or ended:
            return task
        time.sleep(poll_interval)
        if (raw := lifeline.read()) is None:
            continue
        names = names if names is not None else run_names(cluster, raw)
        run = report(cluster, raw, names)
        task = find_step(run, step or task.step, trial if trial is not None else task.trial)
