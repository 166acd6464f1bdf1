"""The training image: built from this source tree and pushed through a Docker engine (Docker SDK).

The build context is assembled here, not read from a folder: dockerfiles/Dockerfile, its setup script,
requirements.txt (yolokf's dependencies, with kfp and ultralytics pinned to the versions this machine
compiles with), optional weights, and yolokf's own package as a plain folder with its dist-info, which
becomes the image's last layer. The context is a deterministic tar, so its hash, together with the build
arguments, names the image: `yolokf:<version>-<hash12>`. Same inputs, same tag.

After the build a metadata-only step adds OCI labels with the versions read from inside the image.
Every build and push is recorded in `<cache>/images.json`; `resolve_image` picks the image that
`compile` and `run` pin (see its docstring for the rule).
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
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import yolokf
from yolokf import __version__
from yolokf.errors import ImageBuildError, RegistryError, UsageError

if TYPE_CHECKING:
    import docker
    from rich.console import Console

# NVIDIA's PyTorch 26.09: PyTorch 2.14 (what yolokf is tested with), CUDA 13.4, amd64 + arm64. Keep in
# step with the ARG in dockerfiles/Dockerfile.
DEFAULT_BASE_IMAGE = "nvcr.io/nvidia/pytorch:26.09-py3"
DEFAULT_REPOSITORY = "yolokf"
# Distributions pinned in the image to this machine's versions, so the step runs the kfp that compiled it.
PINNED_FROM_HOST = ("kfp", "kfp-kubernetes", "ultralytics-opencv-headless")
# yolokf dependencies a pod never uses: the Docker SDK drives build-image on the laptop (no engine in a pod).
IMAGE_EXCLUDES = ("docker",)
USERNAME_ENV = "YOLOKF_REGISTRY_USERNAME"
PASSWORD_ENV = "YOLOKF_REGISTRY_PASSWORD"  # noqa: S105 - the variable's name, not a secret
SOURCE_DATE = 315532800  # 1980-01-01: fixed mtimes keep the context tar, and so the tag, reproducible
LABEL_PREFIX = "io.yolokf"
LOG_TAIL = 40


# ---- the Docker engine ---------------------------------------------------------------------------------


def docker_client() -> docker.DockerClient:
    """The one Docker client: DOCKER_HOST / DOCKER_TLS_VERIFY / DOCKER_CERT_PATH, ~/.docker/config.json auth."""
    import docker

    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except docker.errors.DockerException as exc:
        raise ImageBuildError(
            f"Cannot reach the Docker engine at {host} ({_first_line(exc)}). "
            "Start Docker, or set DOCKER_HOST to a running engine."
        ) from None
    return client


# ---- what goes into the image ----------------------------------------------------------------------------


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


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_REFERENCE = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]{1,2}[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


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
    """What `build_image` would do: shown by --dry-run, then carried out."""

    spec: BuildSpec
    context: Context
    reference: str  # repository:tag
    labels: dict[str, str]
    push: bool

    @property
    def tag(self) -> str:
        return self.reference.rsplit(":", 1)[1]


def source_tree(source: Path | None = None) -> tuple[Path, Path]:
    """(package dir, Dockerfile) of the yolokf source tree that goes into the image."""
    package = (Path(source) / "yolokf") if source else Path(yolokf.__file__).resolve().parent
    root = package.parent
    dockerfile = root / "dockerfiles" / "Dockerfile"
    if not (package / "__init__.py").is_file() or not dockerfile.is_file():
        where = f"--source {source}" if source else f"yolokf at {package}"
        raise UsageError(
            f"{where} is not a yolokf source tree (no yolokf/__init__.py and dockerfiles/Dockerfile). "
            "Run build-image from a checkout (pip install -e .) or pass --source DIR."
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
    tar = _tar(entries)
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
        "entry_points.txt": "[console_scripts]\nyolokf = yolokf.cli:main\n",
        "top_level.txt": "yolokf\n",
    }
    record = [f"{f},," for f in files] + [f"{info}/{name},," for name in [*files_out, "RECORD"]]
    files_out["RECORD"] = "\n".join(record) + "\n"
    return [(f"yolokf-site/{info}/{name}", text.encode(), 0o644) for name, text in files_out.items()]


def _tar(entries: list[tuple[str, bytes, int]]) -> bytes:
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
    """OCI labels known before the build; the versions inside are added after it (see `version_labels`)."""
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


# ---- progress --------------------------------------------------------------------------------------------


@dataclass
class Step:
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


class Reporter:
    """Readable progress on a rich console: one line per build step, push bars per layer, no raw JSON."""

    def __init__(self, console: Console | None) -> None:
        self.console = console
        self._status: Any = None

    def print(self, text: str, style: str | None = None) -> None:
        if self.console is not None:
            self.console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)

    def step_started(self, step: Step) -> None:
        self._stop_status()
        if self.console is not None and self.console.is_terminal:
            self._status = self.console.status(f"[{step.number}/{step.total}] {_short(step.instruction)}")
            self._status.start()

    def output(self, line: str) -> None:
        if self._status is not None:
            self._status.update(f"{self._status.status.split(chr(10))[0]}\n  {_short(line, 100)}")

    def step_done(self, step: Step) -> None:
        self._stop_status()
        how = "base" if step.base else "cached" if step.cached else f"{step.seconds:.1f} s"
        self.print(f"  [{step.number}/{step.total}] {_short(step.instruction)}  ({how})")

    def failed(self, step: Step | None, tail: Iterable[str]) -> None:
        self._stop_status()
        if step is not None:
            self.print(f"Step {step.number}/{step.total} failed: {step.instruction}", style="bold red")
        for line in tail:
            self.print(f"  | {line}", style="dim")

    @contextlib.contextmanager
    def layers(self, title: str) -> Iterator[Any]:
        """A progress bar per layer while pulling or pushing."""
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        if self.console is None:
            yield None
            return
        self.print(title)
        progress = Progress(
            TextColumn("  {task.description}"), BarColumn(), DownloadColumn(), console=self.console, transient=True
        )
        with progress:
            yield progress

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def _short(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# ---- build -----------------------------------------------------------------------------------------------


def build_image(plan: Plan, reporter: Reporter | None = None, client: Any = None) -> BuildResult:
    """Build `plan` on the engine, add version labels, tag it, record it; push when `plan.push`."""
    reporter = reporter or Reporter(None)
    client = client or docker_client()
    started = time.perf_counter()
    reporter.print(f"Building {plan.reference} on {plan.spec.base_image}")
    image_id, steps = _run_build(client, plan, reporter)
    labels = {**plan.labels, **_base_digest_label(client, plan.spec.base_image), **version_labels(client, image_id)}
    image_id = _label(client, image_id, labels, plan, reporter)
    result = BuildResult(plan, image_id, steps, labels, time.perf_counter() - started)
    reporter.print(f"Built {plan.reference} ({image_id[7:19]}) in {result.seconds:.0f} s")
    record(result)
    if plan.push:
        result.digest_reference = push_image(client, plan.reference, reporter)
        record(result)
    return result


def _run_build(client: Any, plan: Plan, reporter: Reporter) -> tuple[str, list[Step]]:
    import docker

    kwargs: dict[str, Any] = {
        "fileobj": io.BytesIO(plan.context.tar),
        "custom_context": True,
        "buildargs": plan.spec.build_args(),
        "rm": True,
        "forcerm": True,
        "decode": True,
        # Host networking: pip reaches the index the way this machine does (proxies, a local mirror).
        "network_mode": "host",
        "platform": plan.spec.platform,
    }
    try:
        stream = client.api.build(**kwargs)
        return _follow_build(stream, reporter)
    except docker.errors.APIError as exc:
        message = exc.explanation or str(exc)
        raise ImageBuildError(_pull_hint(plan.spec.base_image, message)) from None
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"The Docker engine failed during the build: {_first_line(exc)}") from None


def _follow_build(stream: Iterable[dict[str, Any]], reporter: Reporter) -> tuple[str, list[Step]]:
    steps: list[Step] = []
    tail: deque[str] = deque(maxlen=LOG_TAIL)
    current: Step | None = None
    seen_from = False
    step_started = time.perf_counter()
    image_id = ""
    partial = ""
    pulling: Any = None
    pull_ctx: Any = None
    tasks: dict[str, Any] = {}

    def finish() -> None:
        if current is not None and current not in steps:
            current.seconds = time.perf_counter() - step_started
            steps.append(current)
            reporter.step_done(current)

    try:
        for chunk in stream:
            if "error" in chunk:
                if partial:
                    tail.append(partial)
                reporter.failed(current, tail)
                detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                raise ImageBuildError(_step_failure(current, detail, tail))
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
            if "status" in chunk:  # the engine pulls the base image during FROM
                if pull_ctx is None:
                    pull_ctx = reporter.layers("Pulling the base image")
                    pulling = pull_ctx.__enter__()
                _layer_event(pulling, tasks, chunk)
                continue
            text = partial + chunk.get("stream", "")
            lines = text.split("\n")
            partial = lines.pop()
            for line in lines:
                line = _ANSI.sub("", line).rstrip("\r")
                match = re.match(r"^Step (\d+)/(\d+) : (.*)$", line)
                if match:
                    finish()
                    if pull_ctx is not None:
                        pull_ctx.__exit__(None, None, None)
                        pull_ctx = None
                    current = Step(int(match[1]), int(match[2]), match[3])
                    current.base = not seen_from and current.instruction.split()[0].upper() in ("ARG", "FROM")
                    seen_from = seen_from or current.instruction.split()[0].upper() == "FROM"
                    step_started = time.perf_counter()
                    tail.clear()
                    reporter.step_started(current)
                elif line.strip() == "---> Using cache" and current is not None:
                    current.cached = True
                elif line.startswith((" ---> ", "Removing intermediate container", "Successfully ")):
                    continue
                elif line.strip():
                    tail.append(line)
                    reporter.output(line)
        finish()
    finally:
        if pull_ctx is not None:
            pull_ctx.__exit__(None, None, None)
    if not image_id:
        raise ImageBuildError("The Docker engine finished the build without an image ID; rerun with a newer engine.")
    return image_id, steps


def _step_failure(step: Step | None, detail: str, tail: Iterable[str]) -> str:
    last = next((line.strip() for line in reversed(list(tail)) if line.strip()), "")
    why = f": {last}" if last else ""
    where = f"Step {step.number}/{step.total} `{_short(step.instruction, 120)}`" if step else "The build"
    return f"{where} failed ({_short(detail, 160)}){why}. The log tail is above; fix that and rerun build-image."


def _pull_hint(base: str, message: str) -> str:
    text = _first_line(Exception(message))
    if any(word in text.lower() for word in ("pull access denied", "unauthorized", "not found", "manifest unknown")):
        return (
            f"Cannot get the base image {base} ({text}). Check --base-image, and for nvcr.io log in with "
            "`docker login nvcr.io` (user $oauthtoken, an NGC API key as password)."
        )
    return f"The Docker engine refused the build: {text}"


def _layer_event(progress: Any, tasks: dict[str, Any], chunk: dict[str, Any]) -> None:
    if progress is None or "id" not in chunk:
        return
    layer, detail = chunk["id"], chunk.get("progressDetail") or {}
    if layer not in tasks:
        tasks[layer] = progress.add_task(layer[:12], total=None)
    status = chunk.get("status", "")
    if "total" in detail and "current" in detail:
        progress.update(
            tasks[layer], total=detail["total"], completed=detail["current"], description=f"{layer[:12]} {status}"
        )
    else:
        progress.update(tasks[layer], description=f"{layer[:12]} {status}")


def _base_digest_label(client: Any, base: str) -> dict[str, str]:
    """org.opencontainers.image.base.digest, when the engine knows the base's registry digest."""
    with contextlib.suppress(Exception):
        for repo_digest in client.images.get(base).attrs.get("RepoDigests") or []:
            return {"org.opencontainers.image.base.digest": repo_digest.split("@", 1)[1]}
    return {}


