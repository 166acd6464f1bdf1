"""Which kfp.local runner a local `run`, `tune` or `evaluate` uses, and what it needs (issue 23).

- `subprocess` (the default): kfp.local's SubprocessRunner runs every step in this Python, on this disk. Steps
  share one filesystem, so a dataset name ultralytics downloads is passed through (`SHARED_DISK_ENV`).
- `docker`: kfp.local's DockerRunner runs every step of the same pipeline in a container of its own from the
  yolokf image (`--image`, else the one `yolokf build-image` made from this tree), as a cluster runs a pod: each
  sees its inputs, the run's outputs folder (kfp.local mounts the pipeline root at its own path) and the run's
  mounts (the local dataset, weights and files named on the command line, read-only), and nothing else of this
  machine's disk. Steps reach this machine's servers (S3, MLflow, a registry on localhost) over the host network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yolokf.core.devices import device_for_gpus
from yolokf.core.errors import UsageError
from yolokf.core.mounts import SHARED_DISK_ENV

if TYPE_CHECKING:
    from yolokf.pipeline.job import Job

SUBPROCESS, DOCKER = "subprocess", "docker"
RUNNERS = (SUBPROCESS, DOCKER)
# What a container step receives of this machine's environment: the credentials and endpoints the steps read
# (boto3's and obstore's AWS_*, MLflow's MLFLOW_*, yolokf's own), as a subprocess step inherits them all.
PASSED_ENV_PREFIXES = ("AWS_", "MLFLOW_", "YOLOKF_", "YOLO_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
# Read in this process only: a container has its own cache, config and disk.
KEPT_HERE = ("YOLOKF_CACHE_DIR", "YOLOKF_CONFIG", "YOLOKF_PROFILE", SHARED_DISK_ENV)


@dataclass(frozen=True)
class Runner:
    """The local runner, as `choose_runner` resolved it."""

    kind: str = SUBPROCESS
    image: str = ""  # docker: every step's image, present in the engine
    gpus: int | None = None  # docker: GPUs handed to the steps' containers (device requests)
    mounts: tuple[tuple[str, bool], ...] = field(default=())  # docker: (host path, writable), bound at the same path

    @property
    def docker(self) -> bool:
        return self.kind == DOCKER

    def describe(self) -> str:
        """How the steps run, for the run's first line."""
        return f"each step in a container of {self.image}" if self.docker else "through kfp.local"


def choose_runner(kind: str, image: str | None = None, gpus: int | None = None) -> Runner:
    """The runner `--runner` names; for docker, the image (present in the engine) and the GPUs checked now, so
    that a missing image or GPU fails in one line before anything runs."""
    kind = (kind or SUBPROCESS).strip().lower()
    if kind not in RUNNERS:
        raise UsageError(f"--runner {kind}: choose one of {', '.join(RUNNERS)}.")
    if kind == SUBPROCESS:
        return Runner()
    # Imported on use, for start-up time: only a docker run loads docker-py.
    from yolokf.image.engine import docker_client
    from yolokf.image.records import choose_image

    client = docker_client()
    choice = choose_image(image)
    if not _present(client, choice.reference):
        if image is not None:
            raise UsageError(
                f"--image {choice.reference} is not in the Docker engine: pull it (docker pull) or build one with "
                "`yolokf build-image`."
            )
        raise UsageError(
            f"--runner docker runs every step in the yolokf image, and none was built from this tree "
            f"({choice.reference}: {choice.reason}): run `yolokf build-image` first, or give --image."
        )
    if gpus:
        _check_gpus(client, gpus)
    return Runner(DOCKER, choice.reference, gpus)


def _present(client: Any, reference: str) -> bool:
    import docker

    try:
        client.images.get(reference)
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.APIError as exc:  # an engine that cannot say: let the run try (kfp.local pulls)
        return "not found" not in str(exc).lower()
    return True


def _check_gpus(client: Any, gpus: int) -> None:
    """Refuse --gpus when the engine cannot hand GPUs to a container: no NVIDIA runtime (the NVIDIA Container
    Toolkit registers one) and no CDI devices (docker 25+ lists them as DiscoveredDevices)."""
    info = client.info()
    runtimes = info.get("Runtimes") or {}
    discovered = info.get("DiscoveredDevices") or []
    if "nvidia" not in runtimes and not any("nvidia.com/gpu" in str(d) for d in discovered):
        raise UsageError(
            f"--gpus {gpus}: this Docker engine has no GPUs to hand a container (no NVIDIA runtime or CDI device); "
            "leave --gpus out to train on CPU, or install the NVIDIA Container Toolkit."
        )


