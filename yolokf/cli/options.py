"""The CLI's options: types, help, panels and environment variables, and the decorators that share them.

`@training_options` gives a command one option per training field, generated from `yolokf.core.settings.TrainConfig`
(name, type, default, help), and hands the command a checked `TrainConfig`. `@step_options` gives it the pod
settings and hands it a `StepOptions`. Each flag's text is parsed once, here, into the type the core uses.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from yolokf.cli.cluster_options import CONNECTION_OPTIONS, KFP_PANEL, STEP_OPTIONS
from yolokf.core.settings import PromoteOptions, SweepOptions, TrainConfig, parse_set, training_fields
from yolokf.pipeline.step_options import (
    StepOptions,
)
from yolokf.runs.connection import Connection
from yolokf.runs.runner import SUBPROCESS

if TYPE_CHECKING:
    from yolokf.runs.submit import Submission


def _training_option(field: Any) -> tuple[Any, Any]:
    if field.type is dict:  # train_args: repeated --set KEY=VALUE, parsed like ultralytics' CLI
        return Annotated[list[str] | None, typer.Option(field.flag, help=field.help)], None
    return Annotated[field.type, typer.Option(field.flag, help=field.help)], field.default


def _build_config(**values: Any) -> TrainConfig:
    values["train_args"] = parse_set(values["train_args"] or [])
    return TrainConfig(**values)


# The config file a command reads when neither --config nor $YOLOKF_CONFIG names one (docs/config.md).
DEFAULT_FILE = Path("yolokf.yaml")
SWEEP_PANEL = "Sweep"
_SWEEP_DEFAULTS = SweepOptions()
SWEEP_OPTIONS: dict[str, tuple[Any, Any]] = {
    "space": (
        Annotated[
            list[str] | None,
            typer.Option(
                metavar="KEY=SPEC",
                help="A searched setting (repeatable): loguniform:1e-4:1e-1, uniform:0:0.5, int:1:4 or "
                "choice:0,0.5,1.0. Keys: ultralytics train arguments, batch, imgsz.",
                rich_help_panel=SWEEP_PANEL,
            ),
        ],
        None,
    ),
    "trials": (
        Annotated[int, typer.Option(help="How many trials to draw.", rich_help_panel=SWEEP_PANEL)],
        _SWEEP_DEFAULTS.trials,
    ),
    "parallel": (
        Annotated[
            int, typer.Option(help="Trials at once on a cluster (one at a time here).", rich_help_panel=SWEEP_PANEL)
        ],
        _SWEEP_DEFAULTS.parallel,
    ),
    "sampler": (
        Annotated[str, typer.Option(help="random, grid or sobol; seeded by --seed.", rich_help_panel=SWEEP_PANEL)],
        _SWEEP_DEFAULTS.sampler,
    ),
    "metric": (
        Annotated[
            str, typer.Option(help="The metric that picks the best trial, e.g. mAP50-95.", rich_help_panel=SWEEP_PANEL)
        ],
        _SWEEP_DEFAULTS.metric,
    ),
    "mode": (
        Annotated[str, typer.Option(help="max or min: which way --metric is better.", rich_help_panel=SWEEP_PANEL)],
        _SWEEP_DEFAULTS.mode,
    ),
    "halving": (
        Annotated[
            int | None,
            typer.Option(
                metavar="ETA",
                help="Successive halving: all trials train a short budget, the best 1/ETA continue from their "
                "checkpoint, until --epochs. The number of rounds is fixed when compiled; each round's epochs and "
                "kept trials follow the run's epochs and trials.",
                rich_help_panel=SWEEP_PANEL,
            ),
        ],
        _SWEEP_DEFAULTS.halving,
    ),
}


PROMOTE_PANEL = "Evaluate, export, gate, register"
_PROMOTE_DEFAULTS = PromoteOptions()


def _promote_option(kind: Any, help: str, *names: str, **extra: Any) -> Any:
    return Annotated[kind, typer.Option(*names, help=help, rich_help_panel=PROMOTE_PANEL, **extra)]


PROMOTE_OPTIONS: dict[str, tuple[Any, Any]] = {
    "evaluate": (
        _promote_option(bool, "Evaluate the weights on the held-out split (test:, else val:).", "--evaluate"),
        _PROMOTE_DEFAULTS.evaluate,
    ),
    "export": (
        _promote_option(
            list[str] | None,
            "Export formats, checked against the .pt: onnx, openvino, torchscript, engine (GPU). Comma-separated "
            "or repeated.",
            metavar="FORMATS",
        ),
        None,
    ),
    "export_imgsz": (_promote_option(int | None, "Export image size. Default: the weights' training imgsz."), None),
    "dynamic": (_promote_option(bool, "Export with a dynamic batch (and image) size.", "--dynamic"), False),
    "half": (_promote_option(bool, "Export in half precision (GPU).", "--half"), False),
    "simplify": (
        _promote_option(bool, "Simplify the ONNX graph (onnxslim).", "--simplify/--no-simplify"),
        _PROMOTE_DEFAULTS.simplify,
    ),
    "export_tolerance": (
        _promote_option(float, "Largest relative change of the task's metric of an export from the .pt model's."),
        _PROMOTE_DEFAULTS.export_tolerance,
    ),
    "export_agreement": (
        _promote_option(float, "Smallest share of the .pt's predictions an export must repeat (IoU>=0.5)."),
        _PROMOTE_DEFAULTS.export_agreement,
    ),
    "gate": (
        _promote_option(
            list[str] | None, "Quality gate, e.g. 'mAP50-95>=0.45' (repeatable); decides registration.", metavar="EXPR"
        ),
        None,
    ),
    "gate_action": (
        _promote_option(str, "When a gate is missed: skip (register nothing) or fail (fail the run)."),
        _PROMOTE_DEFAULTS.gate_action,
    ),
    "registry": (
        _promote_option(
            str | None,
            "Kubeflow Model Registry URL to register the model in, or mlflow (the --mlflow server's registry).",
            envvar="YOLOKF_REGISTRY",
        ),
        None,
    ),
    "registered_model": (
        _promote_option(str | None, "Registered model name. Default: <model>-<data> of the run."),
        None,
    ),
    "registry_token_file": (
        _promote_option(
            str | None,
            "File with the registry token (in the pod on a cluster). Default: the pod's service-account token.",
            envvar="YOLOKF_REGISTRY_TOKEN_FILE",
        ),
        None,
    ),
    "registry_ca_bundle": (_promote_option(str | None, "PEM CA bundle of the registry's TLS certificate."), None),
    "champion": (
        _promote_option(
            bool, "Register only when better than the best registered version on the same data.", "--champion"
        ),
        False,
    ),
    "champion_margin": (
        _promote_option(float, "How much better a champion must be."),
        _PROMOTE_DEFAULTS.champion_margin,
    ),
    "registry_token_secret": (
        _promote_option(str | None, "Secret (key 'token') with the registry token, mounted into the register step."),
        None,
    ),
    "registry_ca_configmap": (
        _promote_option(str | None, "ConfigMap (key 'ca.crt') with the registry's CA, mounted into the register step."),
        None,
    ),
    "serving_service_account": (
        _promote_option(str | None, "InferenceService service account (KServe's S3/MinIO credentials)."),
        None,
    ),
    "serving_max_batch": (
        _promote_option(int, "Triton max_batch_size of a --dynamic ONNX export."),
        _PROMOTE_DEFAULTS.serving_max_batch,
    ),
}


def _build_promote(export: list[str] | None, gate: list[str] | None, **values: Any) -> PromoteOptions:
    return PromoteOptions(exports=tuple(export or ()), gates=tuple(gate or ()), **values)


def _build_sweep(space: list[str] | None, **values: Any) -> SweepOptions:
    return SweepOptions(space=tuple(space or ()), **values)


def _replace_parameter(
    command: Callable[..., Any], target: str, options: dict[str, tuple[Any, Any]], build: Callable[..., Any]
) -> Callable[..., Any]:
    """`command` with its parameter `target` replaced by `options` (name -> (annotation, default)).

    Typer reads the options from the new signature; the wrapper builds `target` from their values with `build`.
    """
    signature = inspect.signature(command, eval_str=True)
    parameters: list[inspect.Parameter] = []
    kind = inspect.Parameter.KEYWORD_ONLY  # typer passes every value by name
    for parameter in signature.parameters.values():
        if parameter.name != target:
            # Kept as is once keyword-only (wrapped by another of these): start-up time, ~700 copies otherwise.
            parameters.append(parameter if parameter.kind == kind else parameter.replace(kind=kind))
            continue
        parameters += [inspect.Parameter(n, kind, annotation=a, default=d) for n, (a, d) in options.items()]

    def wrapper(**kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in options}
        return command(**kwargs, **{target: build(**values)})

    return with_parameters(wrapper, command, signature.replace(parameters=parameters))


def with_parameters(
    wrapper: Callable[..., Any], command: Callable[..., Any], signature: inspect.Signature
) -> Callable[..., Any]:
    """`wrapper` presented as `command` with `signature`: typer reads the options from it."""
    wrapper.__name__ = command.__name__
    wrapper.__doc__ = command.__doc__
    wrapper.__module__ = command.__module__
    wrapper.__signature__ = signature  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return wrapper


def training_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Replace the command's `config: TrainConfig` parameter with one option per training field."""
    options = {field.name: _training_option(field) for field in training_fields()}
    return _replace_parameter(command, "config", options, _build_config)


