"""`yolokf build-image`: the build context and tag without Docker, then a real engine and registry.

The docker tests use the fixtures of tests/conftest_docker.py: dockerd with a cached data root,
Debian's docker-registry with htpasswd auth, and a Debian + torch stand-in for NVIDIA's base image.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest_docker import yolokf_cli
from yolokf import __version__
from yolokf.core.errors import UsageError
from yolokf.image.context import BuildSpec, plan_build
from yolokf.image.engine import PASSWORD_ENV, USERNAME_ENV, BuildResult, QuietEvents, build_image, docker_client
from yolokf.image.records import record, resolve_image

REPO = Path(__file__).resolve().parents[1]
TAG = re.compile(rf"^{re.escape(__version__)}-[0-9a-f]{{12}}$")


@pytest.fixture
def record_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("YOLOKF_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def copy_tree(dest: Path) -> Path:
    """A copy of the source tree that goes into the image, to change files without touching the repo."""
    shutil.copytree(REPO / "yolokf", dest / "yolokf", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "dockerfiles", dest / "dockerfiles")
    shutil.copy(REPO / "pyproject.toml", dest / "pyproject.toml")
    return dest


def change_source(tree: Path) -> None:
    """A change to yolokf's code never built before: the engine's cache persists between runs."""
    init = tree / "yolokf" / "__init__.py"
    init.write_text(init.read_text() + f"\n# changed {uuid.uuid4()}\n")


class Messages(QuietEvents):
    """The lines build_image and push_image tell the user."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def pushed_counts(text: str) -> tuple[int, int]:
    """(pushed, already in the registry) from the push's summary line."""
    found = re.findall(r"^Pushed (\d+) layers \((\d+) already in the registry\)$", text, re.M)
    assert len(found) == 1, text
    return int(found[0][0]), int(found[0][1])


def test_same_inputs_give_the_same_tag_and_a_change_gives_a_new_one(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path / "src")
    first = plan_build(BuildSpec(source=tree))
    again = plan_build(BuildSpec(source=tree))
    assert first.reference == again.reference
    assert first.context.tar == again.context.tar
    assert TAG.match(first.tag), first.tag

    other_base = plan_build(BuildSpec(source=tree, base_image="nvcr.io/nvidia/pytorch:26.08-py3"))
    assert other_base.tag != first.tag
    assert other_base.context.source_hash == first.context.source_hash  # same code: compile/run still match

    change_source(tree)
    changed = plan_build(BuildSpec(source=tree))
    assert changed.tag != first.tag
    assert changed.context.source_hash != first.context.source_hash


def test_context_holds_yolokf_as_a_site_folder_and_pins_kfp(tmp_path: Path) -> None:
    weights = tmp_path / "yolov8n.pt"
    weights.write_bytes(b"not really weights")
    plan = plan_build(BuildSpec(weights=weights))
    assert "yolokf-site/yolokf/__init__.py" in plan.context.files
    assert f"yolokf-site/yolokf-{__version__}.dist-info/METADATA" in plan.context.files
    assert "weights/yolov8n.pt" in plan.context.files
    assert not any("__pycache__" in name for name in plan.context.files)
    import importlib.metadata as md

    assert f"kfp=={md.version('kfp')}" in plan.context.requirements
    assert f"ultralytics-opencv-headless=={md.version('ultralytics-opencv-headless')}" in plan.context.requirements
    assert not any(r.startswith(("torch", "opencv-python")) for r in plan.context.requirements)


