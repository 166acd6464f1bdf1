"""The commands that train: `compile`, `run`, `tune` and `evaluate`, run here or submitted with `--host`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from yolokf.cli.cluster_commands import submit_job
from yolokf.cli.console import LocalDisplay, print_local_run, print_trials, say, say_documents, yaml_document
from yolokf.cli.options import (
    DryRun,
    Image,
    InsteadOut,
    Out,
    RunOptions,
    connection_options,
    evaluation_options,
    promote_options,
    run_options,
    step_options,
    sweep_options,
    training_options,
)
from yolokf.cli.tracking_options import tracking_options
from yolokf.core.errors import UsageError
from yolokf.core.settings import PromoteOptions, SweepOptions, TrainConfig, auto_optimizer_hint, ignored_under_auto
from yolokf.pipeline.step_options import StepOptions
from yolokf.runs.connection import Connection
from yolokf.tracking.plan import Tracking

if TYPE_CHECKING:
    from yolokf.pipeline.job import Job
    from yolokf.runs.local import LocalRun


@training_options
@step_options
@promote_options
@tracking_options
def compile_(
    config: TrainConfig,
    step: StepOptions,
    promote: PromoteOptions,
    tracking: Tracking,
    out: Out = Path("yolov8_train.yaml"),
    image: Image = None,
) -> None:
    """Write the Kubeflow pipeline YAML.  Example: yolokf compile --out yolov8_train.yaml --epochs 50"""
    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.image.records import resolve_image
    from yolokf.pipeline.job import plan_job

    job = plan_job(config, step, image=resolve_image(image)).with_promotion(promote).with_tracking(tracking)
    _write_pipeline(job, out)


@training_options
@step_options
@promote_options
@tracking_options
@connection_options
@run_options
def run(
    config: TrainConfig,
    step: StepOptions,
    promote: PromoteOptions,
    tracking: Tracking,
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
        # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
        from yolokf.pipeline.job import plan_local_job

        _run_local(plan_local_job(config, step).with_promotion(promote).with_tracking(tracking), run, step.gpus)
        return
    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.image.records import resolve_image
    from yolokf.pipeline.job import plan_job

    job = plan_job(config, step, image=resolve_image(run.image)).with_promotion(promote).with_tracking(tracking)
    if dry_run and job.step.nodes > 1:
        say_documents(_trainjob_document(job, "The training step's TrainJob"))
        return
    submit_job(job, connection, run, dry_run)


@training_options
@step_options
@sweep_options
@promote_options
@tracking_options
@connection_options
@run_options
def tune(
    config: TrainConfig,
    step: StepOptions,
    sweep: SweepOptions,
    promote: PromoteOptions,
    tracking: Tracking,
    connection: Connection,
    run: RunOptions,
    out: InsteadOut = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the trials (and, with --host, the run).")] = False,
) -> None:
    """Sweep hyperparameters: trials in parallel on the cluster (--host), one after another here.

    Example: yolokf tune --data shapes --set optimizer=SGD --space lr0=loguniform:1e-4:1e-1 --trials 8 --halving 2
    """
    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.sweeps.plan import plan_sweep

    planned = plan_sweep(config, sweep, run_key=step.run_key)
    rounds = ", ".join(f"{r.trials} to epoch {r.epochs}" for r in planned.rounds)
    plan = f"{len(planned.trials)} trials ({planned.sampler}, seed {config.seed}); rounds: {rounds}; " + (
        f"{planned.trial_epochs()} trial-epochs"
    )
    if dry_run and not connection.host and out is None:
        print_trials(list(planned.trials), None, "Trials", err=True)  # stdout: the trials as YAML
        say(plan, err=True)
        say(yaml_document(["The trials (--dry-run; no --host)"], {"trials": list(planned.trials)}))
        return
    if out is not None or connection.host:
        # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
        from yolokf.image.records import resolve_image
        from yolokf.pipeline.job import plan_job

        job = plan_job(config, step, image=resolve_image(run.image)).with_sweep(planned).with_promotion(promote)
        job = job.with_tracking(tracking)
        if out is not None:
            _write_pipeline(job, out)
            return
        print_trials(list(planned.trials), None, "Trials", err=dry_run)  # --dry-run: stdout is YAML
        say(plan, err=dry_run)
        before: tuple[str, ...] = ()
        if dry_run and job.step.nodes > 1:
            title = "Each trial's TrainJob (the step puts in the trial's values and folder)"
            before = (_trainjob_document(job, title),)
        if submit_job(job, connection, run, dry_run, before):
            say("Every trial's result: the run's sweep report and trial table (outputs of the 'best trial' step).")
        return
    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.pipeline.job import plan_local_job

    job = plan_local_job(config, step).with_sweep(planned).with_promotion(promote).with_tracking(tracking)
    say(plan)
    result = _run_local_job(job, run, step.gpus)
    print_trials(result.trials, planned.metric, f"Trials by {planned.metric} ({planned.mode}), best first")
    print_local_run(result)


@evaluation_options
@step_options
@promote_options
@tracking_options
@connection_options
@run_options
def evaluate(
    config: TrainConfig,
    step: StepOptions,
    promote: PromoteOptions,
    tracking: Tracking,
    connection: Connection,
    run: RunOptions,
    out: InsteadOut = None,
    dry_run: DryRun = False,
) -> None:
    """Evaluate existing weights (--model best.pt) on the held-out split; export, gate and register them too.

    On a cluster, --model is an object-store URI (s3://bucket/best.pt). The image size is the weights' own.
    Example: yolokf evaluate --model runs/best.pt --data shapes --export onnx,openvino --gate 'mAP50-95>=0.5'
    """
    from dataclasses import replace

    if step.nodes > 1:
        raise UsageError("--nodes applies to training; yolokf evaluate trains nothing, leave it out.")
    if not connection.host and out is None:
        if dry_run:
            raise UsageError("--dry-run shows what a --host run would submit; add --host URL (or set KFP_HOST).")
        # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
        from yolokf.pipeline.job import plan_local_job

        config = config.with_overrides(model=_weights_file(config.model))
        job = replace(plan_local_job(config, step), evaluate_only=True).with_promotion(promote)
        _run_local(job.with_tracking(tracking), run, step.gpus)
        return
    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.image.records import resolve_image
    from yolokf.pipeline.job import plan_job

    if not re.match(r"^(s3|gs|minio|https?)://", config.model):
        if connection.host:
            raise UsageError(
                f"--model {config.model}: on a cluster the weights must be an object-store URI the pipeline can "
                "import, e.g. s3://models/yolov8n/best.pt (the weights artifact's URI of a training run)."
            )
        config = config.with_overrides(model=_weights_file(config.model))  # a YAML for kfp.local
    job = replace(plan_job(config, step, image=resolve_image(run.image)), evaluate_only=True).with_promotion(promote)
    job = job.with_tracking(tracking)
    if out is not None:
        # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
        from yolokf.pipeline.pipelines import compile_pipeline

        say(f"Wrote {compile_pipeline(job, out)}")
        return
    submit_job(job, connection, run, dry_run)


def _weights_file(model: str) -> str:
    """`--model` of `yolokf evaluate` here: an existing .pt file, as an absolute path."""
    weights = Path(model).expanduser()
    if weights.suffix != ".pt" or not weights.is_file():
        raise UsageError(f"--model {model}: give the weights file to evaluate, e.g. --model runs/best.pt.")
    return str(weights.resolve())


def _run_local(job: Job, run: RunOptions, gpus: int | None) -> None:
    print_local_run(_run_local_job(job, run, gpus))


def _run_local_job(job: Job, run: RunOptions, gpus: int | None) -> LocalRun:
    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.runs.local import DEFAULT_PIPELINE_ROOT, run_local
    from yolokf.runs.runner import choose_runner

    root = Path(run.pipeline_root) if run.pipeline_root else DEFAULT_PIPELINE_ROOT
    runner = choose_runner(run.runner, run.image, gpus)
    with LocalDisplay(run.verbose) as display:
        return run_local(job, root, emit=display, verbose=run.verbose, runner=runner)


def _warn_ignored(config: TrainConfig) -> None:
    """ultralytics ignores some arguments without a word (lr0 under optimizer=auto): say it before training."""

    ignored = ignored_under_auto(config.train_args, config.train_args)
    if ignored:
        say(f"Warning: --set {ignored[0]}: {auto_optimizer_hint(ignored)}.", err=True)


def _trainjob_document(job: Job, title: str) -> str:
    """`--dry-run` with `--nodes`: the TrainJob the launcher step creates, as YAML."""
    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.pipeline.trainjob import trainjob_yaml

    return yaml_document([f"{title} ({job.step.nodes} nodes; the run's name as a placeholder):"], trainjob_yaml(job))


def _write_pipeline(job: Job, out: Path) -> None:
    """`--out FILE`: the pipeline YAML (and, with `--nodes`, its Role next to it); `--out -`: the YAML on stdout."""
    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.pipeline.pipelines import compile_pipeline, pipeline_yaml

    if str(out) == "-":
        say(pipeline_yaml(job).rstrip("\n"))
        if job.step.nodes > 1:
            say(
                "The launcher's Role is not written with --out -: compile with --out FILE to get FILE-rbac.yaml.",
                err=True,
            )
        return
    say(f"Wrote {compile_pipeline(job, out)}")
    if job.step.nodes > 1:
        _write_rbac(out)


def _write_rbac(out: Path) -> None:
    """`--nodes`: the Role and RoleBinding the launcher needs, next to the pipeline (docs/cluster.md)."""
    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.pipeline.trainjob import rbac_yaml

    rbac = out.with_name(f"{out.stem}-rbac.yaml")
    rbac.write_text(rbac_yaml())
    say(f"Wrote {rbac}: the launcher's rights on TrainJobs; edit the namespace (kubeflow) and kubectl apply -f it.")