# `yolokf evaluate`: the training fields an evaluation reads; the image size is the weights' own, nothing trains.
EVALUATION_FIELDS = ("model", "data", "batch", "device")


def evaluation_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Replace the command's `config: TrainConfig` parameter with the training fields that apply to evaluating
    weights (issue 26: `evaluate --help` lists no option it ignores); the others keep TrainConfig's defaults."""
    options = {f.name: _training_option(f) for f in training_fields() if f.name in EVALUATION_FIELDS}
    return _replace_parameter(command, "config", options, TrainConfig)


def step_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Replace the command's `step: StepOptions` parameter with the pod-setting options."""
    return _replace_parameter(command, "step", STEP_OPTIONS, StepOptions)


def promote_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Replace the command's `promote: PromoteOptions` parameter with the evaluate/export/gate/registry options."""
    return _replace_parameter(command, "promote", PROMOTE_OPTIONS, _build_promote)


def sweep_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Replace the command's `sweep: SweepOptions` parameter with the sweep's options."""
    return _replace_parameter(command, "sweep", SWEEP_OPTIONS, _build_sweep)


def connection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Replace the command's `connection: Connection` parameter with the `--host` options."""

    return _replace_parameter(command, "connection", CONNECTION_OPTIONS, Connection)


Image = Annotated[
    str | None,
    typer.Option(envvar="YOLOKF_IMAGE", help="Step image (tag or digest). Default: the image build-image made."),
]
PipelineRoot = Annotated[
    str | None,
    typer.Option(
        envvar="YOLOKF_PIPELINE_ROOT",
        help="Where outputs go: a folder for local runs (default yolokf-runs); with --host an object-store URI, "
        "e.g. minio://mlpipeline/v2/artifacts (default: the cluster's).",
    ),
]
Verbose = Annotated[
    bool,
    typer.Option("--verbose", "-v", help="Local runs: also show kfp.local's own output (executor input, artifacts)."),
]
LocalRunner = Annotated[
    str,
    typer.Option(
        "--runner",
        envvar="YOLOKF_RUNNER",
        help="Local runs: subprocess (steps in this Python) or docker (each step in a container of the image, as a "
        "pod; test the image and the pipeline before the cluster).",
    ),
]
Out = Annotated[Path, typer.Option("--out", "-o", help="Pipeline YAML to write.")]
InsteadOut = Annotated[
    Path | None, typer.Option("--out", "-o", help="Write the pipeline's YAML here instead of running it.")
]

