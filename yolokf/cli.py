"""yolokf's command line: parse options, call one core function, print the result or one error line."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import click
import typer

from yolokf import __version__
from yolokf.errors import UsageError, YolokfError

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    help="Train Ultralytics YOLO models on Kubeflow Pipelines: build the image, compile, run.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold tokens
    context_settings={"help_option_names": ["-h", "--help"]},
)


@functools.cache
def out() -> Console:
    """stdout. Made on first use: importing rich.console costs 50 ms that `compile` and `--help` skip."""
    from rich.console import Console

    return Console(soft_wrap=True)


@functools.cache
def errs() -> Console:
    """stderr: progress and errors."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


# Training flags: ultralytics' names and defaults.
Model = Annotated[str, typer.Option(help="Weights (.pt) or model YAML (yolov8n.yaml trains from scratch).")]
Data = Annotated[
    str,
    typer.Option(
        help="Dataset YAML, YOLO dataset folder, 'shapes' (built in, offline), s3:// gs:// https:// folder or archive, "
        "or pvc://PVC/path/data.yaml."
    ),
]
Epochs = Annotated[int, typer.Option(help="Training epochs.")]
Imgsz = Annotated[int, typer.Option(help="Image size in pixels.")]
Batch = Annotated[int, typer.Option(help="Batch size.")]
Device = Annotated[str, typer.Option(help="ultralytics device: '' picks, 'cpu', '0', '0,1'.")]
Workers = Annotated[int, typer.Option(help="DataLoader workers.")]
Seed = Annotated[int, typer.Option(help="Random seed.")]
Set = Annotated[
    list[str] | None,
    typer.Option("--set", help="Any other ultralytics train argument, KEY=VALUE (repeatable)."),
]
Image = Annotated[
    str | None,
    typer.Option(envvar="YOLOKF_IMAGE", help="Step image (tag or digest). Default: the image build-image made."),
]


# Cluster flags (docs/cluster.md): applied to the compiled steps; a local run uses only --checkpoint-dir/--run-key.
_K8S = "Cluster (ignored by local runs)"
_DATA = "Data sources"
_RESUME = "Checkpoints and resume"
Gpus = Annotated[
    int | None,
    typer.Option(help="Accelerators for the training pod; N>1 trains with DDP on all, 0 on CPU.", rich_help_panel=_K8S),
]
AcceleratorType = Annotated[str, typer.Option(help="Resource name the device plugin advertises.", rich_help_panel=_K8S)]
ShmSize = Annotated[
    str, typer.Option(help="Memory-backed /dev/shm for DataLoader workers; 0 for none.", rich_help_panel=_K8S)
]
Cpu = Annotated[str | None, typer.Option(help="CPU request and limit, e.g. 8 or 500m.", rich_help_panel=_K8S)]
Memory = Annotated[str | None, typer.Option(help="Memory request and limit, e.g. 32Gi.", rich_help_panel=_K8S)]
NodeSelector = Annotated[
    list[str] | None, typer.Option(help="KEY=VALUE node label (repeatable).", rich_help_panel=_K8S)
]
Toleration = Annotated[
    list[str] | None,
    typer.Option(help="KEY=VALUE:EFFECT, KEY:EFFECT or KEY, as kubectl taint (repeatable).", rich_help_panel=_K8S),
]
PullSecret = Annotated[
    list[str] | None, typer.Option("--image-pull-secret", help="Registry Secret (repeatable).", rich_help_panel=_K8S)
]
PullPolicy = Annotated[str | None, typer.Option(help="Always, IfNotPresent or Never.", rich_help_panel=_K8S)]
PodLabel = Annotated[list[str] | None, typer.Option(help="KEY=VALUE pod label (repeatable).", rich_help_panel=_K8S)]
PodAnnotation = Annotated[
    list[str] | None, typer.Option(help="KEY=VALUE pod annotation (repeatable).", rich_help_panel=_K8S)
]
StepTimeout = Annotated[
    str | None,
    typer.Option(help="Time limit of the training pod, e.g. 12h or 90m (activeDeadlineSeconds).", rich_help_panel=_K8S),
]
Retries = Annotated[
    int,
    typer.Option(
        help="Retries of a failed step, with backoff from 30 s; resumes with a checkpoint.", rich_help_panel=_K8S
    ),
]
DataPvc = Annotated[
    str | None,
    typer.Option(help="PVC holding the dataset; --data is then the YAML's path in it.", rich_help_panel=_DATA),
]
DataSecret = Annotated[
    str | None,
    typer.Option(
        help="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for s3:// gs://; '-' for pod identity.",
        rich_help_panel=_DATA,
    ),
]
S3Endpoint = Annotated[
    str | None,
    typer.Option(
        "--s3-endpoint-url",
        envvar="YOLOKF_S3_ENDPOINT_URL",
        help="S3 endpoint for MinIO and others.",
        rich_help_panel=_DATA,
    ),
]
CheckpointPvc = Annotated[
    str | None, typer.Option(help="PVC that keeps last.pt so a retried step resumes.", rich_help_panel=_RESUME)
]
CheckpointDir = Annotated[
    str | None,
    typer.Option(help="Folder that keeps last.pt (local runs, or a path mounted in the pod).", rich_help_panel=_RESUME),
]
RunKey = Annotated[
    str | None,
    typer.Option(help="Checkpoint subfolder. Default: derived from the training arguments.", rich_help_panel=_RESUME),
]


