"""Submitting to a cluster and following a run there: `status`, `logs`, and `--host` with `--wait`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from yolokf.cli.console import (
    RunDisplay,
    ask_terminate,
    print_log_tail,
    print_run_report,
    say,
    say_documents,
    stdout_writer,
    yaml_document,
)
from yolokf.cli.options import (
    PollInterval,
    RunOptions,
    TerminateOnInterrupt,
    Timeout,
    Wait,
    connection_options,
)
from yolokf.core.errors import Interrupted, RunFailedError, UsageError
from yolokf.runs.connection import Connection
from yolokf.runs.runner import SUBPROCESS

if TYPE_CHECKING:
    from yolokf.pipeline.job import Job
    from yolokf.runs.follow import Failure
    from yolokf.runs.kfp_api import Cluster
    from yolokf.runs.run_report import RunReport


@connection_options
def status(
    run_id: Annotated[str, typer.Argument(help="The run id `yolokf run --host` printed.")],
    connection: Connection,
    wait: Wait = False,
    timeout: Timeout = None,
    terminate_on_interrupt: TerminateOnInterrupt = False,
    poll_interval: PollInterval = 5.0,
) -> None:
    """Show a cluster run: state, tasks, error, outputs.  Example: yolokf status RUN_ID --host http://localhost:8080"""
    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.runs.run_report import get_report

    cluster = _connect(connection)
    report = get_report(cluster, run_id)
    print_run_report(report, _failure(cluster, report))
    if wait:
        _follow(cluster, run_id, timeout, terminate_on_interrupt, poll_interval)


@connection_options
def logs(
    run_id: Annotated[str, typer.Argument(help="The run id `yolokf run --host` printed.")],
    connection: Connection,
    step: Annotated[
        str | None, typer.Option(help="The step, as `yolokf status` names it. Default: the training.")
    ] = None,
    trial: Annotated[int | None, typer.Option(help="For a sweep: the trial's number.", min=0)] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until the step ends.")
    ] = False,
    tail: Annotated[int | None, typer.Option(help="Print only the last N lines.", min=0)] = None,
    poll_interval: PollInterval = 5.0,
) -> None:
    """Print a step's log (the training's by default).  Example: yolokf logs RUN_ID --follow --host http://localhost:8080"""
    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.runs.follow import stream_log

    cluster = _connect(connection)
    task = stream_log(
        cluster,
        run_id,
        stdout_writer(),
        step=step,
        trial=trial,
        tail=tail,
        follow=follow,
        poll_interval=poll_interval,
        notify=lambda line: say(line, err=True),
    )
    if follow and task.state != "SUCCEEDED":
        raise RunFailedError(f"Step {task.name} of run {run_id} ended {task.state}.")


def submit_job(job: Job, connection: Connection, run: RunOptions, dry_run: bool, before: tuple[str, ...] = ()) -> bool:
    """Submit `job` (or, with `dry_run`, say what would be submitted); with --wait, follow the run to its end.
    True when a followed run succeeded."""
    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.runs.submit import describe_submission, submit

    if run.runner != SUBPROCESS:
        raise UsageError(
            f"--runner {run.runner} runs the steps on this machine; leave it out with --host (the cluster runs each "
            "step in a pod of its own)."
        )
    if dry_run:
        titles, fields = describe_submission(connection.host or "", connection.namespace, job, run.submission())
        say_documents(*before, yaml_document(titles, fields))
        return False
    cluster = _connect(connection)
    submitted = submit(cluster, job, run.submission())
    say("\n".join(submitted.summary()))
    if not run.wait:
        return False
    _follow(cluster, submitted.run_id, run.timeout, run.terminate_on_interrupt, run.poll_interval)
    return True


def _connect(connection: Connection) -> Cluster:
    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.runs.kfp_api import connect

    return connect(connection, notify=lambda line: say(line, err=True))


def _follow(cluster: Cluster, run_id: str, timeout: str | None, terminate: bool, poll_interval: float) -> None:
    """Follow the run live, with the training's epochs from its log; Ctrl-C terminates the run (asked, or
    --terminate-on-interrupt) or leaves it running. A failed step's last log lines print before the error."""
    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.pipeline.step_options import parse_duration
    from yolokf.runs.follow import ProgressWatch, StepFailedError, wait
    from yolokf.runs.follow import terminate as terminate_run
    from yolokf.runs.run_report import format_seconds

    seconds = parse_duration(timeout, "--timeout")
    watch = ProgressWatch(cluster, run_id, notify=lambda line: say(line, err=True))
    try:
        with RunDisplay() as display:
            report = wait(
                cluster, run_id, timeout=seconds, poll_interval=poll_interval, on_update=display.update, watch=watch
            )
    except StepFailedError as exc:
        print_log_tail(exc.tail)
        raise
    except KeyboardInterrupt:
        if terminate or ask_terminate(run_id):
            terminate_run(cluster, run_id)
            raise Interrupted(
                f"Asked the cluster to terminate run {run_id}. Check it with: yolokf status {run_id}"
            ) from None
        raise Interrupted(
            f"Stopped following run {run_id}; it keeps running. Check it with: yolokf status {run_id}"
        ) from None
    say(f"Run {report.name} SUCCEEDED in {format_seconds(report.seconds)}: {report.url}")


def _failure(cluster: Cluster, report: RunReport) -> Failure | None:
    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.runs.follow import explain_failure

    return explain_failure(cluster, report) if report.state == "FAILED" else None
