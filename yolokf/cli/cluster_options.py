"""The options that place a step on a cluster and reach it: the pod settings (`StepOptions`), the data sources,
the `--host` connection, and `yolokf fetch`'s. Each flag's text is parsed once, here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import typer

from yolokf.core.mounts import DEFAULT_WORKERS
from yolokf.pipeline.step_options import (
    DEFAULT_ACCELERATOR,
    DEFAULT_SHM_SIZE,
    DEFAULT_TRAINING_RUNTIME,
    Toleration,
    parse_duration,
    parse_pair,
    parse_toleration,
)

K8S_PANEL = "Cluster (ignored by local runs)"


DATA_PANEL = "Data sources"


RESUME_PANEL = "Checkpoints and resume"


KFP_PANEL = "Kubeflow Pipelines cluster (--host)"


class Pair(NamedTuple):
    """KEY=VALUE of a repeatable flag (a label, annotation or node selector)."""

    key: str
    value: str


def _pairs(flag: str) -> Callable[[str], Pair]:
    def parse(item: str) -> Pair:
        return Pair(*parse_pair(item, flag))

    return parse


def _pair_option(flag: str, help: str) -> tuple[Any, Any]:
    """A repeatable KEY=VALUE pod setting (label, annotation, node selector), parsed into Pairs."""
    option = typer.Option(flag, help=help, parser=_pairs(flag), metavar="TEXT", rich_help_panel=K8S_PANEL)
    return Annotated[list[Pair] | None, option], None


def _duration(text: str) -> int | None:
    return parse_duration(text, "--step-timeout")


# `yolokf fetch` and the download step (issue 18). The step's pod gets --fetch-workers as the same variable.
FetchWorkers = Annotated[
    int | None,
    typer.Option(
        "--fetch-workers",
        envvar="YOLOKF_FETCH_WORKERS",
        min=1,
        help=f"Objects downloaded at once. Default: {DEFAULT_WORKERS}.",
        rich_help_panel=DATA_PANEL,
    ),
]


FetchOut = Annotated[
    Path, typer.Option("--out", "-o", help="Folder to fetch into; what is already there and current is kept.")
]


FetchEndpoint = Annotated[
    str | None,
    typer.Option("--s3-endpoint-url", envvar="YOLOKF_S3_ENDPOINT_URL", help="S3 endpoint for MinIO and others."),
]


# Pod settings: parameter names are StepOptions' fields.
STEP_OPTIONS: dict[str, tuple[Any, Any]] = {
    "gpus": (
        Annotated[
            int | None,
            typer.Option(
                help="Accelerators for the training pod; N>1 trains with DDP on all, 0 on CPU.",
                rich_help_panel=K8S_PANEL,
            ),
        ],
        None,
    ),
    "nodes": (
        Annotated[
            int,
            typer.Option(
                help="Training nodes, each with --gpus (torchrun across nodes); N>1 without --host: N local "
                "CPU processes.",
                rich_help_panel=K8S_PANEL,
            ),
        ],
        1,
    ),
    "training_runtime": (
        Annotated[
            str,
            typer.Option(
                help="Kubeflow Trainer ClusterTrainingRuntime of the --nodes TrainJob.", rich_help_panel=K8S_PANEL
            ),
        ],
        DEFAULT_TRAINING_RUNTIME,
    ),
    "accelerator_type": (
        Annotated[str, typer.Option(help="Resource name the device plugin advertises.", rich_help_panel=K8S_PANEL)],
        DEFAULT_ACCELERATOR,
    ),
    "shm_size": (
        Annotated[
            str,
            typer.Option(help="Memory-backed /dev/shm for DataLoader workers; 0 for none.", rich_help_panel=K8S_PANEL),
        ],
        DEFAULT_SHM_SIZE,
    ),
    "cpu": (
        Annotated[str | None, typer.Option(help="CPU request and limit, e.g. 8 or 500m.", rich_help_panel=K8S_PANEL)],
        None,
    ),
    "memory": (
        Annotated[str | None, typer.Option(help="Memory request and limit, e.g. 32Gi.", rich_help_panel=K8S_PANEL)],
        None,
    ),
    "node_selector": _pair_option("--node-selector", "KEY=VALUE node label (repeatable)."),
    "tolerations": (
        Annotated[
            list[Toleration] | None,
            typer.Option(
                "--toleration",
                help="KEY=VALUE:EFFECT, KEY:EFFECT or KEY, as kubectl taint (repeatable).",
                parser=parse_toleration,
                metavar="TEXT",
                rich_help_panel=K8S_PANEL,
            ),
        ],
        None,
    ),
    "image_pull_secrets": (
        Annotated[
            list[str] | None,
            typer.Option("--image-pull-secret", help="Registry Secret (repeatable).", rich_help_panel=K8S_PANEL),
        ],
        None,
    ),
    "image_pull_policy": (
        Annotated[str | None, typer.Option(help="Always, IfNotPresent or Never.", rich_help_panel=K8S_PANEL)],
        None,
    ),
    "pod_labels": _pair_option("--pod-label", "KEY=VALUE pod label (repeatable)."),
    "pod_annotations": _pair_option("--pod-annotation", "KEY=VALUE pod annotation (repeatable)."),
    "step_timeout": (
        Annotated[
            int | None,
            typer.Option(
                help="Time limit of the training pod, e.g. 12h or 90m (activeDeadlineSeconds).",
                parser=_duration,
                metavar="TEXT",
                rich_help_panel=K8S_PANEL,
            ),
        ],
        None,
    ),
    "retries": (
        Annotated[
            int,
            typer.Option(
                help="Retries of a failed training step (backoff from 30 s; 1 s locally); resumes with a checkpoint.",
                rich_help_panel=K8S_PANEL,
            ),
        ],
        0,
    ),
    "data_pvc": (
        Annotated[
            str | None,
            typer.Option(
                help="PVC holding the dataset; --data is then the YAML's path in it.", rich_help_panel=DATA_PANEL
            ),
        ],
        None,
    ),
    "data_cache_pvc": (
        Annotated[
            str | None,
            typer.Option(
                help="PVC that caches datasets from s3:// and gs://: fetched once, read in place by the steps.",
                rich_help_panel=DATA_PANEL,
            ),
        ],
        None,
    ),
    "fetch_workers": (FetchWorkers, None),
    "data_secret": (
        Annotated[
            str | None,
            typer.Option(
                help="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for s3:// gs://; '-' for pod identity.",
                rich_help_panel=DATA_PANEL,
            ),
        ],
        None,
    ),
    "s3_endpoint_url": (
        Annotated[
            str | None,
            typer.Option(
                "--s3-endpoint-url",
                envvar="YOLOKF_S3_ENDPOINT_URL",
                help="S3 endpoint for MinIO and others.",
                rich_help_panel=DATA_PANEL,
            ),
        ],
        None,
    ),
    "checkpoint_pvc": (
        Annotated[
            str | None,
            typer.Option(help="PVC that keeps last.pt so a retried step resumes.", rich_help_panel=RESUME_PANEL),
        ],
        None,
    ),
    "checkpoint_dir": (
        Annotated[
            str | None,
            typer.Option(
                help="Folder that keeps last.pt (local runs, or a path mounted in the pod).",
                rich_help_panel=RESUME_PANEL,
            ),
        ],
        None,
    ),
    "run_key": (
        Annotated[
            str | None,
            typer.Option(
                help="Checkpoint subfolder. Default: derived from the training arguments.", rich_help_panel=RESUME_PANEL
            ),
        ],
        None,
    ),
}


# How to reach the KFP API (`run --host`, `status`): parameter names are kfp_api.Connection's fields.
CONNECTION_OPTIONS: dict[str, tuple[Any, Any]] = {
    "host": (
        Annotated[
            str | None,
            typer.Option(
                envvar=["KFP_HOST", "KF_PIPELINES_ENDPOINT"],
                help="KFP API URL; run there instead of locally. E.g. http://localhost:8080 (port-forward of "
                "ml-pipeline-ui).",
                rich_help_panel=KFP_PANEL,
            ),
        ],
        None,
    ),
    "namespace": (
        Annotated[
            str | None,
            typer.Option(
                envvar="KFP_NAMESPACE", help="Profile namespace (multi-user Kubeflow).", rich_help_panel=KFP_PANEL
            ),
        ],
        None,
    ),
    "ca_bundle": (
        Annotated[
            Path | None,
            typer.Option(
                envvar="YOLOKF_CA_BUNDLE",
                help="PEM CA bundle that signed the API's certificate.",
                rich_help_panel=KFP_PANEL,
            ),
        ],
        None,
    ),
    "insecure_skip_tls_verify": (
        Annotated[
            bool,
            typer.Option(
                "--insecure-skip-tls-verify", help="Do not verify the API's TLS certificate.", rich_help_panel=KFP_PANEL
            ),
        ],
        False,
    ),
    "token_file": (
        Annotated[
            Path | None,
            typer.Option(
                envvar="YOLOKF_KFP_TOKEN_FILE",
                help=(
                    "File holding a bearer token. Else $YOLOKF_KFP_TOKEN or $KFP_TOKEN, else "
                    "$KF_PIPELINES_SA_TOKEN_PATH."
                ),
                rich_help_panel=KFP_PANEL,
            ),
        ],
        None,
    ),
    "cookie_file": (
        Annotated[
            Path | None,
            typer.Option(
                envvar="YOLOKF_KFP_COOKIE_FILE",
                help="File holding the Dex/OIDC session cookie NAME=VALUE. Else $KFP_COOKIE.",
                rich_help_panel=KFP_PANEL,
            ),
        ],
        None,
    ),
}