# Kubeflow Pipelines API flags (issue 4): `run --host` submits there; `status` reads runs back.
_KFP = "Kubeflow Pipelines cluster (--host)"
Host = Annotated[
    str | None,
    typer.Option(
        envvar=["KFP_HOST", "KF_PIPELINES_ENDPOINT"],
        help="KFP API URL; run there instead of locally. E.g. http://localhost:8080 (port-forward of ml-pipeline-ui).",
        rich_help_panel=_KFP,
    ),
]
Namespace = Annotated[
    str | None,
    typer.Option(envvar="KFP_NAMESPACE", help="Profile namespace (multi-user Kubeflow).", rich_help_panel=_KFP),
]
CaBundle = Annotated[
    Path | None,
    typer.Option(
        envvar="YOLOKF_CA_BUNDLE", help="PEM CA bundle that signed the API's certificate.", rich_help_panel=_KFP
    ),
]
InsecureTls = Annotated[
    bool,
    typer.Option("--insecure-skip-tls-verify", help="Do not verify the API's TLS certificate.", rich_help_panel=_KFP),
]
TokenFile = Annotated[
    Path | None,
    typer.Option(
        envvar="YOLOKF_KFP_TOKEN_FILE",
        help="File holding a bearer token. Else $KFP_TOKEN, else kfp's $KF_PIPELINES_SA_TOKEN_PATH.",
        rich_help_panel=_KFP,
    ),
]
CookieFile = Annotated[
    Path | None,
    typer.Option(
        envvar="YOLOKF_KFP_COOKIE_FILE",
        help="File holding the Dex/OIDC session cookie NAME=VALUE. Else $KFP_COOKIE.",
        rich_help_panel=_KFP,
    ),
]
Wait = Annotated[
    bool, typer.Option("--wait", help="Follow the run until it ends; exit 4 unless it succeeds.", rich_help_panel=_KFP)
]
Timeout = Annotated[
    str | None, typer.Option(help="With --wait: give up after this long, e.g. 90m or 12h.", rich_help_panel=_KFP)
]
TerminateOnInterrupt = Annotated[
    bool,
    typer.Option(
        "--terminate-on-interrupt",
        help="With --wait: Ctrl-C terminates the run without asking (for scripts).",
        rich_help_panel=_KFP,
    ),
]
PollInterval = Annotated[float, typer.Option(envvar="YOLOKF_POLL_INTERVAL", hidden=True)]


def _connect(host, namespace, ca_bundle, insecure_skip_tls_verify, token_file, cookie_file):  # noqa: ANN001, ANN202
    from yolokf.remote import connect

    if not host:
        raise UsageError("No cluster given: pass --host URL (or set KFP_HOST), e.g. --host http://localhost:8080.")
    return connect(
        host,
        namespace=namespace,
        ca_bundle=ca_bundle,
        insecure_skip_verify=insecure_skip_tls_verify,
        token_file=token_file,
        cookie_file=cookie_file,
        console=errs(),
    )


