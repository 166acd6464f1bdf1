"""What to train: the training fields, defined once, and ultralytics' train arguments checked before anything runs.

Names follow ultralytics (`model`, `data`, `epochs`, `imgsz`, `batch`, ...). Anything else goes
through `--set KEY=VALUE` (the `train_args` field) and is checked against ultralytics' own config rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, get_origin, get_type_hints

from yolokf.core.errors import UsageError

if TYPE_CHECKING:
    from yolokf.core.ultralytics_cfg import UltralyticsCfg

MANAGED = {
    "project": "yolokf writes the run folder into the step's outputs",
    "name": "yolokf writes the run folder into the step's outputs",
    "exist_ok": "yolokf writes the run folder into the step's outputs",
    "resume": "use --checkpoint-pvc/--checkpoint-dir; a retried step resumes by itself",
    "mode": "yolokf always trains",
    "cfg": "pass the arguments with --set instead",
}


def _field(default: Any, help: str, *, minimum: int | None = None, flag: str | None = None) -> Any:
    """A training field: its default, its --help text, its lower bound, and its flag when not `--NAME`."""
    metadata = {"help": help, "minimum": minimum, "flag": flag}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TrainConfig:
    """The training fields: the one definition of what a training run takes.

    Each field is, under the same name, a CLI flag, a pipeline parameter (its compiled default is the
    resolved value), a run argument of `run --host`, an input of the training component, and an argument of
    `YOLO(model).train(...)` (`model` goes to `YOLO()`, `data` is resolved in the step, `train_args` is
    spread). Names and defaults are ultralytics' own. Adding a field here adds it everywhere.
    """

    model: str = _field("yolov8n.pt", "Weights (.pt) or model YAML (yolov8n.yaml trains from scratch).")
    data: str = _field(
        "coco128.yaml",
        "Dataset YAML, YOLO dataset folder, 'shapes' (built in, offline; shapes-seg, -pose, -obb, -cls for the "
        "other tasks), s3:// gs:// https:// folder or archive, or pvc://PVC/path/data.yaml.",
    )
    epochs: int = _field(100, "Training epochs.", minimum=1)
    imgsz: int = _field(640, "Image size in pixels.", minimum=1)
    batch: int = _field(16, "Batch size.", minimum=1)
    device: str = _field("", "ultralytics device: '' picks, 'cpu', '0', '0,1'.")
    workers: int = _field(8, "DataLoader workers.", minimum=0)
    seed: int = _field(0, "Random seed.", minimum=0)
    train_args: dict[str, Any] = _field(
        {}, "Any other ultralytics train argument, KEY=VALUE (repeatable).", flag="--set"
    )

    def __post_init__(self) -> None:
        for spec in fields(self):
            value, minimum = getattr(self, spec.name), spec.metadata["minimum"]
            if minimum is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise UsageError(f"--{spec.name} must be a whole number of at least {minimum}, got {value!r}.")
        if not self.model.strip():
            raise UsageError("--model is empty: give a weights file (yolov8n.pt) or a model YAML (yolov8n.yaml).")
        if not self.data.strip():
            raise UsageError("--data is empty: give a dataset YAML, a dataset folder, or 'shapes'.")
        object.__setattr__(self, "train_args", check_train_args(dict(self.train_args or {})))

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> TrainConfig:
        """The config a training step received as its inputs (the inverse of `parameters`)."""
        names = {spec.name for spec in fields(cls)}
        unknown = sorted(set(parameters) - names)
        if unknown:
            raise UsageError(f"Unknown training parameters: {', '.join(unknown)}; known: {', '.join(sorted(names))}.")
        return cls(**dict(parameters))

    def parameters(self) -> dict[str, Any]:
        """The pipeline parameters, by name: compiled as defaults, submitted as run arguments, received by the step."""
        return {spec.name: _copy(getattr(self, spec.name)) for spec in fields(self)}

    def train_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `YOLO(self.model).train`, without `data` (resolved inside the step)."""
        kwargs = {name: value for name, value in self.parameters().items() if name not in ("model", "data")}
        kwargs["device"] = kwargs["device"] or None  # ultralytics picks on None, not on ''
        extra = kwargs.pop("train_args")
        return {**kwargs, **extra}

    def with_overrides(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)

    def with_values(self, values: Mapping[str, Any]) -> TrainConfig:
        """This config with a sweep trial's values: training fields by name, train arguments into `train_args`."""
        own = {key: value for key, value in values.items() if key in SWEEPABLE_FIELDS}
        extra = {key: value for key, value in values.items() if key not in SWEEPABLE_FIELDS}
        return replace(self, **own, train_args={**self.train_args, **extra})


SWEEP_MODES = ("max", "min")


@dataclass(frozen=True)
class SweepOptions:
    """`yolokf tune`'s own flags, as given."""

    space: tuple[str, ...] = ()
    trials: int = 8
    parallel: int = 2
    sampler: str = "random"
    metric: str = "fitness"  # ultralytics' own ranking of epochs
    mode: str = "max"
    halving: int | None = None


@dataclass(frozen=True)
class PromoteOptions:
    """The flags that take a trained model on to evaluation, export, a quality gate and Model Registry, as given."""

    evaluate: bool = False
    exports: tuple[str, ...] = ()
    export_imgsz: int | None = None
    dynamic: bool = False
    half: bool = False
    simplify: bool = True
    export_tolerance: float = 0.02  # relative to the .pt's metric (yolokf.promotion.export)
    export_agreement: float = 0.9
    gates: tuple[str, ...] = ()
    gate_action: str = "skip"
    registry: str | None = None
    registered_model: str | None = None
    registry_token_file: str | None = None
    registry_ca_bundle: str | None = None
    champion: bool = False
    champion_margin: float = 0.0
    registry_token_secret: str | None = None  # a Secret (key `token`) mounted into the registration step
    registry_ca_configmap: str | None = None  # a ConfigMap (key `ca.crt`) mounted into the registration step
    serving_service_account: str | None = None  # the InferenceService's (KServe's storage credentials)
    serving_max_batch: int = 8  # Triton's max_batch_size for a --dynamic ONNX export

    @property
    def active(self) -> bool:
        """Whether the pipeline goes on after training (a plain run stops at the weights)."""
        return bool(self.evaluate or self.exports or self.gates or self.registry)