def version_labels(client: Any, image_id: str) -> dict[str, str]:
    """Versions of what the image really holds, read by running it (the base decides torch's)."""
    probe = (
        "import importlib.metadata as m, json, sys\n"
        "names = {'torch': 'torch', 'torchvision': 'torchvision', 'ultralytics': 'ultralytics-opencv-headless',"
        " 'kfp': 'kfp', 'kfp-kubernetes': 'kfp-kubernetes', 'opencv': 'opencv-python-headless', 'yolokf': 'yolokf'}\n"
        "out = {}\n"
        "for key, dist in names.items():\n"
        "    try: out[key] = m.version(dist)\n"
        "    except m.PackageNotFoundError: pass\n"
        "out['python'] = '.'.join(map(str, sys.version_info[:3]))\n"
        "print(json.dumps(out))\n"
    )
    try:
        raw = client.containers.run(
            image_id, ["python3", "-c", probe], entrypoint=[], remove=True, network_mode="none", stderr=False
        )
    except Exception as exc:  # docker.errors.ContainerError and friends
        raise ImageBuildError(f"The built image does not start python3: {_first_line(exc)}") from None
    versions = json.loads(raw.decode().strip().splitlines()[-1])
    return {f"{LABEL_PREFIX}.{name}.version": version for name, version in sorted(versions.items())}