def test_dry_run_prints_what_it_would_build_push_and_label(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # proves no engine is needed
    result = cli(["build-image", "--dry-run", "--repository", "registry.example.com/ml/yolokf", "--push"])
    assert result.exit_code == 0, result.output
    assert re.search(rf"^# Would build registry\.example\.com/ml/yolokf:{re.escape(__version__)}-[0-9a-f]{{12}}$",
                     result.stdout, re.M), result.stdout  # fmt: skip
    assert "# Would push registry.example.com/ml/yolokf:" in result.stdout
    labels = yaml.safe_load(result.stdout)["labels"]  # stdout stays YAML (issue 26)
    for label in ("source", "version", "revision", "base.name"):
        assert f"org.opencontainers.image.{label}" in labels
    assert "io.yolokf.kfp.version" in labels
    assert "io.yolokf.ultralytics.version" in labels


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--push"], "--push needs a --repository in a registry"),
        (["--pip-index-url", "https://user:s3cret@mirror.example.com/simple"], "--pip-index-url holds a password"),
        (["--weights", "missing.pt"], "--weights missing.pt is not a file"),
        (["--repository", "Not An Image"], "is not an image name"),
        (["--tag", "bad tag"], "is not a Docker tag"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(cli, args: list[str], message: str) -> None:
    result = cli(["build-image", "--dry-run", *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: ") and message in result.stderr, result.stderr
    assert "s3cret" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_resolve_image_rule(record_dir: Path) -> None:
    assert resolve_image("registry.example.com/ml/yolokf@sha256:" + "a" * 64).endswith("a" * 64)
    with pytest.raises(UsageError, match="--image is empty"):
        resolve_image("  ")

    fallback = resolve_image(None)  # nothing built: the tag build-image would give this tree
    assert fallback == plan_build(BuildSpec()).reference

    plan = plan_build(BuildSpec(repository="registry.example.com/ml/yolokf"))
    built = BuildResult(plan, "sha256:" + "1" * 64, [], {}, 1.0)
    record(built)
    assert resolve_image(None) == plan.reference  # built, not pushed: the local tag
    built.digest_reference = "registry.example.com/ml/yolokf@sha256:" + "2" * 64
    record(built)
    assert resolve_image(None) == built.digest_reference  # pushed: by digest
    assert resolve_image("my/own:tag") == "my/own:tag"  # --image always wins
    assert json.loads((record_dir / "images.json").read_text())["images"][plan.context.content_hash]


def test_compile_pins_the_resolved_image(cli, record_dir: Path, tmp_path: Path) -> None:
    import yaml

    out = tmp_path / "p.yaml"
    result = cli(["compile", "--out", out, "--model", "yolov8n.yaml", "--data", "shapes"])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(out.read_text()))
    executors = docs[0]["deploymentSpec"]["executors"]
    images = {name: e["container"]["image"] for name, e in executors.items()}
    assert sorted(images) == ["exec-fetch-dataset", "exec-yolo-train"], "every pipeline has its download step"
    assert set(images.values()) == {resolve_image(None)}, images
    images = list(images.values())
    assert re.fullmatch(rf"yolokf:{re.escape(__version__)}-[0-9a-f]{{12}}", images[0]), "never a floating tag"


def test_no_engine_is_a_clear_error(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    result = cli(["build-image"])
    assert result.exit_code == 1, result.output
    assert "Cannot reach the Docker engine at unix:///nonexistent/docker.sock" in result.stderr
    assert "DOCKER_HOST" in result.stderr


@pytest.mark.docker
@pytest.mark.slow
def test_push_prints_the_digest_the_registry_holds(pushed, registry) -> None:
    out = pushed.reference
    repository, digest = out.split("@")
    assert repository == pushed.repository
    tag = _local_tag(pushed)
    assert TAG.match(tag), tag
    assert digest == registry.manifest_digest("ml/yolokf", tag)
    assert digest == registry.manifest_digest("ml/yolokf", digest)
    recorded = json.loads((pushed.cache / "images.json").read_text())["images"]
    assert [entry["digest_reference"] for entry in recorded.values()] == [out]
    progress = pushed.result.stderr
    assert "[9/9] COPY yolokf-site/" in progress
    # Every layer of the manifest was either sent or found in the registry (whose storage outlives a run).
    sent, found = pushed_counts(progress)
    assert sent + found == len(registry.manifest("ml/yolokf", tag)["layers"]) > 0, progress
    assert '{"' not in progress  # readable progress, not the engine's JSON


def _local_tag(pushed) -> str:
    prefix = pushed.repository + ":"
    tags = docker_client().images.get(pushed.reference).tags
    return next(t[len(prefix) :] for t in tags if t.startswith(prefix))


@pytest.mark.docker
@pytest.mark.slow
def test_base_torch_is_unchanged_and_labels_say_what_is_inside(pushed) -> None:
    client = docker_client()
    probe = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d: m.version(d) for d in ['torch', 'torchvision', 'nvidia-cudnn-cu13']}))"
    )

    def versions(image: str) -> dict[str, str]:
        out = client.containers.run(image, ["python3", "-c", probe], remove=True, network_mode="none")
        return json.loads(out.decode().strip().splitlines()[-1])

    reference = pushed.reference
    assert versions(reference) == versions(pushed.base)

    labels = client.images.get(reference).labels
    base_versions = versions(pushed.base)
    assert labels["io.yolokf.torch.version"] == base_versions["torch"]
    assert labels["io.yolokf.torchvision.version"] == base_versions["torchvision"]
    import importlib.metadata as md

    assert labels["io.yolokf.ultralytics.version"] == md.version("ultralytics-opencv-headless")
    assert labels["io.yolokf.kfp.version"] == md.version("kfp")
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.base.name"] == pushed.base
    assert labels["org.opencontainers.image.source"]
    assert labels["org.opencontainers.image.revision"]

    checks = (
        "import os, cv2, importlib.metadata as m; "
        "from ultralytics.utils import USER_CONFIG_DIR, SETTINGS, AUTOINSTALL; "
        "assert not AUTOINSTALL; "
        "assert (USER_CONFIG_DIR / 'Arial.ttf').is_file() and (USER_CONFIG_DIR / 'Arial.Unicode.ttf').is_file(); "
        "assert os.access(USER_CONFIG_DIR, os.W_OK); "
        "assert SETTINGS['weights_dir'] == '/opt/yolokf/weights'; "
        "assert [d for d in ('opencv-python', 'opencv-contrib-python') if d in {x.metadata['Name'] for x in m.distributions()}] == []; "  # noqa: E501
        "print('ok')"
    )
    # As a non-root user with an unwritable HOME, like many pods.
    out = client.containers.run(
        reference, ["python3", "-c", checks], user="12345:12345", environment={"HOME": "/nonexistent"},
        remove=True, network_mode="none",
    )  # fmt: skip
    assert out.decode().strip().endswith("ok")