Wait = Annotated[
    bool,
    typer.Option("--wait", help="Follow the run until it ends; exit 4 unless it succeeds.", rich_help_panel=KFP_PANEL),
]
Timeout = Annotated[
    str | None, typer.Option(help="With --wait: give up after this long, e.g. 90m or 12h.", rich_help_panel=KFP_PANEL)
]
TerminateOnInterrupt = Annotated[
    bool,
    typer.Option(
        "--terminate-on-interrupt",
        help="With --wait: Ctrl-C terminates the run without asking (for scripts).",
        rich_help_panel=KFP_PANEL,
    ),
]
PollInterval = Annotated[float, typer.Option(envvar="YOLOKF_POLL_INTERVAL", hidden=True)]
Experiment = Annotated[
    str, typer.Option(envvar="YOLOKF_EXPERIMENT", help="Experiment; created when missing.", rich_help_panel=KFP_PANEL)
]
RunName = Annotated[str | None, typer.Option(help="Default: <model>-<data>-<time>.", rich_help_panel=KFP_PANEL)]
ServiceAccount = Annotated[
    str | None, typer.Option(help="Kubernetes service account of the run's pods.", rich_help_panel=KFP_PANEL)
]
Cache = Annotated[
    bool | None,
    typer.Option(
        "--cache/--no-cache",
        help="Reuse cached step results (not the download's: it reads the data every run). Default: on.",
        rich_help_panel=KFP_PANEL,
    ),
]
Upload = Annotated[
    bool,
    typer.Option("--upload", help="Register the pipeline (a new version if it exists).", rich_help_panel=KFP_PANEL),
]
DryRun = Annotated[
    bool,
    typer.Option(
        "--dry-run", help="With --host: print what would be submitted, contact nothing.", rich_help_panel=KFP_PANEL
    ),
]


@dataclass(frozen=True)
class RunOptions:
    """Where a run's outputs go and how a --host run is submitted and followed (run, tune, evaluate)."""

    pipeline_root: str | None
    image: str | None
    verbose: bool
    runner: str
    experiment: str
    run_name: str | None
    service_account: str | None
    cache: bool | None
    upload: bool
    wait: bool
    timeout: str | None
    terminate_on_interrupt: bool
    poll_interval: float

    def submission(self) -> Submission:
        # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
        from yolokf.runs.submit import Submission

        return Submission(
            self.experiment, self.run_name, self.pipeline_root, self.service_account, self.cache, self.upload
        )


RUN_OPTIONS: dict[str, tuple[Any, Any]] = {
    "pipeline_root": (PipelineRoot, None),
    "image": (Image, None),
    "verbose": (Verbose, False),
    "runner": (LocalRunner, SUBPROCESS),
    "experiment": (Experiment, "yolokf"),
    "run_name": (RunName, None),
    "service_account": (ServiceAccount, None),
    "cache": (Cache, None),
    "upload": (Upload, False),
    "wait": (Wait, False),
    "timeout": (Timeout, None),
    "terminate_on_interrupt": (TerminateOnInterrupt, False),
    "poll_interval": (PollInterval, 5.0),
}


def run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Replace the command's `run: RunOptions` parameter with the pipeline-root, image and --host run options."""
    return _replace_parameter(command, "run", RUN_OPTIONS, RunOptions)