def _label(client: Any, image_id: str, labels: dict[str, str], plan: Plan, reporter: Reporter) -> str:
    """A metadata-only step on top of the build: labels and the tag, no new filesystem layer."""
    pairs = " \\\n      ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in sorted(labels.items()))
    lines = [f"FROM {image_id}", f"LABEL {pairs}"]
    tar = _tar([("Dockerfile", ("\n".join(lines) + "\n").encode(), 0o644)])
    stream = client.api.build(
        fileobj=io.BytesIO(tar), custom_context=True, tag=plan.reference, rm=True, forcerm=True, decode=True
    )
    quiet = Reporter(None)
    label_id, _ = _follow_build(stream, quiet)
    reporter.print(f"  labels: {len(labels)} (versions read from the image)")
    return label_id


# ---- push ------------------------------------------------------------------------------------------------


def registry_of(reference: str) -> str:
    first = reference.split("/", 1)[0]
    return first if "/" in reference and ("." in first or ":" in first or first == "localhost") else "docker.io"


def credentials(registry: str) -> dict[str, str] | None:
    """Credentials from YOLOKF_REGISTRY_USERNAME/PASSWORD; None lets the engine client use ~/.docker/config.json."""
    username, password = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
    if bool(username) != bool(password):
        raise UsageError(f"Set both {USERNAME_ENV} and {PASSWORD_ENV}, or neither (then `docker login {registry}`).")
    if username and password:
        return {"username": username, "password": password, "serveraddress": registry}
    return None


