"""From weights to a shippable model, planned once: evaluation, exports, quality gates, Model Registry, serving.

`plan_promotion` checks the promote flags (`--export`, `--gate`, `--registry`, ...) before anything runs and turns
them into a `Promotion` that the pipeline builds its steps from (docs/promote.md). The steps themselves are in
`yolokf/steps/` (evaluate, export, gate, register, serving).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from yolokf.errors import UsageError
from yolokf.settings import PromoteOptions

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
    registry: str | None
    registered_model: str
    token_file: str
    ca_bundle: str
    champion_metric: str  # "" unless --champion
    champion_margin: float
    serving_name: str


def plan_promotion(
    options: PromoteOptions, *, task: str | None, stem: str, gpu: Callable[[], bool], local: bool
) -> Promotion | None:
    """Check the promote flags against the model's task and where the steps run; None when none is given.

    `gpu()`: whether the steps will have a GPU (a local CUDA device, or `--gpus N` on a cluster). `local`: the steps
    run on this machine, so files and the registry can be checked from here before anything runs.
    """
    from yolokf.tasks import primary_metric, task_metrics

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
    if registry and not re.match(r"^https?://[^/\s]+", registry):
        raise UsageError(f"--registry {registry!r} is not a URL; e.g. https://model-registry-service.kubeflow:8443.")
    name = options.registered_model or stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", name):
        raise UsageError(f"--registered-model {name!r}: use letters, digits, '.', '_' and '-' (128 at most).")
    if local:
        _check_local_files(options)
        if registry:
            from yolokf.steps.register import check_registry

            token = Path(options.registry_token_file).read_text().strip() if options.registry_token_file else None
            check_registry(registry, token, options.registry_ca_bundle)
    return Promotion(
        formats=tuple(formats),
        export_imgsz=options.export_imgsz,
        dynamic=options.dynamic,
        half=options.half,
        simplify=options.simplify,
        tolerance=options.export_tolerance,
        gates=gates,
        gate_action=options.gate_action,
        registry=registry,
        registered_model=name,
        token_file=options.registry_token_file or "",
        ca_bundle=options.registry_ca_bundle or "",
        champion_metric=primary_metric(task) if options.champion else "",
        champion_margin=options.champion_margin,
        serving_name=serving_name(name),
    )


def _check_local_files(options: PromoteOptions) -> None:
    for flag, value in (
        ("--registry-token-file", options.registry_token_file),
        ("--registry-ca-bundle", options.registry_ca_bundle),
    ):
        if value and not Path(value).is_file():
            raise UsageError(f"{flag} {value}: no such file.")


def serving_name(registered_model: str) -> str:
    """The KServe/Triton name for a registered model, made to fit KServe's rule (yolokf.steps.serving)."""
    from yolokf.steps.serving import NAME_MAX  # plain Python: the step module imports onnx only when it runs

    name = re.sub(r"[^a-z0-9-]+", "-", registered_model.lower()).strip("-")
    name = name if name[:1].isalpha() else f"m-{name}"
    return name[:NAME_MAX].rstrip("-") or "yolo"
