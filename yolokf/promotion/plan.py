"""From weights to a shippable model, planned once: evaluation, exports, quality gates, Model Registry, serving.

`plan_promotion` checks the promote flags (`--export`, `--gate`, `--registry`, ...) before anything runs and turns
them into a `Promotion` that the pipeline builds its steps from (docs/promote.md). The steps themselves are in
this package (evaluate, export, gate, register, serving).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from yolokf.core.errors import UsageError
from yolokf.core.settings import PromoteOptions
from yolokf.core.tasks import model_task, task_metrics
from yolokf.promotion.serving import NAME_MAX
from yolokf.tracking.plan import MLFLOW_REGISTRY

EXPORT_FORMATS = ("onnx", "openvino", "torchscript", "engine")
GATE_ACTIONS = ("skip", "fail")
_GATE = re.compile(r"^\s*([A-Za-z][\w.\-]*?)\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
_OPERATORS = {">=": float.__ge__, ">": float.__gt__, "<=": float.__le__, "<": float.__lt__}


@dataclass(frozen=True)
class Gate:
    """One quality gate: METRIC OP VALUE, e.g. mAP50-95>=0.45."""

    metric: str
    op: str
    threshold: float

    @property
    def text(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"

    def passes(self, value: float) -> bool:
        return bool(_OPERATORS[self.op](float(value), self.threshold))

    def miss(self, value: float) -> str:
        """How a value misses this gate, e.g. 'mAP50-95 0.4100 < 0.45 (short by 0.0400)'."""
        return f"{self.metric} {value:.4f} misses {self.op}{self.threshold:g} (by {abs(value - self.threshold):.4f})"


def parse_gate(text: str) -> Gate:
    match = _GATE.match(text)
    if not match:
        raise UsageError(
            f"--gate {text!r} is not METRIC OP VALUE with OP one of >=, >, <=, <; e.g. --gate 'mAP50-95>=0.45'."
        )
    return Gate(match[1], match[2], float(match[3]))


@dataclass(frozen=True)
class Promotion:
    """What the pipeline runs after training, checked."""

    formats: tuple[str, ...]
    export_imgsz: int | None  # None: the training image size
    dynamic: bool
    half: bool
    simplify: bool
    tolerance: float
    gates: tuple[Gate, ...]
    gate_action: str
    agreement: float
    registry: str | None
    registered_model: str  # "": the steps name it from the run's model and data (default_registered_model)
    token_file: str
    ca_bundle: str
    champion: bool  # the metric is the weights' task's, known in the registration step
    champion_margin: float
    serving_name: str  # "": from the registered model's name, in the export step
    serving_service_account: str
    serving_max_batch: int
    token_secret: str  # mounted at TOKEN_SECRET_PATH in the registration step; "" for none
    ca_configmap: str  # mounted at CA_CONFIGMAP_PATH


# Where the registration step finds --registry-token-secret's and --registry-ca-configmap's files.
TOKEN_SECRET_PATH = "/var/run/secrets/yolokf/registry-token"
CA_CONFIGMAP_PATH = "/var/run/secrets/yolokf/registry-ca"
_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


def plan_promotion(
    options: PromoteOptions, *, task: str | None, stem: str, gpu: Callable[[], bool], local: bool
) -> Promotion | None:
    """Check the promote flags against the model's task and where the steps run; None when none is given.

    `gpu()`: whether the steps will have a GPU (a local CUDA device, or `--gpus N` on a cluster). `local`: the steps
    run on this machine, so files and the registry can be checked from here before anything runs.
    """

    if options.champion and not options.registry:
        raise UsageError("--champion needs --registry URL.")
    if not options.active:
        if options.registered_model:
            raise UsageError("--registered-model needs --registry URL.")
        return None
    formats: list[str] = []
    for fmt in (part.strip().lower() for item in options.exports for part in item.split(",")):
        if fmt not in EXPORT_FORMATS:
            raise UsageError(f"--export {fmt!r} is not a format yolokf exports; use {', '.join(EXPORT_FORMATS)}.")
        if fmt not in formats:
            formats.append(fmt)
    if ("engine" in formats or options.half) and not gpu():
        what = "--export engine (TensorRT)" if "engine" in formats else "--half"
        where = "this machine has no CUDA GPU; run on a cluster with --gpus 1" if local else "add --gpus 1"
        raise UsageError(f"{what} needs a GPU in the step: {where}.")
    if options.export_imgsz is not None and options.export_imgsz < 32:
        raise UsageError(f"--export-imgsz must be at least 32, got {options.export_imgsz}.")
    if not 0 <= options.export_tolerance <= 1:
        raise UsageError(f"--export-tolerance must be between 0 and 1, got {options.export_tolerance}.")
    if not 0 <= options.export_agreement <= 1:
        raise UsageError(f"--export-agreement must be between 0 and 1, got {options.export_agreement}.")
    if options.gate_action not in GATE_ACTIONS:
        raise UsageError(f"--gate-action {options.gate_action!r}: use skip (register nothing) or fail (fail the run).")
    gates = tuple(parse_gate(text) for text in options.gates)
    known = task_metrics(task)
    for gate in gates:
        if known and gate.metric not in known:
            raise UsageError(f"--gate {gate.text}: a {task} model reports {', '.join(known)}.")
    if options.champion_margin < 0:
        raise UsageError(f"--champion-margin must be 0 or more, got {options.champion_margin}.")
    registry = options.registry.rstrip("/") if options.registry else None
    if registry and registry != MLFLOW_REGISTRY and not re.match(r"^https?://[^/\s]+", registry):
        raise UsageError(
            f"--registry {registry!r} is not a URL; e.g. https://model-registry-service.kubeflow:8443, or "
            "'mlflow' for the registry of the --mlflow server."
        )
    if registry == MLFLOW_REGISTRY and any(
        (
            options.registry_token_file,
            options.registry_ca_bundle,
            options.registry_token_secret,
            options.registry_ca_configmap,
        )
    ):
        raise UsageError(
            "--registry mlflow uses the credentials of --mlflow (MLflow's environment variables, --mlflow-secret); "
            "leave out the --registry-token-* and --registry-ca-* flags."
        )
    name = options.registered_model or stem  # checked here; the steps derive the default from the run's values
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", name):
        raise UsageError(f"--registered-model {name!r}: use letters, digits, '.', '_' and '-' (128 at most).")
    for flag, value in (
        ("--registry-token-secret", options.registry_token_secret),
        ("--registry-ca-configmap", options.registry_ca_configmap),
        ("--serving-service-account", options.serving_service_account),
    ):
        if value is not None and (len(value) > 253 or not _K8S_NAME.fullmatch(value)):
            raise UsageError(f"{flag} {value!r} is not a Kubernetes name: lowercase letters, digits, '-' and '.'.")
    if options.registry_token_secret and options.registry_token_file:
        raise UsageError("Give --registry-token-secret or --registry-token-file, not both.")
    if options.registry_ca_configmap and options.registry_ca_bundle:
        raise UsageError("Give --registry-ca-configmap or --registry-ca-bundle, not both.")
    if (options.registry_token_secret or options.registry_ca_configmap) and not registry:
        raise UsageError("--registry-token-secret and --registry-ca-configmap need --registry URL.")
    if local and (options.registry_token_secret or options.registry_ca_configmap):
        raise UsageError(
            "--registry-token-secret and --registry-ca-configmap mount cluster objects; locally, give "
            "--registry-token-file and --registry-ca-bundle."
        )
    if options.serving_max_batch < 1:
        raise UsageError(f"--serving-max-batch must be at least 1, got {options.serving_max_batch}.")
    if local:
        _check_local_files(options)
        if registry and registry != MLFLOW_REGISTRY:  # the MLflow server is checked with --mlflow (Job.with_tracking)
            # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
            from yolokf.promotion.register import check_registry

            token = Path(options.registry_token_file).read_text().strip() if options.registry_token_file else None
            check_registry(registry, token, options.registry_ca_bundle)
    return Promotion(
        formats=tuple(formats),
        export_imgsz=options.export_imgsz,
        dynamic=options.dynamic,
        half=options.half,
        simplify=options.simplify,
        tolerance=options.export_tolerance,
        agreement=options.export_agreement,
        gates=gates,
        gate_action=options.gate_action,
        registry=registry,
        registered_model=options.registered_model or "",
        token_file=(f"{TOKEN_SECRET_PATH}/token" if options.registry_token_secret else "")
        or options.registry_token_file
        or "",
        ca_bundle=(f"{CA_CONFIGMAP_PATH}/ca.crt" if options.registry_ca_configmap else "")
        or options.registry_ca_bundle
        or "",
        champion=options.champion,
        champion_margin=options.champion_margin,
        serving_name=serving_name(options.registered_model) if options.registered_model else "",
        serving_service_account=options.serving_service_account or "",
        serving_max_batch=options.serving_max_batch,
        token_secret=options.registry_token_secret or "",
        ca_configmap=options.registry_ca_configmap or "",
    )


def promoted_task(model: str) -> str | None:
    """The task of the model the promote steps get: from its name (`yolov8n-seg.yaml`), else, for weights on this
    machine named otherwise (`best.pt`), from the checkpoint itself, so gates are checked before anything runs."""

    task = model_task(model)
    if task is None and model.endswith(".pt") and Path(model).is_file():
        # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
        from yolokf.promotion.evaluate import weights_info

        try:
            return weights_info(model).task
        except Exception:  # not ultralytics weights: offline.check_model says so in one line
            return None
    return task


def _check_local_files(options: PromoteOptions) -> None:
    for flag, value in (
        ("--registry-token-file", options.registry_token_file),
        ("--registry-ca-bundle", options.registry_ca_bundle),
    ):
        if value and not Path(value).is_file():
            raise UsageError(f"{flag} {value}: no such file.")


def default_registered_model(model: str, data: str) -> str:
    """`yolov8n-coco128`: the model's and the dataset's names, as the run received them (issue 15)."""

    def stem(value: str) -> str:
        name = value.rstrip("/").rsplit("/", 1)[-1]
        name = re.sub(r"\.(pt|ya?ml|zip|tar\.gz|tgz)$", "", name)
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "data"

    return f"{stem(model)}-{stem(data)}"[:128]


def serving_name(registered_model: str) -> str:
    """The KServe/Triton name for a registered model, made to fit KServe's rule (yolokf.promotion.serving)."""

    name = re.sub(r"[^a-z0-9-]+", "-", registered_model.lower()).strip("-")
    name = name if name[:1].isalpha() else f"m-{name}"
    return name[:NAME_MAX].rstrip("-") or "yolo"
