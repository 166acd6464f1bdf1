"""Runs inside `docker build` (dockerfiles/Dockerfile) with the base image's own python3: stdlib only until pip ran.

`python3 setup_image.py install`:
1. pins what the base holds and must keep (torch, torchvision, triton, CUDA wheels) by *distribution*
   version (importlib.metadata), added to the base's own pip constraints (NGC images set PIP_CONSTRAINT).
   Not `torch.__version__`: its `+cu130` label is served by no index and sends pip backtracking through
   every ultralytics release;
2. pip-installs requirements.txt (kfp, ultralytics-opencv-headless, yolokf's dependencies);
3. checks that the pinned distributions did not move and that only one OpenCV is installed;
4. configures ultralytics for offline pods: fonts, settings (weights_dir, no sync), matplotlib's font cache,
   and puts /opt/yolokf/site (yolokf itself, the image's last layer) on sys.path.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

HOME = Path("/opt/yolokf")
CONFIG_DIR = Path(os.environ.get("YOLO_CONFIG_DIR", HOME / "config"))
ULTRALYTICS_DIR = CONFIG_DIR / "Ultralytics"  # ultralytics appends this to YOLO_CONFIG_DIR
MPL_DIR = Path(os.environ.get("MPLCONFIGDIR", CONFIG_DIR / "matplotlib"))
WEIGHTS_DIR = HOME / "weights"
SITE_DIR = HOME / "site"
PINS = HOME / "base-pins.txt"
NGC_CONSTRAINTS = "/etc/pip/constraint.txt"
# What the base image owns: never reinstalled or upgraded by the layers above it.
KEEP = re.compile(r"^(torch|torchvision|torchaudio|triton|pytorch-triton|nvidia-.*|cuda-.*)$")
OPENCV = re.compile(r"^opencv-(python|contrib-python)(-headless)?$")
WORLD_WRITABLE_DIR = 0o1777  # like /tmp: pods may run as any uid


def log(message: str) -> None:
    print(f"yolokf: {message}", flush=True)


def fail(message: str) -> None:
    print(f"yolokf: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical(name), dist.version)
    return found


def base_pins() -> dict[str, str]:
    pins = {name: version for name, version in installed().items() if KEEP.match(name)}
    if "torch" not in pins:
        fail(
            "the base image has no torch distribution; yolokf keeps the base's PyTorch build. "
            "Build on a PyTorch image such as nvcr.io/nvidia/pytorch:26.09-py3 (--base-image)."
        )
    return pins


def pip_env(pins_file: Path) -> dict[str, str]:
    env = dict(os.environ)
    # Keep the base's constraints (NGC: PIP_CONSTRAINT=/etc/pip/constraint.txt) and add ours; pip splits the
    # variable on whitespace. The NGC file counts even where the variable was unset.
    constraints = [c for c in env.get("PIP_CONSTRAINT", "").split() if Path(c).is_file()]
    if Path(NGC_CONSTRAINTS).is_file() and NGC_CONSTRAINTS not in constraints:
        constraints.append(NGC_CONSTRAINTS)
    if constraints:
        log(f"keeping the base image's pip constraints: {' '.join(constraints)}")
    env["PIP_CONSTRAINT"] = " ".join([*constraints, str(pins_file)])
    env["PIP_BREAK_SYSTEM_PACKAGES"] = "1"  # PEP 668 bases (Debian, Ubuntu 24.04): this image is the env
    env["PIP_ROOT_USER_ACTION"] = "ignore"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_CACHE_DIR"] = "1"
    return env


def install() -> None:
    pins = base_pins()
    HOME.mkdir(parents=True, exist_ok=True)
    PINS.write_text("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
    log("keeping the base's " + ", ".join(f"{n} {v}" for n, v in sorted(pins.items()) if not n.startswith("nvidia")))
    command = [sys.executable, "-m", "pip", "install", "--progress-bar", "off", "-r", str(HOME / "requirements.txt")]
    result = subprocess.run(command, env=pip_env(PINS))
    if result.returncode:
        fail(
            f"pip install failed (exit {result.returncode}); see pip's message above. A conflict with the "
            "base's pins means a requirement needs another torch than the base image holds."
        )
    check(pins)
    configure()


def check(pins: dict[str, str]) -> None:
    now = installed()
    moved = {name: (version, now.get(name)) for name, version in pins.items() if now.get(name) != version}
    if moved:
        fail("pip changed the base's " + ", ".join(f"{n} {a} -> {b}" for n, (a, b) in moved.items()))
    opencvs = sorted(name for name in now if OPENCV.match(name))
    if len(opencvs) > 1:
        fail(f"more than one OpenCV is installed ({', '.join(opencvs)}); keep only opencv-python-headless")
    probe = "import cv2, kfp, ultralytics, torch; print('cv2', cv2.__version__, 'ultralytics', ultralytics.__version__)"
    subprocess.run([sys.executable, "-c", probe], check=True)


def configure() -> None:
    import matplotlib

    for folder in (CONFIG_DIR, ULTRALYTICS_DIR, MPL_DIR):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(WORLD_WRITABLE_DIR)
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)

    # ultralytics' check_font looks in its config dir first, then downloads Arial*.ttf: give it
    # matplotlib's DejaVu Sans (which also covers non-Latin labels) under both names.
    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        shutil.copyfile(dejavu, ULTRALYTICS_DIR / name)
        (ULTRALYTICS_DIR / name).chmod(0o644)

    settings = (
        "from ultralytics.utils import SETTINGS; "
        f"SETTINGS.update(weights_dir={str(WEIGHTS_DIR)!r}, datasets_dir='/tmp/yolokf/datasets', "
        "runs_dir='runs', sync=False, mlflow=False)"  # yolokf logs to MLflow itself (--mlflow): no import
    )
    subprocess.run([sys.executable, "-c", settings], check=True, stdout=subprocess.DEVNULL)
    for path in ULTRALYTICS_DIR.glob("*.json"):
        path.chmod(0o666)
    subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], check=True)  # font cache
    for path in MPL_DIR.rglob("*"):
        path.chmod(0o666 if path.is_file() else WORLD_WRITABLE_DIR)

    # yolokf itself arrives in the last layer as a plain folder (package + dist-info): a .pth file in the
    # site-packages that holds ultralytics puts it on sys.path, so that layer needs no RUN.
    SITE_DIR.mkdir(parents=True, exist_ok=True)
    site_packages = Path(md.distribution("ultralytics-opencv-headless").locate_file(""))
    (site_packages / "yolokf-site.pth").write_text(f"{SITE_DIR}\n")
    script = Path("/usr/local/bin/yolokf")
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -m yolokf "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    log(f"ultralytics config in {ULTRALYTICS_DIR}, yolokf on sys.path from {site_packages}/yolokf-site.pth")


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        fail("usage: python3 setup_image.py install")
    install()