def _follow(cluster, run_id: str, timeout, terminate_on_interrupt: bool, poll_interval: float) -> None:  # noqa: ANN001
    from yolokf.cluster import parse_duration
    from yolokf.remote import format_seconds, wait

    followed = wait(
        cluster,
        run_id,
        timeout=parse_duration(timeout, "--timeout"),
        poll_interval=poll_interval,
        on_interrupt="terminate" if terminate_on_interrupt else "ask",
        console=out(),
    )
    if followed.outcome != "succeeded":
        raise typer.Exit(130)
    report = followed.report
    out().print(f"Run {report.name} SUCCEEDED in {format_seconds(report.seconds)}: {report.url}")


CLUSTER_FLAGS = (
    "gpus",
    "accelerator_type",
    "shm_size",
    "cpu",
    "memory",
    "node_selector",
    "toleration",
    "image_pull_secret",
    "image_pull_policy",
    "pod_label",
    "pod_annotation",
    "step_timeout",
    "retries",
    "data_pvc",
    "data_secret",
    "s3_endpoint_url",
    "checkpoint_pvc",
    "checkpoint_dir",
    "run_key",
)


def _cluster(config, image: str, flags: dict):  # noqa: ANN001, ANN202
    """StepOptions from the cluster flags (a command's locals()), and the config with --data-pvc folded into --data."""
    from yolokf.cluster import StepOptions, parse_duration, parse_pairs, parse_toleration
    from yolokf.fetch import pvc_uri

    f = {name: flags[name] for name in CLUSTER_FLAGS}
    step = StepOptions(
        image=image,
        gpus=f["gpus"],
        accelerator_type=f["accelerator_type"],
        shm_size=None if f["shm_size"] in ("", "0") else f["shm_size"],
        cpu=f["cpu"],
        memory=f["memory"],
        node_selector=parse_pairs(f["node_selector"], "--node-selector"),
        tolerations=tuple(parse_toleration(t) for t in f["toleration"] or []),
        image_pull_secrets=tuple(f["image_pull_secret"] or []),
        image_pull_policy=f["image_pull_policy"],
        pod_labels=parse_pairs(f["pod_label"], "--pod-label"),
        pod_annotations=parse_pairs(f["pod_annotation"], "--pod-annotation"),
        step_timeout=parse_duration(f["step_timeout"]),
        retries=f["retries"],
        data_secret=f["data_secret"],
        s3_endpoint_url=f["s3_endpoint_url"],
        checkpoint_pvc=f["checkpoint_pvc"],
        checkpoint_dir=f["checkpoint_dir"],
        run_key=f["run_key"],
    )
    return config.with_overrides(data=pvc_uri(config.data, f["data_pvc"])), step


def _config(model, data, epochs, imgsz, batch, device, workers, seed, set_):  # noqa: ANN001, ANN202
    from yolokf.settings import TrainConfig, parse_set

    return TrainConfig(
        model=model,
        data=data,
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        device=device,
        workers=workers,
        seed=seed,
        extra=parse_set(set_ or []),
    )