def push_image(client: Any, reference: str, reporter: Reporter | None = None) -> str:
    """Push `reference`; return `repository@sha256:...` as the registry reported it."""
    import docker

    reporter = reporter or Reporter(None)
    repository, tag = reference.rsplit(":", 1)
    registry = registry_of(reference)
    auth = credentials(registry)
    digest = ""
    tasks: dict[str, Any] = {}
    pushed = existed = 0
    try:
        with reporter.layers(f"Pushing {reference}") as progress:
            for chunk in client.api.push(repository, tag=tag, stream=True, decode=True, auth_config=auth):
                if "error" in chunk:
                    message = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                    raise _registry_error(registry, message)
                if "aux" in chunk and "Digest" in chunk["aux"]:
                    digest = chunk["aux"]["Digest"]
                status = chunk.get("status", "")
                pushed += status == "Pushed"
                existed += status in ("Layer already exists",) or status.startswith("Mounted from")
                _layer_event(progress, tasks, chunk)
    except docker.errors.APIError as exc:
        raise _registry_error(registry, exc.explanation or str(exc)) from None
    except docker.errors.DockerException as exc:
        raise _registry_error(registry, str(exc)) from None
    if not digest:
        raise RegistryError(f"The push to {registry} ended without a digest; check the registry's logs and rerun.")
    reporter.print(f"Pushed {pushed} layers ({existed} already in the registry)")
    return f"{repository}@{digest}"


def _registry_error(registry: str, message: str) -> RegistryError:
    text = _short(_first_line(Exception(message)), 200)
    low = text.lower()
    if any(word in low for word in ("unauthorized", "authentication required", "denied", "no basic auth")):
        return RegistryError(
            f"Registry {registry} refused the push ({text}). Log in with `docker login {registry}`, or set "
            f"{USERNAME_ENV} and {PASSWORD_ENV}."
        )
    if "http response to https client" in low:
        return RegistryError(
            f"Registry {registry} speaks plain HTTP ({text}). Serve it with TLS, or add it to the engine's "
            "insecure-registries."
        )
    if any(word in low for word in ("connection refused", "no such host", "timeout", "i/o timeout", "dial tcp", "eof")):
        return RegistryError(
            f"Cannot reach registry {registry} ({text}). Check --repository and that the registry is up."
        )
    return RegistryError(f"Push to {registry} failed: {text}")