@pytest.mark.docker
@pytest.mark.slow
def test_no_credential_in_output_history_or_labels(pushed, registry) -> None:
    secret = registry.password
    result = pushed.result
    assert secret not in result.stdout and secret not in result.stderr
    image = docker_client().images.get(result.stdout.strip().splitlines()[-1])
    history = json.dumps(image.history())  # `docker history --no-trunc`
    assert secret not in history
    assert secret not in json.dumps(image.labels)
    assert secret not in json.dumps(image.attrs["Config"])
    assert not any("REGISTRY_PASSWORD" in e for e in image.attrs["Config"].get("Env") or [])


@pytest.mark.docker
@pytest.mark.slow
def test_the_image_runs_the_training_step(pushed, tmp_path: Path) -> None:
    """The pipeline's one component in the built image, through kfp.local's DockerRunner."""
    from kfp import local

    from yolokf.core.settings import TrainConfig
    from yolokf.pipeline.job import plan_job
    from yolokf.pipeline.pipelines import build_pipeline
    from yolokf.pipeline.step_options import StepOptions

    reference = pushed.reference
    local.init(runner=local.DockerRunner(), pipeline_root=str(tmp_path))
    config = TrainConfig(model="yolov8n.yaml", data="shapes", epochs=1, imgsz=64, batch=8, workers=0)
    task = build_pipeline(plan_job(config, StepOptions(), image=reference))()
    # kubeflow/pipelines#13332: DockerRunner can report a failed container as success; check the outputs.
    weights = Path(task.outputs["weights"].path)
    assert (weights / "best.pt").stat().st_size > 1_000_000, sorted(weights.iterdir())
    metrics = task.outputs["metrics"].metadata
    assert {"mAP50", "mAP50-95", "precision", "recall"} <= set(metrics), metrics
    assert (Path(task.outputs["run_dir"].path) / "results.csv").is_file()


@pytest.mark.docker
@pytest.mark.slow
def test_source_only_change_rebuilds_only_the_last_layer(pushed, record_dir: Path, tmp_path: Path) -> None:
    client = docker_client()
    tree = copy_tree(tmp_path / "src")
    spec = BuildSpec(base_image=pushed.base, repository="yolokf-test/rebuild", source=tree)
    first = build_image(plan_build(spec), client=client)
    change_source(tree)
    second = build_image(plan_build(spec), client=client)
    assert second.plan.tag != first.plan.tag
    rebuilt = [step.instruction for step in second.steps if not step.cached and not step.base]
    assert rebuilt == ["COPY yolokf-site/ /opt/yolokf/site/"], rebuilt
    same = build_image(plan_build(spec), client=client)
    assert same.plan.reference == second.plan.reference
    assert len(same.steps) == len(second.steps) > 0 and all(s.cached or s.base for s in same.steps)