def prepare_job(job: Job, runner: Runner) -> tuple[Job, Runner]:
    """The job as `runner` runs it. In containers: the download step runs, as on a cluster (it fetches what a
    dataset name needs, once); paths on this machine become absolute and are mounted; --gpus picks the device."""
    if not runner.docker:
        return job, runner
    config, step, mounts = job.config, job.step, _Mounts()
    data = mounts.add_data(config.data)
    model = mounts.add_file(config.model)
    if step.checkpoint_dir:
        mounts.add(Path(step.checkpoint_dir), writable=True)
    config = config.with_overrides(data=data, model=model, device=device_for_gpus(runner.gpus, config.device))
    if job.promotion is not None:
        for path in (job.promotion.token_file, job.promotion.ca_bundle):
            if path:
                mounts.add(Path(path))
    return replace(job, config=config, local_data=False), replace(runner, mounts=tuple(mounts.paths.items()))


class _Mounts:
    """Host paths the containers need, each bound once at its own path (read-only unless writable)."""

    def __init__(self) -> None:
        self.paths: dict[str, bool] = {}

    def add(self, path: Path, writable: bool = False) -> None:
        path = path.expanduser().resolve()
        if any(path.is_relative_to(p) for p in map(Path, self.paths)):
            return
        for inner in [p for p in self.paths if Path(p).is_relative_to(path)]:
            writable = writable or self.paths.pop(inner)
        self.paths[str(path)] = writable

    def add_file(self, value: str) -> str:
        """A file named on the command line (weights, a model YAML): mounted when it is on this machine."""
        path = Path(value).expanduser()
        if not path.exists():
            return value  # a name ultralytics resolves in the container (yolov8n.yaml), or a URI
        self.add(path)
        return str(path.resolve())

    def add_data(self, value: str) -> str:
        """A local dataset: its folder, or its YAML's folder and the folder its `path:` names."""
        # Imported on use, for start-up time: only a docker run with local data reads it.
        from yolokf.data.datasets import images_base, load_data_yaml

        path = Path(value).expanduser()
        if not path.exists():
            return value  # a name (shapes, coco128.yaml) or a URI: the download step resolves it in its container
        path = path.resolve()
        self.add(path if path.is_dir() else path.parent)
        if path.is_file() and (base := images_base(path, load_data_yaml(path))).exists():
            self.add(base)  # absent: the download step fetches it (its YAML's `download:`)
        return str(path)


def kfp_runner(runner: Runner) -> Any:
    """The kfp.local runner object for `runner`."""
    from kfp import local

    if not runner.docker:
        return local.SubprocessRunner(use_venv=False)
    import docker

    args: dict[str, Any] = {
        "network_mode": "host",  # the steps reach servers on this machine's loopback (S3, MLflow, registries)
        "environment": passed_environment(),
        "mounts": [
            docker.types.Mount(path, path, type="bind", read_only=not writable) for path, writable in runner.mounts
        ],
        "shm_size": "2g",  # ultralytics' data loader workers share tensors through /dev/shm (64 MB by default)
    }
    if runner.gpus:
        args["device_requests"] = [docker.types.DeviceRequest(count=runner.gpus, capabilities=[["gpu"]])]
    return local.DockerRunner(**args)


def passed_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """This machine's variables a container step receives (PASSED_ENV_PREFIXES, less KEPT_HERE and the image
    registry's login, which is build-image's alone)."""
    from yolokf.image.context import PASSWORD_ENV, USERNAME_ENV

    env = os.environ if environ is None else environ
    kept = {*KEPT_HERE, USERNAME_ENV, PASSWORD_ENV}
    return {name: value for name, value in env.items() if name.startswith(PASSED_ENV_PREFIXES) and name not in kept}


def use_images(pipeline: Any, runner: Runner) -> None:
    """Every step of the built pipeline runs in the runner's image (a local job's steps name no image)."""
    if not runner.docker:
        return
    executors = pipeline.pipeline_spec.deployment_spec["executors"]
    for name in executors:
        if "container" in executors[name]:  # not an importer (`yolokf evaluate`'s weights)
            executors[name]["container"]["image"] = runner.image


def shared_disk(runner: Runner) -> dict[str, str]:
    """Environment for the steps' processes: the subprocess runner's steps share this disk."""
    return {} if runner.docker else {SHARED_DISK_ENV: "1"}
