"""What to train: ultralytics' train arguments, checked before anything runs.

Names follow ultralytics (`model`, `data`, `epochs`, `imgsz`, `batch`, ...). Anything else goes
through `--set KEY=VALUE` and is checked against ultralytics' own config rules.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from yolokf import ultralytics_cfg
from yolokf.errors import UsageError

# Keys with their own flag, and keys yolokf sets itself; --set refuses them with a pointer.
OWN_FLAGS = ("model", "data", "epochs", "imgsz", "batch", "device", "workers", "seed")
MANAGED = {
    "project": "yolokf writes the run folder into the step's outputs",
    "name": "yolokf writes the run folder into the step's outputs",
    "exist_ok": "yolokf writes the run folder into the step's outputs",
    "resume": "use --checkpoint-pvc/--checkpoint-dir; a retried step resumes by itself",
    "mode": "yolokf always trains",
    "cfg": "pass the arguments with --set instead",
}


@dataclass(frozen=True)
class TrainConfig:
    """The arguments of one `YOLO(model).train(...)` call."""

    model: str = "yolov8n.pt"
    data: str = "coco128.yaml"
    epochs: int = 100
    imgsz: int = 640
    batch: int = 16
    device: str = ""
    workers: int = 8
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("epochs", "imgsz", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"--{name} must be a whole number of at least 1, got {value!r}.")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise UsageError(f"--workers must be a whole number of at least 0, got {self.workers!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"--seed must be a whole number of at least 0, got {self.seed!r}.")
        if not self.model.strip():
            raise UsageError("--model is empty: give a weights file (yolov8n.pt) or a model YAML (yolov8n.yaml).")
        if not self.data.strip():
            raise UsageError("--data is empty: give a dataset YAML, a dataset folder, or 'shapes'.")
        object.__setattr__(self, "extra", check_train_args(self.extra))

    def train_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `YOLO.train`, without `data` (resolved inside the step)."""
        return {
            "epochs": self.epochs,
            "imgsz": self.imgsz,
            "batch": self.batch,
            "device": self.device or None,
            "workers": self.workers,
            "seed": self.seed,
            **self.extra,
        }

    def with_overrides(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)


def parse_set(items: list[str]) -> dict[str, Any]:
    """Turn repeated `--set KEY=VALUE` into a dict, values parsed as YAML like ultralytics' CLI does."""
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


def _type_problem(cfg: ultralytics_cfg.UltralyticsCfg, key: str, value: Any) -> str | None:
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
    return None
