"""yolokf's command line: parse options, call one core function, print the result or one error line."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer

from yolokf import __version__
from yolokf.cli_options import (
    DryRun,
    FetchEndpoint,
    FetchOut,
    FetchWorkers,
    Image,
    InsteadOut,
    Out,
    PollInterval,
    RunOptions,
    TerminateOnInterrupt,
    Timeout,
    Wait,
    connection_options,
    promote_options,
    run_options,
    step_options,
    sweep_options,
    training_options,
)
from yolokf.console import errs, say
from yolokf.errors import Interrupted, RunFailedError, UsageError, YolokfError
from yolokf.kfp_api import Connection
from yolokf.settings import PromoteOptions, SweepOptions, TrainConfig
from yolokf.step_options import StepOptions

if TYPE_CHECKING:
    from yolokf.follow import Failure, RunReport
    from yolokf.job import Job
    from yolokf.kfp_api import Cluster
    from yolokf.local import LocalRun

_APP_SETTINGS: dict[str, Any] = {
    "help": "Train Ultralytics YOLO models on Kubeflow Pipelines: build the image, compile, run.",
    "no_args_is_help": True,
    "pretty_exceptions_show_locals": False,  # locals can hold tokens
    "context_settings": {"help_option_names": ["-h", "--help"]},
}
app = typer.Typer(**_APP_SETTINGS)


def _version(value: bool) -> None:
    if value:
        say(f"yolokf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    pass


@app.command("compile")
@training_options
@step_options
@promote_options
def compile_(
    config: TrainConfig,
    step: StepOptions,
    promote: PromoteOptions,
    out: Out = Path("yolov8_train.yaml"),
    image: Image = None,
) -> None:
    """Write the Kubeflow pipeline YAML.  Example: yolokf compile --out yolov8_train.yaml --epochs 50"""
    from yolokf.image.records import resolve_image
    from yolokf.job import plan_job
    from yolokf.pipeline import compile_pipeline

    job = plan_job(config, step, image=resolve_image(image)).with_promotion(promote)
    say(f"Wrote {compile_pipeline(job, out)}")
    if job.step.nodes > 1:
        _write_rbac(out)


@app.command()
@training_options
@step_options
@promote_options
@connection_options
@run_options
def run(
    config: TrainConfig,
    step: StepOptions,
    promote: PromoteOptions,
    connection: Connection,
    run: RunOptions,
    dry_run: DryRun = False,
) -> None:
    """Train: locally through kfp.local, or on a cluster with --host.

    Example: yolokf run --model yolov8n.yaml --data shapes
    Example: yolokf run --host http://localhost:8080 --epochs 50 --wait
    """
    _warn_ignored(config)
    if not connection.host:
        if dry_run:
            raise UsageError("--dry-run shows what a --host run would submit; add --host URL (or set KFP_HOST).")
        from yolokf.job import plan_local_job

        _run_local(plan_local_job(config, step).with_promotion(promote), run)
        return
    from yolokf.image.records import resolve_image
    from yolokf.job import plan_job

    job = plan_job(config, step, image=resolve_image(run.image)).with_promotion(promote)
    if dry_run and job.step.nodes > 1:
        _show_trainjob(job, "The training step's TrainJob")
        return
    _submit(job, connection, run, dry_run)


@app.command()
@training_options
@step_options
@sweep_options
@promote_options
@connection_options
@run_options
def tune(
    config: TrainConfig,
    step: StepOptions,
    sweep: SweepOptions,
    promote: PromoteOptions,
    connection: Connection,
    run: RunOptions,
    out: InsteadOut = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the trials (and, with --host, the run).")] = False,
) -> None:
    """Sweep hyperparameters: trials in parallel on the cluster (--host), one after another here.

    Example: yolokf tune --data shapes --set optimizer=SGD --space lr0=loguniform:1e-4:1e-1 --trials 8 --halving 2
    """
    from yolokf.console import print_trials
    from yolokf.sweep import plan_sweep

    planned = plan_sweep(config, sweep, run_key=step.run_key)
    rounds = ", ".join(f"{r.trials} to epoch {r.epochs}" for r in planned.rounds)
    plan = f"{len(planned.trials)} trials ({planned.sampler}, seed {config.seed}); rounds: {rounds}; " + (
        f"{planned.trial_epochs()} trial-epochs"
    )
    if dry_run and not connection.host and out is None:
        print_trials(list(planned.trials), None, "Trials")
        say(plan)
        return
    if out is not None or connection.host:
        from yolokf.image.records import resolve_image
        from yolokf.job import plan_job

        job = plan_job(config, step, image=resolve_image(run.image)).with_sweep(planned).with_promotion(promote)
        if out is not None:
            from yolokf.pipeline import compile_pipeline

            say(f"Wrote {compile_pipeline(job, out)}")
            if job.step.nodes > 1:
                _write_rbac(out)
            return
        print_trials(list(planned.trials), None, "Trials")
        say(plan)
        if dry_run and job.step.nodes > 1:
            _show_trainjob(job, "Each trial's TrainJob (the step puts in the trial's values and folder)")
        if _submit(job, connection, run, dry_run):
            say("Every trial's result: the run's sweep report and trial table (outputs of the 'best trial' step).")
        return
    from yolokf.console import print_local_run
    from yolokf.job import plan_local_job

    job = plan_local_job(config, step).with_sweep(planned).with_promotion(promote)
    say(plan)
    result = _run_local_job(job, run)
    print_trials(result.trials, planned.metric, f"Trials by {planned.metric} ({planned.mode}), best first")
    print_local_run(result)


@app.command()
@training_options
@step_options
@promote_options
@connection_options
@run_options
def evaluate(
    config: TrainConfig,
    step: StepOptions,
    promote: PromoteOptions,
    connection: Connection,
    run: RunOptions,
    out: InsteadOut = None,
    dry_run: DryRun = False,
) -> None:
    """Evaluate existing weights (--model best.pt) on the held-out split; export, gate and register them too.

    On a cluster, --model is an object-store URI (s3://bucket/best.pt). Training flags other than --data,
    --batch and --device do not apply (the image size is the weights' own).
    Example: yolokf evaluate --model runs/best.pt --data shapes --export onnx,openvino --gate 'mAP50-95>=0.5'
    """
    from dataclasses import replace

    if step.nodes > 1:
        raise UsageError("--nodes applies to training; yolokf evaluate trains nothing, leave it out.")
    if not connection.host and out is None:
        if dry_run:
            raise UsageError("--dry-run shows what a --host run would submit; add --host URL (or set KFP_HOST).")
        from yolokf.job import plan_local_job

        config = config.with_overrides(model=_weights_file(config.model))
        _run_local(replace(plan_local_job(config, step), evaluate_only=True).with_promotion(promote), run)
        return
    from yolokf.image.records import resolve_image
    from yolokf.job import plan_job

    if not re.match(r"^(s3|gs|minio|https?)://", config.model):
        if connection.host:
            raise UsageError(
                f"--model {config.model}: on a cluster the weights must be an object-store URI the pipeline can "
                "import, e.g. s3://models/yolov8n/best.pt (the weights artifact's URI of a training run)."
            )
        config = config.with_overrides(model=_weights_file(config.model))  # a YAML for kfp.local
    job = replace(plan_job(config, step, image=resolve_image(run.image)), evaluate_only=True).with_promotion(promote)
    if out is not None:
        from yolokf.pipeline import compile_pipeline

        say(f"Wrote {compile_pipeline(job, out)}")
        return
    _submit(job, connection, run, dry_run)


def _weights_file(model: str) -> str:
    """`--model` of `yolokf evaluate` here: an existing .pt file, as an absolute path."""
    weights = Path(model).expanduser()
    if weights.suffix != ".pt" or not weights.is_file():
        raise UsageError(f"--model {model}: give the weights file to evaluate, e.g. --model runs/best.pt.")
    return str(weights.resolve())


@app.command()
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
    from yolokf.console import print_run_report
    from yolokf.follow import get_report

    cluster = _connect(connection)
    report = get_report(cluster, run_id)
    print_run_report(report, _failure(cluster, report))
    if wait:
        _follow(cluster, run_id, timeout, terminate_on_interrupt, poll_interval)


@app.command()
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
    from yolokf.console import stdout_writer
    from yolokf.follow import stream_log

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


@app.command("build-image")
def build_image(
    repository: Annotated[
        str, typer.Option("--repository", "-r", envvar="YOLOKF_REPOSITORY", help="Image name, with registry to push.")
    ] = "yolokf",
    tag: Annotated[
        str | None, typer.Option("--tag", "-t", help="Tag. Default: <version>-<content hash>, same inputs same tag.")
    ] = None,
    base_image: Annotated[
        str, typer.Option(envvar="YOLOKF_BASE_IMAGE", help="Base image holding PyTorch (kept as is).")
    ] = "nvcr.io/nvidia/pytorch:26.09-py3",
    push: Annotated[bool, typer.Option("--push", help="Push, then print repo@sha256:... .")] = False,
    platform: Annotated[str | None, typer.Option(help="Target platform, e.g. linux/amd64.")] = None,
    pip_index_url: Annotated[
        str | None, typer.Option(envvar="YOLOKF_PIP_INDEX_URL", help="pip index (mirror) used in the build.")
    ] = None,
    pip_extra_index_url: Annotated[
        str | None, typer.Option(envvar="YOLOKF_PIP_EXTRA_INDEX_URL", help="Extra pip index used in the build.")
    ] = None,
    weights: Annotated[Path | None, typer.Option(help="Local weights file to bake in, e.g. yolov8n.pt.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be built and pushed.")] = False,
) -> None:
    """Build the training image from this source tree, and push it.

    Registry credentials: `docker login`, or YOLOKF_REGISTRY_USERNAME and YOLOKF_REGISTRY_PASSWORD.
    Example: yolokf build-image --repository registry.example.com/ml/yolokf --push
    """
    from yolokf.console import BuildReporter
    from yolokf.image.context import BuildSpec, describe, plan_build
    from yolokf.image.engine import build_image as build

    spec = BuildSpec(base_image, repository, tag, platform, pip_index_url, pip_extra_index_url, weights)
    plan = plan_build(spec, push=push)
    if dry_run:
        say("\n".join(describe(plan)))
        return
    result = build(plan, BuildReporter(errs()))
    say(result.digest_reference or plan.reference)


@app.command()
def shapes(
    folder: Annotated[Path, typer.Argument(help="Folder to write the dataset into (must not exist).")],
    task: Annotated[
        str, typer.Option(help="detect, segment, pose, obb or classify: the dataset --data shapes-TASK trains on.")
    ] = "detect",
) -> None:
    """Write a built-in synthetic shapes dataset (128 train / 32 val / 32 test images).

    Example: yolokf shapes ./shapes-seg --task segment
    """
    from yolokf.shapes import TASK_DATASET, write_dataset

    if task not in TASK_DATASET:
        raise UsageError(f"--task {task!r} is not an ultralytics task; use one of {', '.join(TASK_DATASET)}.")
    if folder.exists():
        raise UsageError(f"{folder} already exists; choose a new folder.")
    say(f"Wrote {write_dataset(folder, task)}")


@app.command()
def fetch(
    uri: Annotated[str, typer.Argument(help="s3://BUCKET/PREFIX, gs://..., or an archive (.zip, .tar.gz) URL.")],
    out: FetchOut,
    fetch_workers: FetchWorkers = None,
    s3_endpoint_url: FetchEndpoint = None,
) -> None:
    """Download a dataset with the pipeline's download code; a second fetch moves only what changed.

    Example: yolokf fetch s3://datasets/coco --out ./coco --fetch-workers 64
    """
    import importlib.util

    from yolokf.console import fetch_bar
    from yolokf.steps.fetch import fetch as fetch_data

    missing = [name for name in ("boto3", "obstore") if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"yolokf fetch needs {' and '.join(missing)}: pip install {' '.join(missing)}.")
    with fetch_bar(f"Fetching {uri}") as on_progress:
        done = fetch_data(uri, out, workers=fetch_workers, endpoint=s3_endpoint_url, on_progress=on_progress)
    say(done.summary(uri, out))


def _run_local(job: Job, run: RunOptions) -> None:
    from yolokf.console import print_local_run

    print_local_run(_run_local_job(job, run))


def _run_local_job(job: Job, run: RunOptions) -> LocalRun:
    from yolokf.console import stdout_writer
    from yolokf.local import DEFAULT_PIPELINE_ROOT, run_local

    root = Path(run.pipeline_root) if run.pipeline_root else DEFAULT_PIPELINE_ROOT
    return run_local(job, root, echo=stdout_writer(), verbose=run.verbose)


def _warn_ignored(config: TrainConfig) -> None:
    """ultralytics ignores some arguments without a word (lr0 under optimizer=auto): say it before training."""
    from yolokf.settings import auto_optimizer_hint, ignored_under_auto

    ignored = ignored_under_auto(config.train_args, config.train_args)
    if ignored:
        say(f"Warning: --set {ignored[0]}: {auto_optimizer_hint(ignored)}.", err=True)


def _show_trainjob(job: Job, title: str) -> None:
    """`--dry-run` with `--nodes`: the TrainJob the launcher step creates, as YAML."""
    from yolokf.trainjob import trainjob_yaml

    say(f"{title} ({job.step.nodes} nodes; the run's name as a placeholder):")
    say(trainjob_yaml(job).rstrip())


def _write_rbac(out: Path) -> None:
    """`--nodes`: the Role and RoleBinding the launcher needs, next to the pipeline (docs/cluster.md)."""
    from yolokf.trainjob import rbac_yaml

    rbac = out.with_name(f"{out.stem}-rbac.yaml")
    rbac.write_text(rbac_yaml())
    say(f"Wrote {rbac}: the launcher's rights on TrainJobs; edit the namespace (kubeflow) and kubectl apply -f it.")


def _submit(job: Job, connection: Connection, run: RunOptions, dry_run: bool) -> bool:
    """Submit `job` (or, with `dry_run`, say what would be submitted); with --wait, follow the run to its end.
    True when a followed run succeeded."""
    from yolokf.submit import describe_submission, submit

    if dry_run:
        say("\n".join(describe_submission(connection.host or "", connection.namespace, job, run.submission())))
        return False
    cluster = _connect(connection)
    submitted = submit(cluster, job, run.submission())
    say("\n".join(submitted.summary()))
    if not run.wait:
        return False
    _follow(cluster, submitted.run_id, run.timeout, run.terminate_on_interrupt, run.poll_interval)
    return True


def _connect(connection: Connection) -> Cluster:
    from yolokf.kfp_api import connect

    return connect(connection, notify=lambda line: say(line, err=True))


def _follow(cluster: Cluster, run_id: str, timeout: str | None, terminate: bool, poll_interval: float) -> None:
    """Follow the run live, with the training's epochs from its log; Ctrl-C terminates the run (asked, or
    --terminate-on-interrupt) or leaves it running. A failed step's last log lines print before the error."""
    from yolokf.console import RunDisplay, ask_terminate, print_log_tail
    from yolokf.follow import ProgressWatch, StepFailedError, format_seconds, wait
    from yolokf.follow import terminate as terminate_run
    from yolokf.step_options import parse_duration

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
    from yolokf.follow import explain_failure

    return explain_failure(cluster, report) if report.state == "FAILED" else None


def _only(name: str) -> typer.Typer:
    """The app with just the command `name` when it is one: typer builds every command's options on each start
    (40 ms for seven commands), and a run needs one. Anything else gets the whole app (usage errors, hints)."""
    for info in app.registered_commands:
        if (info.name or (info.callback.__name__ if info.callback else "").replace("_", "-")) == name:
            single = typer.Typer(**_APP_SETTINGS)
            single.registered_callback = app.registered_callback
            single.registered_commands = [info]
            return single
    return app


def main(argv: list[str] | None = None) -> None:
    """Console entry point: errors become one line on stderr and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    command = typer.main.get_command(_only(args[0]) if args else app)
    try:
        code = command.main(args=argv, prog_name="yolokf", standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        say("Aborted.", err=True)
        sys.exit(Interrupted.exit_code)
    except click.ClickException as exc:  # usage errors
        ctx = getattr(exc, "ctx", None)
        hint = f" See '{ctx.command_path} --help'." if ctx else ""
        message = exc.format_message()
        message = message if message.endswith((".", "?")) else message + "."
        say(f"Error: {message}{hint}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except YolokfError as exc:
        if os.getenv("YOLOKF_DEBUG"):
            raise
        say(f"Error: {exc}" if exc.exit_code != Interrupted.exit_code else str(exc), err=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