@pytest.mark.docker
@pytest.mark.slow
def test_pushing_a_source_change_sends_only_the_last_layer(
    pushed, registry, record_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(USERNAME_ENV, registry.username)
    monkeypatch.setenv(PASSWORD_ENV, registry.password)
    tree = copy_tree(tmp_path / "src")
    change_source(tree)
    spec = BuildSpec(base_image=pushed.base, repository=pushed.repository, source=tree)
    messages = Messages()
    result = build_image(plan_build(spec, push=True), messages, client=docker_client())
    layers = registry.manifest("ml/yolokf", result.plan.tag)["layers"]
    assert pushed_counts("\n".join(messages.lines)) == (1, len(layers) - 1), messages.lines
    assert result.digest_reference == f"{pushed.repository}@{registry.manifest_digest('ml/yolokf', result.plan.tag)}"


@pytest.mark.docker
def test_failing_step_shows_the_command_and_its_log_tail(docker_host: str, minbase_image: str, tmp_path: Path) -> None:
    env = {"DOCKER_HOST": docker_host, "YOLOKF_CACHE_DIR": str(tmp_path)}
    result = yolokf_cli("build-image", "--base-image", minbase_image, env=env)
    assert result.returncode == 1, result.stderr
    assert re.search(r"Step \d+/\d+ failed: RUN command -v python3", result.stderr), result.stderr
    assert "  | yolokf: the base image has no python3;" in result.stderr  # the log tail
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: Step ") and "has no python3" in last, last
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.docker
@pytest.mark.slow
def test_unreachable_and_refusing_registries_are_clear_errors(pushed, registry) -> None:
    env = dict(pushed.env)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        gone = f"127.0.0.1:{s.getsockname()[1]}"
    result = yolokf_cli(
        "build-image", "--repository", f"{gone}/ml/yolokf", "--base-image", pushed.base, "--push", env=env
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: Cannot reach registry {gone}"), last

    env["YOLOKF_REGISTRY_PASSWORD"] = "wrong-password"
    result = yolokf_cli(
        "build-image", "--repository", pushed.repository, "--base-image", pushed.base, "--push", env=env
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: Registry {registry.address} refused the push"), last
    assert "YOLOKF_REGISTRY_USERNAME" in last and "wrong-password" not in result.stderr


@pytest.mark.docker
@pytest.mark.slow
def test_baked_weights_train_offline(pushed, tmp_path: Path) -> None:
    """--weights yolov8n.pt is found by name inside the offline step (ultralytics' weights_dir)."""
    from kfp import local
    from ultralytics import YOLO

    from yolokf.core.settings import TrainConfig
    from yolokf.pipeline.job import plan_job
    from yolokf.pipeline.pipelines import build_pipeline
    from yolokf.pipeline.step_options import StepOptions

    weights = tmp_path / "yolov8n.pt"
    YOLO("yolov8n.yaml").save(weights)  # a real checkpoint, made here: nothing can be downloaded
    env = {k: v for k, v in pushed.env.items() if not k.startswith("YOLOKF_REGISTRY_")}
    result = yolokf_cli("build-image", "--base-image", pushed.base, "--weights", str(weights), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    reference = result.stdout.strip().splitlines()[-1]

    local.init(runner=local.DockerRunner(), pipeline_root=str(tmp_path / "root"))
    config = TrainConfig(model="yolov8n.pt", data="shapes", epochs=1, imgsz=64, batch=8, workers=0)
    task = build_pipeline(plan_job(config, StepOptions(), image=reference))()
    assert (Path(task.outputs["weights"].path) / "best.pt").is_file()


def test_a_folder_that_is_no_source_tree_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=rf"^{re.escape(str(tmp_path))} is not a yolokf source tree .*scripts/setup"):
        plan_build(BuildSpec(source=tmp_path))