def _version(value: bool) -> None:
    if value:
        out().print(f"yolokf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    pass


@app.command("compile")
def compile_(
    out: Annotated[Path, typer.Option("--out", "-o", help="Pipeline YAML to write.")] = Path("yolov8_train.yaml"),
    model: Model = "yolov8n.pt",
    data: Data = "coco128.yaml",
    epochs: Epochs = 100,
    imgsz: Imgsz = 640,
    batch: Batch = 16,
    device: Device = "",
    workers: Workers = 8,
    seed: Seed = 0,
    set_: Set = None,
    image: Image = None,
    gpus: Gpus = None,
    accelerator_type: AcceleratorType = "nvidia.com/gpu",
    shm_size: ShmSize = "8Gi",
    cpu: Cpu = None,
    memory: Memory = None,
    node_selector: NodeSelector = None,
    toleration: Toleration = None,
    image_pull_secret: PullSecret = None,
    image_pull_policy: PullPolicy = None,
    pod_label: PodLabel = None,
    pod_annotation: PodAnnotation = None,
    step_timeout: StepTimeout = None,
    retries: Retries = 0,
    data_pvc: DataPvc = None,
    data_secret: DataSecret = None,
    s3_endpoint_url: S3Endpoint = None,
    checkpoint_pvc: CheckpointPvc = None,
    checkpoint_dir: CheckpointDir = None,
    run_key: RunKey = None,
) -> None:
    """Write the Kubeflow pipeline YAML.  Example: yolokf compile --out yolov8_train.yaml --epochs 50"""
    from yolokf.image import resolve_image
    from yolokf.pipeline import compile_pipeline

    config = _config(model, data, epochs, imgsz, batch, device, workers, seed, set_)
    config, step = _cluster(config, resolve_image(image), locals())
    path = compile_pipeline(config, step, out)
    typer.echo(f"Wrote {path}")


@app.command()
def run(
    model: Model = "yolov8n.pt",
    data: Data = "coco128.yaml",
    epochs: Epochs = 100,
    imgsz: Imgsz = 640,
    batch: Batch = 16,
    device: Device = "",
    workers: Workers = 8,
    seed: Seed = 0,
    set_: Set = None,
    pipeline_root: Annotated[
        str | None,
        typer.Option(
            envvar="YOLOKF_PIPELINE_ROOT",
            help="Where outputs go: a folder for local runs (default yolokf-runs); with --host an object-store URI, "
            "e.g. minio://mlpipeline/v2/artifacts (default: the cluster's).",
        ),
    ] = None,
    image: Image = None,
    gpus: Gpus = None,
    accelerator_type: AcceleratorType = "nvidia.com/gpu",
    shm_size: ShmSize = "8Gi",
    cpu: Cpu = None,
    memory: Memory = None,
    node_selector: NodeSelector = None,
    toleration: Toleration = None,
    image_pull_secret: PullSecret = None,
    image_pull_policy: PullPolicy = None,
    pod_label: PodLabel = None,
    pod_annotation: PodAnnotation = None,
    step_timeout: StepTimeout = None,
    retries: Retries = 0,
    data_pvc: DataPvc = None,
    data_secret: DataSecret = None,
    s3_endpoint_url: S3Endpoint = None,
    checkpoint_pvc: CheckpointPvc = None,
    checkpoint_dir: CheckpointDir = None,
    run_key: RunKey = None,
    host: Host = None,
    namespace: Namespace = None,
    ca_bundle: CaBundle = None,
    insecure_skip_tls_verify: InsecureTls = False,
    token_file: TokenFile = None,
    cookie_file: CookieFile = None,
    experiment: Annotated[
        str, typer.Option(envvar="YOLOKF_EXPERIMENT", help="Experiment; created when missing.", rich_help_panel=_KFP)
    ] = "yolokf",
    run_name: Annotated[str | None, typer.Option(help="Default: <model>-<data>-<time>.", rich_help_panel=_KFP)] = None,
    service_account: Annotated[
        str | None, typer.Option(help="Kubernetes service account of the run's pods.", rich_help_panel=_KFP)
    ] = None,
    cache: Annotated[
        bool | None,
        typer.Option(
            "--cache/--no-cache", help="Reuse cached step results (every task). Default: on.", rich_help_panel=_KFP
        ),
    ] = None,
    upload: Annotated[
        bool, typer.Option("--upload", help="Register the pipeline (a new version if it exists).", rich_help_panel=_KFP)
    ] = False,
    wait: Wait = False,
    timeout: Timeout = None,
    terminate_on_interrupt: TerminateOnInterrupt = False,
    poll_interval: PollInterval = 5.0,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="With --host: print what would be submitted, contact nothing.", rich_help_panel=_KFP
        ),
    ] = False,
) -> None:
    """Train: locally through kfp.local, or on a cluster with --host.

    Example: yolokf run --model yolov8n.yaml --data shapes
    Example: yolokf run --host http://localhost:8080 --epochs 50 --wait
    """
    from yolokf.local import run_local

    config = _config(model, data, epochs, imgsz, batch, device, workers, seed, set_)
    if host:
        from yolokf.image import resolve_image
    config, step = _cluster(config, resolve_image(image) if host else "local", locals())
    if host:
        from yolokf.remote import Submission, describe_submission, submit

        options = Submission(experiment, run_name, pipeline_root, service_account, cache, upload)
        if dry_run:
            lines = describe_submission(host, namespace, config, step, options)
            out().print("\n".join(lines), markup=False, highlight=False)
            return
        cluster = _connect(host, namespace, ca_bundle, insecure_skip_tls_verify, token_file, cookie_file)
        submitted = submit(cluster, config, step, options)
        out().print("\n".join(submitted.summary()), markup=False, highlight=False)
        if wait:
            _follow(cluster, submitted.run_id, timeout, terminate_on_interrupt, poll_interval)
        return
    if dry_run:
        raise UsageError("--dry-run shows what a --host run would submit; add --host URL (or set KFP_HOST).")
    result = run_local(config, Path(pipeline_root or "yolokf-runs"), step)
    _print_local_run(result)


