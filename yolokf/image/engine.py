"""Build and push the training image through a Docker engine (Docker SDK, classic builder).

`build_image` sends the context of a `Plan` to the engine, follows its stream step by step, then adds a
metadata-only step with OCI labels holding the versions read from inside the image, records the build
(`yolokf.image.records`) and pushes when asked. Progress goes to a `BuildEvents` object; this module
draws nothing itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from yolokf.core.errors import ImageBuildError, RegistryError
from yolokf.image.context import (
    LABEL_PREFIX,
    PASSWORD_ENV,
    USERNAME_ENV,
    BuildResult,
    Plan,
    Step,
    credentials,
    deterministic_tar,
    registry_of,
)
from yolokf.image.records import record

if TYPE_CHECKING:
    import docker

LOG_TAIL = 40

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


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


# Called for each engine status line about one layer while pulling or pushing:
# (layer id, status such as "Pushing", bytes done, bytes total); the byte counts are None when unknown.
LayerSink = Callable[[str, str, int | None, int | None], None]


class BuildEvents(Protocol):
    """What `build_image` and `push_image` report as they go. `QuietEvents` shows nothing; the CLI passes
    `yolokf.cli.console.BuildReporter`."""

    def message(self, text: str) -> None:
        """A line for the user: what is being built, how long it took, what was pushed."""

    def step_started(self, step: Step) -> None: ...

    def output(self, line: str) -> None:
        """A line the running step printed."""

    def step_done(self, step: Step) -> None: ...

    def failed(self, step: Step | None, tail: list[str]) -> None:
        """The build failed in `step` (None: before the first step); `tail` is the end of its output."""

    def layers(self, title: str) -> AbstractContextManager[LayerSink | None]:
        """Around pulling the base or pushing the image: a sink for per-layer progress, or None."""
        ...


class QuietEvents:
    """BuildEvents that show nothing."""

    def message(self, text: str) -> None:
        pass

    def step_started(self, step: Step) -> None:
        pass

    def output(self, line: str) -> None:
        pass

    def step_done(self, step: Step) -> None:
        pass

    def failed(self, step: Step | None, tail: list[str]) -> None:
        pass

    @contextlib.contextmanager
    def layers(self, title: str) -> Iterator[LayerSink | None]:
        yield None


def build_image(plan: Plan, events: BuildEvents | None = None, client: Any = None) -> BuildResult:
    """Build `plan` on the engine, add version labels, tag it, record it; push when `plan.push`."""
    events = events or QuietEvents()
    client = client or docker_client()
    started = time.perf_counter()
    events.message(f"Building {plan.reference} on {plan.spec.base_image}")
    image_id, steps = _run_build(client, plan, events)
    labels = {**plan.labels, **_base_digest_label(client, plan.spec.base_image), **version_labels(client, image_id)}
    image_id = _label(client, image_id, labels, plan, events)
    result = BuildResult(plan, image_id, steps, labels, time.perf_counter() - started)
    events.message(f"Built {plan.reference} ({image_id[7:19]}) in {result.seconds:.0f} s")
    record(result)
    if plan.push:
        result.digest_reference = push_image(client, plan.reference, events)
        record(result)
    return result


def _run_build(client: Any, plan: Plan, events: BuildEvents) -> tuple[str, list[Step]]:
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
        return _follow_build(stream, events)
    except docker.errors.APIError as exc:
        message = exc.explanation or str(exc)
        raise ImageBuildError(_pull_hint(plan.spec.base_image, message)) from None
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"The Docker engine failed during the build: {_first_line(exc)}") from None


def _follow_build(stream: Iterable[dict[str, Any]], events: BuildEvents) -> tuple[str, list[Step]]:
    """Turn the engine's JSON stream into steps and events; return (image id, steps)."""
    steps: list[Step] = []
    tail: deque[str] = deque(maxlen=LOG_TAIL)
    current: Step | None = None
    seen_from = False
    step_started = time.perf_counter()
    image_id = ""
    partial = ""
    pulling = False
    pull_sink: LayerSink | None = None

    def finish() -> None:
        if current is not None and current not in steps:
            current.seconds = time.perf_counter() - step_started
            steps.append(current)
            events.step_done(current)

    with contextlib.ExitStack() as pull:  # open while the engine pulls the base image during FROM
        for chunk in stream:
            if "error" in chunk:
                if partial:
                    tail.append(partial)
                events.failed(current, list(tail))
                detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                raise ImageBuildError(_step_failure(current, detail, tail))
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
            if "status" in chunk:
                if not pulling:
                    pull_sink = pull.enter_context(events.layers("Pulling the base image"))
                    pulling = True
                _layer_event(pull_sink, chunk)
                continue
            text = partial + chunk.get("stream", "")
            lines = text.split("\n")
            partial = lines.pop()
            for line in lines:
                line = _ANSI.sub("", line).rstrip("\r")
                match = re.match(r"^Step (\d+)/(\d+) : (.*)$", line)
                if match:
                    finish()
                    if pulling:
                        pull.close()
                        pulling, pull_sink = False, None
                    current = Step(int(match[1]), int(match[2]), match[3])
                    current.base = not seen_from and current.instruction.split()[0].upper() in ("ARG", "FROM")
                    seen_from = seen_from or current.instruction.split()[0].upper() == "FROM"
                    step_started = time.perf_counter()
                    tail.clear()
                    events.step_started(current)
                elif line.strip() == "---> Using cache" and current is not None:
                    current.cached = True
                elif line.startswith((" ---> ", "Removing intermediate container", "Successfully ")):
                    continue
                elif line.strip():
                    tail.append(line)
                    events.output(line)
        finish()
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


