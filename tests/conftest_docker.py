"""A real Docker engine, a real registry and a stand-in base image for the image tests.

Registered as a pytest plugin from tests/conftest.py (`pytest_plugins`). Nothing here is mocked:

- `docker_engine` starts Debian's `dockerd` on a unix socket under /tmp, with its data root in a FIXED
  place (`YOLOKF_TEST_DOCKER_ROOT`, default /var/cache/yolokf-test-docker) so the stand-in base image,
  which takes minutes to build, is built once and then reused across test runs and CI runs. A lock
  file keeps two test sessions from sharing one data root. Set `YOLOKF_TEST_DOCKER_HOST` to use an
  engine that is already running instead.
- `registry` starts Debian's `docker-registry` on loopback port 5055 (or a free one) with htpasswd (bcrypt)
  auth, its storage next to the engine's data root, so pushes after the first skip the base's layers.
- `stand_in_base` is a Debian bookworm minbase (debootstrap + `docker import`) with python3, pip, the
  host's CA bundle (TLS is intercepted here) and torch/torchvision from PyPI: what NVIDIA's PyTorch
  image is to a real cluster, including an NGC-style `PIP_CONSTRAINT` file. Both images' tags end in a
  hash of their recipe, so editing the recipe builds them again instead of reusing a stale cached one.

Without the tools these tests skip, naming what is missing; with CI set they fail instead.

Every process is stopped by its pid. `python tests/conftest_docker.py warm` builds the cached images
ahead of a test run (CI does this in .ci/run so the test timings stay readable).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from yolokf.training.launch import free_port

DATA_ROOT = Path(os.environ.get("YOLOKF_TEST_DOCKER_ROOT", "/var/cache/yolokf-test-docker"))
REGISTRY_ROOT = Path(os.environ.get("YOLOKF_TEST_REGISTRY_ROOT", str(DATA_ROOT) + "-registry"))
REGISTRY_PORT = int(os.environ.get("YOLOKF_TEST_REGISTRY_PORT", "5055"))  # a busy port falls back to a free one
HOST_CA_BUNDLE = Path(os.environ.get("YOLOKF_TEST_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
DEBIAN_MIRROR = os.environ.get("YOLOKF_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# The stand-in base holds the same torch as the host's CPU test environment.
TORCH_VERSION = "2.14.1"
TORCHVISION_VERSION = "0.29.1"
DEBOOTSTRAP_ARGS = ("--variant=minbase", "bookworm")  # the minbase's recipe (the mirror does not change it)


def recipe_hash(recipe: str) -> str:
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


MINBASE_IMAGE = f"yolokf-test/bookworm-minbase:{recipe_hash(' '.join(DEBOOTSTRAP_ARGS))}"

# What `docker build` sees for the stand-in: python3 + pip + torch, NGC-like pip constraints.
BASE_DOCKERFILE = f"""\
FROM {MINBASE_IMAGE}
COPY host-ca.crt /usr/local/share/yolokf-test/host-ca.crt
ENV PIP_CERT=/usr/local/share/yolokf-test/host-ca.crt \\
    SSL_CERT_FILE=/usr/local/share/yolokf-test/host-ca.crt \\
    REQUESTS_CA_BUNDLE=/usr/local/share/yolokf-test/host-ca.crt \\
    PIP_DISABLE_PIP_VERSION_CHECK=1 \\
    PIP_DEFAULT_TIMEOUT=180