@app.command()
def status(
    run_id: Annotated[str, typer.Argument(help="The run id `yolokf run --host` printed.")],
    host: Host = None,
    namespace: Namespace = None,
    ca_bundle: CaBundle = None,
    insecure_skip_tls_verify: InsecureTls = False,
    token_file: TokenFile = None,
    cookie_file: CookieFile = None,
    wait: Wait = False,
    timeout: Timeout = None,
    terminate_on_interrupt: TerminateOnInterrupt = False,
    poll_interval: PollInterval = 5.0,
) -> None:
    """Show a cluster run: state, tasks, error, outputs.  Example: yolokf status RUN_ID --host http://localhost:8080"""
    from yolokf.remote import get_report

    cluster = _connect(host, namespace, ca_bundle, insecure_skip_tls_verify, token_file, cookie_file)
    _print_report(get_report(cluster, run_id))
    if wait:
        _follow(cluster, run_id, timeout, terminate_on_interrupt, poll_interval)


def _print_report(run) -> None:  # noqa: ANN001
    from rich.table import Table

    from yolokf.remote import format_seconds

    out().print(f"Run {run.name} ({run.run_id}): {run.state}, {format_seconds(run.seconds)}", markup=False)
    if run.error:
        out().print(f"Error: {run.error}", markup=False, highlight=False)
    table = Table("task", "state", "time", "outputs (artifact ids)")
    for task in (t for t in run.tasks if t.is_step):
        outputs = ", ".join(f"{k}: {' '.join(v)}" for k, v in sorted(task.outputs.items()))
        table.add_row(task.name, task.state, format_seconds(task.seconds), outputs or "-")
    out().print(table)
    if run.state == "SUCCEEDED":
        out().print("Metrics, report and weights: open the run's artifacts in the UI (KFP's API does not serve them).")
    out().print(f"Details: {run.url}", markup=False, highlight=False)


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
    from yolokf import image as images

    spec = images.BuildSpec(base_image, repository, tag, platform, pip_index_url, pip_extra_index_url, weights)
    plan = images.plan_build(spec, push=push)
    if dry_run:
        out().print("\n".join(images.describe(plan)), markup=False, highlight=False)
        return
    result = images.build_image(plan, images.Reporter(errs()))
    out().print(result.digest_reference or plan.reference, markup=False, highlight=False)


@app.command()
def shapes(
    folder: Annotated[Path, typer.Argument(help="Folder to write the dataset into (must not exist).")],
) -> None:
    """Write the built-in synthetic shapes dataset (YOLO layout, 128 train / 32 val images)."""
    from yolokf.datasets import write_shapes

    if folder.exists():
        raise YolokfError(f"{folder} already exists; choose a new folder.")
    out().print(f"Wrote {write_shapes(folder)}")


def _print_local_run(result) -> None:  # noqa: ANN001
    from rich.table import Table

    table = Table(title="Final validation metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.4f}")
    out().print(table)
    for name, path in result.artifacts.items():
        out().print(f"{name:>8}: {path}")
    out().print(f"Trained in {result.seconds:.0f} s; outputs under {result.pipeline_root}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: errors become one line on stderr and an exit code."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="yolokf", standalone_mode=False)
    except typer.Abort:
        errs().print("Aborted.")
        sys.exit(130)
    except click.ClickException as exc:  # usage errors
        ctx = getattr(exc, "ctx", None)
        hint = f" See '{ctx.command_path} --help'." if ctx else ""
        message = exc.format_message()
        message = message if message.endswith((".", "?")) else message + "."
        errs().print(f"Error: {message}{hint}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except YolokfError as exc:
        if os.getenv("YOLOKF_DEBUG"):
            raise
        errs().print(f"Error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