def _layer_event(sink: LayerSink | None, chunk: dict[str, Any]) -> None:
    if sink is None or "id" not in chunk:
        return
    detail = chunk.get("progressDetail") or {}
    if "total" in detail and "current" in detail:
        sink(chunk["id"], chunk.get("status", ""), detail["current"], detail["total"])
    else:
        sink(chunk["id"], chunk.get("status", ""), None, None)


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


def _label(client: Any, image_id: str, labels: dict[str, str], plan: Plan, events: BuildEvents) -> str:
    """A metadata-only step on top of the build: labels and the tag, no new filesystem layer."""
    pairs = " \\\n      ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in sorted(labels.items()))
    lines = [f"FROM {image_id}", f"LABEL {pairs}"]
    tar = deterministic_tar([("Dockerfile", ("\n".join(lines) + "\n").encode(), 0o644)])
    stream = client.api.build(
        fileobj=io.BytesIO(tar), custom_context=True, tag=plan.reference, rm=True, forcerm=True, decode=True
    )
    label_id, _ = _follow_build(stream, QuietEvents())
    events.message(f"  labels: {len(labels)} (versions read from the image)")
    return label_id


def push_image(client: Any, reference: str, events: BuildEvents | None = None) -> str:
    """Push `reference`; return `repository@sha256:...` as the registry reported it."""
    import docker

    events = events or QuietEvents()
    repository, tag = reference.rsplit(":", 1)
    registry = registry_of(reference)
    auth = credentials(registry)
    digest = ""
    pushed = existed = 0
    try:
        with events.layers(f"Pushing {reference}") as sink:
            for chunk in client.api.push(repository, tag=tag, stream=True, decode=True, auth_config=auth):
                if "error" in chunk:
                    message = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                    raise _registry_error(registry, message)
                if "aux" in chunk and "Digest" in chunk["aux"]:
                    digest = chunk["aux"]["Digest"]
                status = chunk.get("status", "")
                pushed += status == "Pushed"
                existed += status == "Layer already exists" or status.startswith("Mounted from")
                _layer_event(sink, chunk)
    except docker.errors.APIError as exc:
        raise _registry_error(registry, exc.explanation or str(exc)) from None
    except docker.errors.DockerException as exc:
        raise _registry_error(registry, str(exc)) from None
    if not digest:
        raise RegistryError(f"The push to {registry} ended without a digest; check the registry's logs and rerun.")
    events.message(f"Pushed {pushed} layers ({existed} already in the registry)")
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


def _short(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