# ---- which image compile and run use -------------------------------------------------------------------


def _record_file() -> Path:
    base = os.environ.get("YOLOKF_CACHE_DIR") or str(Path.home() / ".cache" / "yolokf")
    return Path(base) / "images.json"


def load_records() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(_record_file().read_text())
    except (OSError, ValueError):
        return {}
    return data.get("images", {}) if isinstance(data, dict) else {}


def record(result: BuildResult) -> None:
    """Remember the build (and push) under its content hash; best effort, never fails a build."""
    path = _record_file()
    images = load_records()
    entry = images.get(result.plan.context.content_hash, {})
    entry.update(
        {
            "reference": result.plan.reference,
            "image_id": result.image_id,
            "source_hash": result.plan.context.source_hash,
            "base_image": result.plan.spec.base_image,
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )
    if result.digest_reference:
        entry["digest_reference"] = result.digest_reference
        entry["pushed_at"] = entry["built_at"]
    images[result.plan.context.content_hash] = entry
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"images": images}, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)


@dataclass
class ImageChoice:
    reference: str
    reason: str
    records: list[dict[str, Any]] = field(default_factory=list)


def choose_image(explicit: str | None = None) -> ImageChoice:
    """The step image and why: see `resolve_image`."""
    if explicit is not None:
        if not explicit.strip():
            raise UsageError("--image is empty; give a tag or digest such as registry.example.com/ml/yolokf@sha256:...")
        return ImageChoice(explicit.strip(), "--image")
    try:
        context = assemble_context(BuildSpec())
    except UsageError:
        return ImageChoice(f"{DEFAULT_REPOSITORY}:{__version__}", "no yolokf source tree to match builds against")
    matches = [r for r in load_records().values() if r.get("source_hash") == context.source_hash]
    pushed = sorted((r for r in matches if r.get("digest_reference")), key=lambda r: r.get("pushed_at", ""))
    if pushed:
        return ImageChoice(pushed[-1]["digest_reference"], "pushed by build-image from this tree", matches)
    built = sorted(matches, key=lambda r: r.get("built_at", ""))
    if built:
        return ImageChoice(built[-1]["reference"], "built by build-image from this tree, not pushed", matches)
    return ImageChoice(
        f"{DEFAULT_REPOSITORY}:{__version__}-{context.content_hash[:12]}",
        "not built yet: the tag `yolokf build-image` gives this tree with default options",
    )


def resolve_image(explicit: str | None) -> str:
    """The image `compile` and `run` pin.

    1. `--image` (tag or digest) when given;
    2. else the image `yolokf build-image` made from this source tree (same yolokf code, Dockerfile and
       requirements): the newest pushed one by digest (`repo@sha256:...`), else the newest local tag;
    3. else the tag that `yolokf build-image` with default options would give this tree
       (`yolokf:<version>-<hash12>`), never a floating `latest`.
    """
    return choose_image(explicit).reference


# ---- dry run ---------------------------------------------------------------------------------------------


def describe(plan: Plan) -> list[str]:
    """The lines `build-image --dry-run` prints."""
    spec = plan.spec
    lines = [f"Would build {plan.reference}"]
    lines.append(f"  base image: {spec.base_image}" + (f" ({spec.platform})" if spec.platform else ""))
    for name, value in spec.build_args().items():
        if name != "BASE_IMAGE":
            lines.append(f"  build arg {name}={value}")
    lines.append(f"  requirements: {', '.join(plan.context.requirements)}")
    if spec.weights:
        lines.append(f"  weights: {Path(spec.weights).name} -> /opt/yolokf/weights/")
    lines.append(f"  context: {len(plan.context.files)} files, {len(plan.context.tar) / 1e6:.1f} MB")
    if plan.push:
        auth = "from env" if credentials(registry_of(plan.reference)) else "from Docker config"
        lines.append(f"Would push {plan.reference} to {registry_of(plan.reference)} (credentials {auth})")
    lines.append("Labels:")
    lines += [f"  {k}={v}" for k, v in sorted(plan.labels.items())]
    lines.append(f"  {LABEL_PREFIX}.{{torch,torchvision,python,...}}.version=<read from the image after the build>")
    return lines
