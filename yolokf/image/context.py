"""What goes into the training image and what it is called, decided without Docker.

The build context is assembled here, not read from a folder: dockerfiles/Dockerfile, its setup script,
requirements.txt (yolokf's dependencies, with kfp and ultralytics pinned to the versions this machine
compiles with), optional weights, and yolokf's own package as a plain folder with its dist-info, which
becomes the image's last layer. The context is a deterministic tar, so its hash, together with the build
arguments, names the image: `yolokf:<version>-<hash12>`. Same inputs, same tag.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yolokf
from yolokf import __version__
from yolokf.core.errors import UsageError

# NVIDIA's PyTorch 26.09: PyTorch 2.14 (what yolokf is tested with), CUDA 13.4, amd64 + arm64. Keep in
# step with the ARG in dockerfiles/Dockerfile.
DEFAULT_BASE_IMAGE = "nvcr.io/nvidia/pytorch:26.09-py3"
DEFAULT_REPOSITORY = "yolokf"
# Distributions pinned in the image to this machine's versions, so the step runs the kfp that compiled it.
PINNED_FROM_HOST = ("kfp", "kfp-kubernetes", "ultralytics-opencv-headless")
# yolokf dependencies a pod never uses: the Docker SDK drives build-image on the laptop (no engine in a pod).
IMAGE_EXCLUDES = ("docker",)
SOURCE_DATE = 315532800  # 1980-01-01: fixed mtimes keep the context tar, and so the tag, reproducible
LABEL_PREFIX = "io.yolokf"
USERNAME_ENV = "YOLOKF_REGISTRY_USERNAME"
PASSWORD_ENV = "YOLOKF_REGISTRY_PASSWORD"

_REFERENCE = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]{1,2}[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class BuildSpec:
    """Everything that decides the image's content, and so its tag."""

    base_image: str = DEFAULT_BASE_IMAGE
    repository: str = DEFAULT_REPOSITORY
    tag: str | None = None  # None: <version>-<content hash>
    platform: str | None = None
    pip_index_url: str | None = None
    pip_extra_index_url: str | None = None
    weights: Path | None = None
    source: Path | None = None  # yolokf's source tree; None: the tree this yolokf runs from

    def __post_init__(self) -> None:
        if not self.base_image.strip():
            raise UsageError("--base-image is empty; give an image such as " + DEFAULT_BASE_IMAGE)
        if not _REFERENCE.match(self.repository):
            raise UsageError(
                f"--repository {self.repository!r} is not an image name; for example registry.example.com/ml/yolokf"
            )
        if self.tag is not None and not _TAG.match(self.tag):
            raise UsageError(f"--tag {self.tag!r} is not a Docker tag (letters, digits, '_', '.', '-'; 128 at most)")
        for option, url in (
            ("--pip-index-url", self.pip_index_url),
            ("--pip-extra-index-url", self.pip_extra_index_url),
        ):
            if url and urlsplit(url).password:
                raise UsageError(
                    f"{option} holds a password; build arguments are recorded in the image history. "
                    "Use a mirror that needs no credentials at build time."
                )
        if self.weights is not None and not Path(self.weights).is_file():
            raise UsageError(f"--weights {self.weights} is not a file; give a local .pt file such as yolov8n.pt")
        if self.platform is not None and not re.fullmatch(r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?", self.platform):
            raise UsageError(f"--platform {self.platform!r} is not a platform such as linux/amd64 or linux/arm64")

    def build_args(self) -> dict[str, str]:
        args = {"BASE_IMAGE": self.base_image}
        if self.pip_index_url:
            args["PIP_INDEX_URL"] = self.pip_index_url
        if self.pip_extra_index_url:
            args["PIP_EXTRA_INDEX_URL"] = self.pip_extra_index_url
        return args


@dataclass
class Context:
    """The build context as a tar, and the hashes that name the image."""

    tar: bytes
    files: list[str]
    content_hash: str  # everything that decides the image: context + build args + platform
    source_hash: str  # yolokf's code, Dockerfile and requirements: what compile/run match on
    requirements: list[str]


@dataclass
class Plan:
    """What `yolokf.image.engine.build_image` would do: shown by --dry-run, then carried out."""

    spec: BuildSpec
    context: Context
    reference: str  # repository:tag
    labels: dict[str, str]
    push: bool

    @property
    def tag(self) -> str:
        return self.reference.rsplit(":", 1)[1]


@dataclass
class Step:
    """One Dockerfile instruction as the engine ran it."""

    number: int
    total: int
    instruction: str
    cached: bool = False
    seconds: float = 0.0
    base: bool = False  # ARG before FROM, and FROM: they pick the base and are never "cached"


@dataclass
class BuildResult:
    plan: Plan
    image_id: str
    steps: list[Step]
    labels: dict[str, str]
    seconds: float
    digest_reference: str | None = None  # repo@sha256:... after a push


def source_tree(source: Path | None = None) -> tuple[Path, Path]:
    """(package dir, Dockerfile) of the yolokf source tree that goes into the image."""
    package = (Path(source) / "yolokf") if source else Path(yolokf.__file__).resolve().parent
    root = package.parent
    dockerfile = root / "dockerfiles" / "Dockerfile"
    if not (package / "__init__.py").is_file() or not dockerfile.is_file():
        raise UsageError(
            f"{package.parent} is not a yolokf source tree (no yolokf/__init__.py and dockerfiles/Dockerfile): "
            "build-image needs a checkout of yolokf installed with scripts/setup (pip install -e .)."
        )
    return package, dockerfile


def requirements(root: Path) -> list[str]:
    """What the step needs: yolokf's dependencies and `train` extra, less the laptop-only ones, with kfp
    and ultralytics pinned to the versions on this machine (the step then runs the kfp that compiled it)."""
    import importlib.metadata as md

    specs = _project_requirements(root / "pyproject.toml")
    if specs is None:  # an installed yolokf without its pyproject.toml
        specs = []
        with contextlib.suppress(md.PackageNotFoundError):
            for req in md.requires("yolokf") or []:
                spec, _, marker = req.partition(";")
                if not marker.strip() or re.search(r"extra\s*==\s*['\"]train['\"]", marker):
                    specs.append(spec.strip())
    out = []
    for spec in specs:
        name = _dist_name(spec)
        if name in IMAGE_EXCLUDES:
            continue
        if name in PINNED_FROM_HOST:
            with contextlib.suppress(md.PackageNotFoundError):
                spec = f"{name}=={md.version(name)}"
        out.append(spec)
    out += [name for name in PINNED_FROM_HOST if name not in {_dist_name(s) for s in out}]
    return out


def _project_requirements(pyproject: Path) -> list[str] | None:
    if not pyproject.is_file():
        return None
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            return None
    project = tomllib.loads(pyproject.read_text()).get("project", {})
    return [*project.get("dependencies", []), *project.get("optional-dependencies", {}).get("train", [])]


def _dist_name(spec: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=!~;@]", spec.strip(), maxsplit=1)[0]).lower()


def assemble_context(spec: BuildSpec) -> Context:
    """The deterministic build context: same files and arguments give the same bytes and hashes."""
    package, dockerfile = source_tree(spec.source)
    reqs = requirements(package.parent)
    entries: list[tuple[str, bytes, int]] = [
        ("Dockerfile", dockerfile.read_bytes(), 0o644),
        ("setup_image.py", (dockerfile.parent / "setup_image.py").read_bytes(), 0o644),
        ("requirements.txt", "".join(f"{r}\n" for r in reqs).encode(), 0o644),
    ]
    site: list[tuple[str, bytes, int]] = []
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(package.parent).as_posix()
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
            site.append((f"yolokf-site/{rel}", path.read_bytes(), 0o644))
    site += _dist_info(package.parent, [name.removeprefix("yolokf-site/") for name, _, _ in site])
    entries += site
    if spec.weights:
        weights = Path(spec.weights)
        entries.append((f"weights/{weights.name}", weights.read_bytes(), 0o644))
    else:
        entries.append(("weights/.keep", b"", 0o644))

    source_digest = hashlib.sha256()
    for name, data, _ in entries:
        if name in ("Dockerfile", "setup_image.py", "requirements.txt") or name.startswith("yolokf-site/"):
            source_digest.update(f"{name}\0{len(data)}\0".encode() + data)
    tar = deterministic_tar(entries)
    content = hashlib.sha256(tar)
    content.update(json.dumps({"args": spec.build_args(), "platform": spec.platform}, sort_keys=True).encode())
    return Context(tar, [e[0] for e in entries], content.hexdigest(), source_digest.hexdigest(), reqs)


def _dist_info(root: Path, files: list[str]) -> list[tuple[str, bytes, int]]:
    """A dist-info for the yolokf folder, so `importlib.metadata` and `pip list` see the installed yolokf."""
    info = f"yolokf-{__version__}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: yolokf\nVersion: {__version__}\n"
    readme = root / "README.md"
    if readme.is_file():
        metadata += "Description-Content-Type: text/markdown\n"
    files_out = {
        "METADATA": metadata,
        "INSTALLER": "yolokf build-image\n",
        "entry_points.txt": "[console_scripts]\nyolokf = yolokf.cli.app:main\n",
        "top_level.txt": "yolokf\n",
    }
    record = [f"{f},," for f in files] + [f"{info}/{name},," for name in [*files_out, "RECORD"]]
    files_out["RECORD"] = "\n".join(record) + "\n"
    return [(f"yolokf-site/{info}/{name}", text.encode(), 0o644) for name, text in files_out.items()]


def deterministic_tar(entries: list[tuple[str, bytes, int]]) -> bytes:
    """A tar of (name, data, mode) entries and their folders, sorted, owned by root, with fixed mtimes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for name, data, mode in sorted(entries):
            parts = name.split("/")
            for i in range(1, len(parts)):
                folder = "/".join(parts[:i])
                if folder not in dirs:
                    dirs.add(folder)
                    tar.addfile(_tarinfo(folder, tarfile.DIRTYPE, 0o755, 0))
            tar.addfile(_tarinfo(name, tarfile.REGTYPE, mode, len(data)), io.BytesIO(data))
    return buffer.getvalue()


def _tarinfo(name: str, kind: bytes, mode: int, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, SOURCE_DATE
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def plan_build(spec: BuildSpec, *, push: bool = False) -> Plan:
    """Assemble the context and decide the reference and labels, without touching Docker."""
    context = assemble_context(spec)
    if push and "/" not in spec.repository:
        raise UsageError(
            f"--push needs a --repository in a registry, e.g. registry.example.com/ml/{spec.repository}; "
            f"'{spec.repository}' alone would go to Docker Hub's library."
        )
    tag = spec.tag or f"{__version__}-{context.content_hash[:12]}"
    reference = f"{spec.repository}:{tag}"
    labels = static_labels(spec, context)
    return Plan(spec, context, reference, labels, push)


def static_labels(spec: BuildSpec, context: Context) -> dict[str, str]:
    """OCI labels known before the build; the versions inside are added after it
    (`yolokf.image.engine.version_labels`)."""
    root = source_tree(spec.source)[0].parent
    labels = {
        "org.opencontainers.image.title": "yolokf",
        "org.opencontainers.image.description": "Ultralytics YOLO training step for Kubeflow Pipelines",
        "org.opencontainers.image.version": __version__,
        "org.opencontainers.image.source": _git_source(root),
        "org.opencontainers.image.revision": _git_revision(root),
        "org.opencontainers.image.base.name": spec.base_image,
        f"{LABEL_PREFIX}.content-hash": context.content_hash,
        f"{LABEL_PREFIX}.source-hash": context.source_hash,
    }
    for req in context.requirements:
        name, sep, version = req.partition("==")
        if sep and name in ("kfp", "ultralytics-opencv-headless"):
            labels[f"{LABEL_PREFIX}.{_label_name(name)}.version"] = version
    return labels


def _label_name(dist: str) -> str:
    return {"ultralytics-opencv-headless": "ultralytics"}.get(dist, dist)


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def _git_revision(root: Path) -> str:
    revision = _git(root, "rev-parse", "HEAD")
    if not revision:
        return "unknown"
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no", "--", "yolokf", "dockerfiles", "pyproject.toml")
    return f"{revision}-dirty" if dirty else revision


def _git_source(root: Path) -> str:
    url = _git(root, "remote", "get-url", "origin")
    if not url:
        return "local source tree (no git remote)"
    parts = urlsplit(url)
    if parts.scheme and (parts.username or parts.password):  # never put a token into a label
        parts = parts._replace(netloc=(parts.hostname or "") + (f":{parts.port}" if parts.port else ""))
        url = urlunsplit(parts)
    return url


def registry_of(reference: str) -> str:
    """The registry host a reference pushes to; docker.io when it names none."""
    first = reference.split("/", 1)[0]
    return first if "/" in reference and ("." in first or ":" in first or first == "localhost") else "docker.io"


def describe(plan: Plan) -> tuple[list[str], dict[str, Any]]:
    """What `build-image --dry-run` prints: its titles ("Would build ...", "Would push ...") and fields."""
    spec = plan.spec
    titles = [f"Would build {plan.reference}"]
    if plan.push:
        auth = "from env" if credentials(registry_of(plan.reference)) else "from Docker config"
        titles.append(f"Would push {plan.reference} to {registry_of(plan.reference)} (credentials {auth})")
    fields: dict[str, Any] = {"base image": spec.base_image + (f" ({spec.platform})" if spec.platform else "")}
    fields["build args"] = {k: v for k, v in spec.build_args().items() if k != "BASE_IMAGE"}
    fields["requirements"] = list(plan.context.requirements)
    if spec.weights:
        fields["weights"] = f"{Path(spec.weights).name} -> /opt/yolokf/weights/"
    fields["context"] = f"{len(plan.context.files)} files, {len(plan.context.tar) / 1e6:.1f} MB"
    labels = dict(sorted(plan.labels.items()))
    labels[f"{LABEL_PREFIX}.{{torch,torchvision,python,...}}.version"] = "<read from the image after the build>"
    fields["labels"] = labels
    return titles, fields


def credentials(registry: str) -> dict[str, str] | None:
    """Credentials from YOLOKF_REGISTRY_USERNAME/PASSWORD; None lets the engine client use ~/.docker/config.json."""
    username, password = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
    if bool(username) != bool(password):
        raise UsageError(f"Set both {USERNAME_ENV} and {PASSWORD_ENV}, or neither (then `docker login {registry}`).")
    if username and password:
        return {"username": username, "password": password, "serveraddress": registry}
    return None
