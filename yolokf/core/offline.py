"""Fail fast instead of hanging on downloads that cannot happen (air-gapped clusters, this laptop on a plane).

ultralytics downloads weights, datasets and fonts on demand. yolokf checks first, and says what to do
when the source cannot be reached.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import zipfile
from functools import cache
from pathlib import Path

from yolokf.core import ultralytics_cfg
from yolokf.core.errors import OfflineError, UsageError

WEIGHTS_SUFFIXES = (".pt", ".pth", ".onnx", ".engine", ".torchscript")
FONTS = ("Arial.ttf", "Arial.Unicode.ttf")


def _env_true(name: str) -> bool:
    return os.getenv(name, "").strip().lower() in {"1", "true", "yes", "on"}


# Where ultralytics downloads weights, fonts and datasets from (its GitHub releases). YOLOKF_ONLINE_PROBE=HOST:PORT
# points the check elsewhere, such as a proxy that a cluster's pods must use.
PROBE_ENV = "YOLOKF_ONLINE_PROBE"
DEFAULT_PROBE = "github.com:443"


def is_online(timeout: float = 3.0) -> bool:
    """Whether the ultralytics asset host answers; False at once under YOLO_OFFLINE/YOLOKF_OFFLINE."""
    if _env_true("YOLO_OFFLINE") or _env_true("YOLOKF_OFFLINE"):
        return False
    host, _, port = (os.getenv(PROBE_ENV) or DEFAULT_PROBE).rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"{PROBE_ENV} must be HOST:PORT, such as {DEFAULT_PROBE}.")
    return _answers(host, int(port), timeout)


@cache
def _answers(host: str, port: int, timeout: float) -> bool:
    """One TCP connect per host and process: a step asks several times, and a dead network costs `timeout` each."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def ultralytics_settings() -> dict:
    """ultralytics' settings.json (weights_dir, datasets_dir), read without importing ultralytics."""
    # ultralytics.utils.get_user_config_dir: $YOLO_CONFIG_DIR/Ultralytics, else $XDG_CONFIG_HOME/Ultralytics
    base = os.getenv("YOLO_CONFIG_DIR") or os.getenv("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    try:
        return json.loads((Path(base) / "Ultralytics" / "settings.json").read_text())
    except (OSError, ValueError):
        return {}


def check_model(model: str) -> None:
    """Raise unless `model` is on disk, is one of ultralytics' model YAMLs, or can be downloaded."""
    path = Path(model).expanduser()
    if path.is_file():
        if path.suffix == ".pt" and not zipfile.is_zipfile(path):  # torch.save writes a zip archive since 1.6
            raise UsageError(
                f"--model {model} is not a PyTorch weights file; give ultralytics weights (best.pt, yolov8n.pt) "
                "or a model YAML (yolov8n.yaml)."
            )
        return
    if model.endswith((".yaml", ".yml")):
        if builtin_model_yaml(model) or path.is_file():
            return
        raise UsageError(
            f"Model config not found: {model}. Give a path to a model YAML or an ultralytics name such as yolov8n.yaml."
        )
    if not model.endswith(WEIGHTS_SUFFIXES):
        return  # a hub or triton URL: ultralytics decides
    weights_dir = ultralytics_settings().get("weights_dir")
    if weights_dir and (Path(weights_dir) / path.name).is_file():
        return
    if "/" in model or os.sep in model:
        raise UsageError(
            f"Model weights not found: {model}. Check the path, or train from a YAML such as yolov8n.yaml."
        )
    if not is_online():
        stem = path.stem
        raise OfflineError(
            f"Weights {model} are not on disk and cannot be downloaded (no internet). "
            f"Train from scratch with --model {stem}.yaml, pass a local .pt file, "
            "or bake the weights into the image with `yolokf build-image --weights FILE`."
        )


def builtin_model_yaml(name: str) -> Path | None:
    """ultralytics' own model YAML for `name` (yolov8n.yaml -> cfg/models/v8/yolov8.yaml), if any."""
    package = ultralytics_cfg.installed_package_dir()
    if package is None:
        return None
    base = Path(name).name
    unscaled = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", Path(base).stem) + Path(base).suffix
    for candidate in (base, unscaled):
        hits = sorted((package / "cfg" / "models").rglob(candidate))
        if hits:
            return hits[0]
    return None


def place_fonts(config_dir: Path) -> None:
    """Give ultralytics its plotting fonts without a download, from matplotlib's bundled DejaVu Sans.

    ultralytics fetches Arial.ttf at plot time (`checks.check_font`); offline that stalls or fails, so
    the plots in the report would be missing. DejaVu Sans covers the same glyphs for labels.
    """
    missing = [name for name in FONTS if not (config_dir / name).exists()]
    if not missing:
        return
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not source.exists():
        return
    config_dir.mkdir(parents=True, exist_ok=True)
    for name in missing:
        shutil.copyfile(source, config_dir / name)


def prepare_environment() -> None:
    """Settings an offline pod needs before ultralytics is imported."""
    if not is_online():
        os.environ.setdefault("YOLO_OFFLINE", "true")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")  # never pip-install inside a step