RUN apt-get update -qq \\
 && apt-get install -y -qq --no-install-recommends python3 python3-pip >/dev/null \\
 && rm -rf /var/lib/apt/lists/*
RUN pip install --break-system-packages --no-cache-dir --progress-bar off \\
      torch=={TORCH_VERSION} torchvision=={TORCHVISION_VERSION}
# Like NVIDIA's PyTorch images: everything the base holds is pinned for later pip installs.
RUN mkdir -p /etc/pip && pip freeze --all --exclude pip --exclude setuptools --exclude wheel \\
      > /etc/pip/constraint.txt
ENV PIP_CONSTRAINT=/etc/pip/constraint.txt
"""
# The recipe's hash is in the tag (MINBASE_IMAGE, and so the minbase's, is in the text too). The host's CA
# bundle is not: it only lets pip through this machine's TLS interception and does not change what is built.
BASE_IMAGE = f"yolokf-test/base:bookworm-torch{TORCH_VERSION}-{recipe_hash(BASE_DOCKERFILE)}"


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Stop a process this module started, by its pid: SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def missing_tools() -> list[str]:
    """What the host lacks for the docker tests; CI installs it with scripts/ci-docker-deps.sh."""
    missing = [tool for tool in ("dockerd", "docker-registry", "debootstrap") if not shutil.which(tool)]
    if os.geteuid() != 0:
        missing.append("root (dockerd and debootstrap need it)")
    return missing


@dataclass
class Engine:
    host: str  # DOCKER_HOST value
    pid: int | None  # None when the engine was given from outside

    def client(self):  # type: ignore[no-untyped-def]
        import docker

        return docker.DockerClient(base_url=self.host, timeout=600)


@contextlib.contextmanager
def running_engine(data_root: Path = DATA_ROOT) -> Iterator[Engine]:
    """Start dockerd on a private socket with the fixed data root; stop it by pid afterwards."""
    if given := os.environ.get("YOLOKF_TEST_DOCKER_HOST"):
        yield Engine(given, None)
        return
    data_root.mkdir(parents=True, exist_ok=True)
    lock = open(data_root.with_name(data_root.name + ".lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise RuntimeError(
            f"another test session's dockerd uses {data_root}; wait for it, or set "
            "YOLOKF_TEST_DOCKER_HOST to share a running engine, or YOLOKF_TEST_DOCKER_ROOT to use another root"
        ) from None
    # exec-root and socket under a short path: containerd's socket paths are length-limited.
    run_dir = Path(tempfile.mkdtemp(prefix="ykd-", dir="/tmp"))
    sock = run_dir / "docker.sock"
    log = open(run_dir / "dockerd.log", "wb")
    proc = subprocess.Popen(
        [
            "dockerd",
            "--host", f"unix://{sock}",
            "--data-root", str(data_root),
            "--exec-root", str(run_dir / "exec"),
            "--pidfile", str(run_dir / "dockerd.pid"),
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--storage-driver=overlay2",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    engine = Engine(f"unix://{sock}", proc.pid)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {proc.returncode}: {_tail(run_dir / 'dockerd.log')}")
            if sock.exists():
                with contextlib.suppress(Exception):
                    engine.client().ping()
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not answer within 60 s: {_tail(run_dir / 'dockerd.log')}")
            time.sleep(0.2)
        yield engine
        with contextlib.suppress(Exception):
            tidy(engine.client())
    finally:
        _stop(proc)
        log.close()
        _unmount_under(run_dir)  # dockerd leaves its default netns bind-mounted in the exec root
        shutil.rmtree(run_dir, ignore_errors=True)
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def tidy(client, keep_days: float = 3) -> None:  # type: ignore[no-untyped-def]
    """Keep the fixed data root from growing: drop stopped containers, test images not built in the last
    `keep_days` (recent ones hold the layer cache the next run reuses) and dangling images."""
    from datetime import datetime, timedelta, timezone

    client.containers.prune()
    cutoff = datetime.now(timezone.utc) - timedelta(days=keep_days)
    for image in client.images.list():
        if {MINBASE_IMAGE, BASE_IMAGE} & set(image.tags):
            continue
        created = datetime.fromisoformat(image.attrs["Created"][:19]).replace(tzinfo=timezone.utc)
        if created < cutoff:
            for tag in image.tags:
                with contextlib.suppress(Exception):
                    client.images.remove(tag)
    client.images.prune(filters={"dangling": True})


def _unmount_under(folder: Path) -> None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            target = line.split()[1]
            if target.startswith(f"{folder}/"):
                subprocess.run(["umount", "-l", target], check=False, capture_output=True)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Registry:
    address: str  # host:port
    username: str
    password: str
    pid: int

    def manifest_digest(self, name: str, reference: str) -> str:
        """The digest the registry itself reports for name:reference (Docker-Content-Digest)."""
        with urllib.request.urlopen(self._manifest_request(name, reference, "HEAD"), timeout=10) as response:
            return str(response.headers["Docker-Content-Digest"])

    def manifest(self, name: str, reference: str) -> dict:  # type: ignore[type-arg]
        """The image manifest the registry holds for name:reference (its `layers` are what a push sends)."""
        with urllib.request.urlopen(self._manifest_request(name, reference, "GET"), timeout=10) as response:
            return dict(json.load(response))

    def _manifest_request(self, name: str, reference: str, method: str) -> urllib.request.Request:
        import base64

        return urllib.request.Request(
            f"http://{self.address}/v2/{name}/manifests/{reference}",
            method=method,
            headers={
                "Accept": ", ".join(
                    [
                        "application/vnd.docker.distribution.manifest.v2+json",
                        "application/vnd.docker.distribution.manifest.list.v2+json",
                        "application/vnd.oci.image.manifest.v1+json",
                        "application/vnd.oci.image.index.v1+json",
                    ]
                ),
                "Authorization": "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode(),
            },
        )


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def running_registry(workdir: Path, storage: Path = REGISTRY_ROOT) -> Iterator[Registry]:
    """Debian's docker-registry on a loopback port, with htpasswd (bcrypt) auth.

    Its storage and port stay the same across runs (like the engine's data root): the engine then finds
    the stand-in base's 4 GB of torch layers already in the registry and pushes only yolokf's layers.
    """
    import bcrypt

    username, password = "yolokf-ci", "pw-" + secrets.token_hex(12)
    workdir.mkdir(parents=True, exist_ok=True)
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text(f"{username}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}\n")
    port = REGISTRY_PORT if _port_is_free(REGISTRY_PORT) else free_port()
    config = workdir / "config.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "version": 0.1,
                "log": {"level": "warn"},
                "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
                "http": {"addr": f"127.0.0.1:{port}"},
                "auth": {"htpasswd": {"realm": "yolokf-test", "path": str(htpasswd)}},
            }
        )
    )
    log = open(workdir / "registry.log", "wb")
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {_tail(workdir / 'registry.log')}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2)
                break
            except urllib.error.HTTPError as err:  # 401 means it is up and asks for credentials
                if err.code == 401:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not answer: {_tail(workdir / 'registry.log')}")
            time.sleep(0.2)
        yield Registry(f"127.0.0.1:{port}", username, password, proc.pid)
    finally:
        _stop(proc)
        log.close()


def _image_exists(client, name: str) -> bool:  # type: ignore[no-untyped-def]
    import docker

    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def ensure_minbase(client, log=print) -> str:  # type: ignore[no-untyped-def]
    """Debian bookworm minbase, made by debootstrap and `docker import` (nothing comes from Docker Hub)."""
    if _image_exists(client, MINBASE_IMAGE):
        return MINBASE_IMAGE
    with tempfile.TemporaryDirectory(prefix="yolokf-debootstrap-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"debootstrap {' '.join(DEBOOTSTRAP_ARGS)} ({DEBIAN_MIRROR}) ...")
        subprocess.run(
            ["debootstrap", *DEBOOTSTRAP_ARGS, str(rootfs), DEBIAN_MIRROR],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
        repo, tag = MINBASE_IMAGE.rsplit(":", 1)
        log(f"docker import -> {MINBASE_IMAGE}")
        client.api.import_image(src=str(tarball), repository=repo, tag=tag)
    return MINBASE_IMAGE


def ensure_stand_in_base(client, log=print) -> str:  # type: ignore[no-untyped-def]
    """bookworm + python3 + pip + torch/torchvision from PyPI, built once into the fixed data root."""
    return _ensure_built(client, BASE_IMAGE, BASE_DOCKERFILE, f"torch {TORCH_VERSION} from PyPI; minutes", log)


# A fresh Debian 12 machine as a new user has it: Debian's python3 with pip and venv, nothing else (issue 9). The
# host's CA bundle is the only addition: this network intercepts TLS, as a corporate proxy would.
FRESH_DEBIAN_DOCKERFILE = f"""\
FROM {MINBASE_IMAGE}
COPY host-ca.crt /usr/local/share/yolokf-test/host-ca.crt
ENV PIP_CERT=/usr/local/share/yolokf-test/host-ca.crt
RUN apt-get update -qq \\
 && apt-get install -y -qq --no-install-recommends python3 python3-pip python3-venv ca-certificates >/dev/null \\
 && rm -rf /var/lib/apt/lists/*
"""
FRESH_DEBIAN_IMAGE = f"yolokf-test/fresh-debian12:{recipe_hash(FRESH_DEBIAN_DOCKERFILE)}"
# The same without python3-venv, and a user who is not root: what `scripts/setup` must explain in one line.
NO_VENV_DOCKERFILE = f"""\
FROM {MINBASE_IMAGE}
RUN apt-get update -qq \\
 && apt-get install -y -qq --no-install-recommends python3 python3-pip >/dev/null \\
 && rm -rf /var/lib/apt/lists/* \\
 && useradd --create-home newcomer
"""
NO_VENV_IMAGE = f"yolokf-test/debian12-no-venv:{recipe_hash(NO_VENV_DOCKERFILE)}"


def ensure_fresh_debian(client, log=print) -> str:  # type: ignore[no-untyped-def]
    return _ensure_built(client, FRESH_DEBIAN_IMAGE, FRESH_DEBIAN_DOCKERFILE, "apt-get python3 python3-venv", log)


def ensure_debian_without_venv(client, log=print) -> str:  # type: ignore[no-untyped-def]
    return _ensure_built(client, NO_VENV_IMAGE, NO_VENV_DOCKERFILE, "apt-get python3", log)


def _ensure_built(client, tag: str, dockerfile: str, what: str, log=print) -> str:  # type: ignore[no-untyped-def]
    """`tag` built from `dockerfile` (with the host's CA bundle beside it) on the minbase, once per data root."""
    if _image_exists(client, tag):
        return tag
    ensure_minbase(client, log)
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile.encode()), ("host-ca.crt", HOST_CA_BUNDLE.read_bytes())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    log(f"building {tag} ({what}; once per data root) ...")
    started = time.monotonic()
    for chunk in client.api.build(
        fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True, network_mode="host", decode=True
    ):
        if "error" in chunk:
            raise RuntimeError(f"{tag} build failed: {chunk['error']}")
        line = chunk.get("stream", "").rstrip()
        if line.startswith("Step "):
            log(f"  {line}")
    log(f"built {tag} in {time.monotonic() - started:.0f} s")
    return tag


def _require_tools() -> None:
    """Skip when the host lacks what the engine needs, naming it; fail instead in CI, where nothing may skip."""
    if os.environ.get("YOLOKF_TEST_DOCKER_HOST"):
        return
    if missing := missing_tools():
        message = f"docker tests need {', '.join(missing)}: run scripts/ci-docker-deps.sh as root"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Engine]:
    _require_tools()
    with running_engine() as engine:
        yield engine


@pytest.fixture(scope="session")
def docker_host(docker_engine: Engine) -> Iterator[str]:
    """DOCKER_HOST pointed at the test engine for the whole session (yolokf.image.engine.docker_client reads it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOCKER_HOST", docker_engine.host)
        yield docker_engine.host


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    _require_tools()
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="session")
def minbase_image(docker_engine: Engine) -> str:
    return ensure_minbase(docker_engine.client())


@pytest.fixture(scope="session")
def stand_in_base(docker_engine: Engine) -> str:
    return ensure_stand_in_base(docker_engine.client())


def yolokf_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m yolokf ARGS` in a child process: real exit code, stdout and stderr apart."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("YOLOKF_REGISTRY_")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "yolokf", *args], capture_output=True, text=True, env=full_env, timeout=1200
    )


@dataclass
class Pushed:
    result: subprocess.CompletedProcess[str] = field(repr=False)
    env: dict[str, str] = field(repr=False)  # holds the registry password: kept out of tracebacks
    repository: str
    base: str
    cache: Path

    @property
    def reference(self) -> str:
        return self.result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def pushed(docker_host: str, registry, stand_in_base: str, tmp_path_factory: pytest.TempPathFactory):
    """build-image --push on the stand-in base, with credentials from the environment: the test image, built once a
    session (tests/test_image.py checks the build, tests/test_docker_runner.py runs pipelines in it)."""
    cache = tmp_path_factory.mktemp("cache")
    env = {
        "DOCKER_HOST": docker_host,
        "YOLOKF_CACHE_DIR": str(cache),
        "YOLOKF_REGISTRY_USERNAME": registry.username,
        "YOLOKF_REGISTRY_PASSWORD": registry.password,
    }
    repository = f"{registry.address}/ml/yolokf"
    result = yolokf_cli(
        "build-image", "--repository", repository, "--base-image", stand_in_base, "--push", env=env
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return Pushed(result, env, repository, stand_in_base, cache)


if __name__ == "__main__":
    if sys.argv[1:] != ["warm"]:
        sys.exit("usage: python tests/conftest_docker.py warm")
    if missing := missing_tools():
        sys.exit(f"missing: {', '.join(missing)}; run scripts/ci-docker-deps.sh as root")
    with running_engine() as eng:
        ensure_stand_in_base(eng.client())