def _copy(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


@dataclass(frozen=True)
class FieldInfo:
    """One training field as the CLI and the pipeline see it."""

    name: str
    type: type  # str, int or dict: what KFP types a pipeline parameter with
    default: Any
    help: str
    flag: str


def training_fields() -> tuple[FieldInfo, ...]:
    """The training fields in order, with their types, defaults and help (from `TrainConfig`)."""
    hints = get_type_hints(TrainConfig)
    infos = []
    for spec in fields(TrainConfig):
        hint = hints[spec.name]
        default = spec.default_factory() if spec.default_factory is not MISSING else spec.default
        infos.append(
            FieldInfo(
                name=spec.name,
                type=get_origin(hint) or hint,
                default=default,
                help=spec.metadata["help"],
                flag=spec.metadata["flag"] or f"--{spec.name.replace('_', '-')}",
            )
        )
    return tuple(infos)


OWN_FLAGS = tuple(spec.name for spec in fields(TrainConfig) if spec.metadata["flag"] is None)
# Training fields a sweep may vary (`yolokf tune --space`); the others define the run, not a trial.
SWEEPABLE_FIELDS = ("batch", "imgsz")
# ultralytics' optimizer=auto picks these itself (BaseTrainer.build_optimizer), so a value given for them is unused.
IGNORED_UNDER_AUTO = ("lr0", "momentum")


def ignored_under_auto(keys: Iterable[str], train_args: Mapping[str, Any]) -> list[str]:
    """The `keys` ultralytics would ignore because the optimizer is (by default) `auto`."""
    if str(train_args.get("optimizer", "auto")).lower() != "auto":
        return []
    return [key for key in IGNORED_UNDER_AUTO if key in set(keys)]


def auto_optimizer_hint(keys: list[str]) -> str:
    """What to say when `keys` would be ignored under optimizer=auto."""
    names = " and ".join(keys)
    return (
        f"{names} {'has' if len(keys) == 1 else 'have'} no effect with optimizer=auto (ultralytics then picks lr0 and "
        "momentum itself); add --set optimizer=SGD (or Adam, AdamW, NAdam, RAdam, RMSProp) to use "
        f"{'it' if len(keys) == 1 else 'them'}"
    )


def parse_set(items: list[str]) -> dict[str, Any]:
    """Turn repeated `--set KEY=VALUE` into a dict, values parsed as YAML like ultralytics' CLI does."""
    import yaml  # 25 ms that `--help` and a compile without --set skip

    args: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise UsageError(f"--set {item!r} is not KEY=VALUE; for example --set lr0=0.005")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and value.lower() == "none":
            value = None
        args[key] = value
    return args


def check_train_args(args: dict[str, Any]) -> dict[str, Any]:
    """Check extra train arguments against ultralytics' config; return them unchanged when valid."""
    if not args:
        return {}
    import difflib

    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.core import ultralytics_cfg

    cfg = ultralytics_cfg.load()  # 60 ms: only when there is something to check
    for key, value in args.items():
        if key in OWN_FLAGS:
            raise UsageError(f"--set {key}=... has its own flag: use --{key} instead.")
        if key in MANAGED:
            raise UsageError(f"--set {key}=... is not accepted: {MANAGED[key]}.")
        if key not in cfg.defaults:
            close = difflib.get_close_matches(key, list(cfg.defaults), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UsageError(
                f"--set {key}=... is not an ultralytics train argument.{hint} "
                "See https://docs.ultralytics.com/usage/cfg/"
            )
        problem = _type_problem(cfg, key, value)
        if problem:
            raise UsageError(f"--set {key}={value}: {problem}.")
    return dict(args)


def _type_problem(cfg: UltralyticsCfg, key: str, value: Any) -> str | None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if value is None:
        typed = cfg.float_keys | cfg.fraction_keys | cfg.int_keys | cfg.bool_keys | cfg.str_keys
        if key in typed and cfg.defaults.get(key) is not None:
            return f"'{key}' must not be None"
        return None
    if key in cfg.float_keys and not number:
        return "must be a number"
    if key in cfg.fraction_keys:
        if key == "fraction" and isinstance(value, list):
            return None
        if not number:
            return "must be a number between 0.0 and 1.0"
        if key != "fraction" and not 0.0 <= value <= 1.0:
            return "must be between 0.0 and 1.0"
        if key == "fraction" and not (0.0 < value <= 1.0 or (isinstance(value, int) and value > 1)):
            return "must be a ratio in (0, 1] or a count above 1"
    if key in cfg.int_keys:
        if not number or (isinstance(value, float) and not value.is_integer()):
            return "must be a whole number"
        if key in cfg.int_min and value < cfg.int_min[key]:
            return f"must be at least {cfg.int_min[key]}"
    if key in cfg.bool_keys and not isinstance(value, bool):
        return "must be true or false"
    if key in cfg.str_keys and not isinstance(value, str):
        return "must be text"
    choices = cfg.choices.get(key)
    if choices and str(value).lower() not in {c.lower() for c in choices}:  # ultralytics ignores case
        return f"must be one of {', '.join(sorted(choices))}"
    return None
