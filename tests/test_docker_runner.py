"""`--runner docker` (issue 23): every step of the same pipeline in a container of its own, from the test image the
suite builds once (tests/conftest_docker.py `pushed`), as a cluster runs pods: each container sees its inputs, the
run's outputs folder and the run's mounts only, and reaches this machine's loopback servers (S3, the Model Registry,
a dataset's download URL) over the host network. Nothing here is mocked but the 13332 parser test at the end.
"""

from __future__ import annotations

import http.server
import io
import json
import re
import socket
import threading
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.loopback.model_registry.server import ModelRegistryServer
from tests.loopback.s3 import upload_folder
from tests.test_bad_input import assert_one_clear_line
from tests.test_tune import assert_halved_two_trials

# Small and short: these tests prove the pod path, not learning (tests/test_local_run.py proves that).
TINY = ["--imgsz", "64", "--batch", "8", "--workers", "0", "--set", "plots=false"]


def executor_output(run: Path, task: str) -> dict:
    return json.loads((run / task / "executor_output.json").read_text())


@pytest.fixture
def model_registry() -> Iterator[ModelRegistryServer]:
    server = ModelRegistryServer().start()
    yield server
    server.stop()
    assert not server.bugs, server.bugs


class ZipServer:
    """A loopback HTTP server for a dataset's `download:` URL: serves one zip, counts what it was asked."""

    def __init__(self, payload: bytes) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, body: bool) -> None:
                owner.requests[(self.command, self.path)] += 1
                if self.path != "/mini.zip":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if body:
                    self.wfile.write(payload)

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self._answer(True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(False)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def downloads(self) -> int:
        return self.requests[("GET", "/mini.zip")]


def mini_dataset_zip(tmp_path: Path) -> bytes:
    """A shapes dataset as ultralytics' own download zips are laid out: one top folder, the splits under it."""
    from yolokf.data.shapes import write_dataset

    root = tmp_path / "zip-src"
    write_dataset(root / "mini", train=8, val=8, test=8, imgsz=128, seed=3)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted((root / "mini").rglob("*")):
            if path.is_file() and path.name != "data.yaml":
                archive.write(path, path.relative_to(root).as_posix())
    return buffer.getvalue()


def ultralytics_style_yaml(folder: Path, download: str) -> Path:
    """A dataset YAML in the format of the ones ultralytics ships (coco128.yaml): `path:` under its datasets_dir,
    the splits relative to it, and a `download:` URL; the images are not on disk until someone downloads them."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "path": "mini",
        "train": "images/train",
        "val": "images/val",
        "test": "images/test",
        "names": {0: "circle", 1: "square", 2: "triangle"},
        "download": download,
    }
    path = folder / "mini.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- what a wrong choice says, before anything runs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--runner", "podman"], "--runner podman: choose one of subprocess, docker."),
        (
            ["--runner", "docker", "--host", "http://127.0.0.1:9", "--image", "r/y:1"],
            "--runner docker runs the steps on this machine; leave it out with --host",
        ),
    ],
)
def test_a_wrong_runner_is_one_line(cli, tmp_path, args, text):
    root = tmp_path / "root"
    result = cli(["run", "--model", "yolov8n.yaml", "--data", "shapes", *args, "--pipeline-root", root])
    assert_one_clear_line(result, 2, text)
    assert not root.exists()


@pytest.mark.docker
def test_docker_without_a_built_image_names_build_image(cli, tmp_path, docker_host, monkeypatch):
    monkeypatch.setenv("YOLOKF_CACHE_DIR", str(tmp_path / "no-builds"))  # no image recorded
    root = tmp_path / "root"
    result = cli(["run", "--runner", "docker", "--data", "shapes", "--pipeline-root", root])
    assert_one_clear_line(result, 2, "none was built from this tree")
    assert "run `yolokf build-image` first, or give --image." in result.stderr
    result = cli(["run", "--runner", "docker", "--image", "nowhere.example/yolokf:0", "--pipeline-root", root])
    assert_one_clear_line(result, 2, "--image nowhere.example/yolokf:0 is not in the Docker engine")
    assert not root.exists()


@pytest.mark.docker
def test_gpus_on_an_engine_without_gpus_is_one_line(cli, tmp_path, docker_host, minbase_image):
    root = tmp_path / "root"
    args = ["run", "--runner", "docker", "--image", minbase_image, "--gpus", "1", "--pipeline-root", root]
    result = cli(args)
    assert_one_clear_line(result, 2, "--gpus 1: this Docker engine has no GPUs to hand a container")
    assert not root.exists()


# --- the pod path ------------------------------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.slow
def test_train_evaluate_export_gate_register_each_in_a_container(
    cli, tmp_path, pushed, s3, dataset_dir, model_registry, best_pt
):
    """The promote pipeline under DockerRunner, its data from the loopback S3 server and its model registered in the
    loopback Model Registry, both reached from the containers; the console is a local run's. The training goes on
    one epoch from the suite's shared model (mounted into its container): a model that finds nothing cannot prove
    its export."""
    upload_folder(s3, dataset_dir, "shapes")
    root = tmp_path / "root"
    args = ["--model", best_pt, "--data", "s3://datasets/shapes", "--epochs", "1", *TINY, "--imgsz", "128"]
    args += ["--export", "onnx", "--gate", "mAP50-95>=0", "--registry", model_registry.url]
    args += ["--registered-model", "shapes-in-containers"]
    result = cli(["run", "--runner", "docker", "--image", pushed.reference, *args, "--pipeline-root", root])
    assert result.exit_code == 0, result.output
    assert f"each step in a container of {pushed.reference}" in result.stdout
    assert "Registered shapes-in-containers version" in result.stdout
    (run,) = root.glob("yolov8-train-*")
    # Every step wrote its outputs (kubeflow/pipelines#13332: a container's success is checked, not assumed).
    tasks = ["fetch-dataset", "yolo-train", "yolo-evaluate", "yolo-export", "quality-gate", "yolo-register"]
    assert [t for t in tasks if not (run / t / "executor_output.json").is_file()] == [], sorted(run.iterdir())
    # The download step fetched the data once into its artifact; the training read it there, not on this disk.
    fetched = executor_output(run, "fetch-dataset")["artifacts"]["dataset"]["artifacts"][0]["metadata"]
    assert fetched["kind"] == "downloaded" and fetched["source"] == "s3://datasets/shapes"
    summary = json.loads((run / "yolo-evaluate" / "summary").read_text())
    assert summary["split"] == "test" and summary["metrics"]["mAP50-95"] > 0.05, summary["metrics"]
    (version,) = model_registry.versions.values()
    assert version["customProperties"]["dataset_hash"]["string_value"].startswith("sha256:")
    formats = sorted(a["modelFormatName"] for a in model_registry.artifacts.values())
    assert formats == ["onnx", "pytorch"]


@pytest.mark.docker
@pytest.mark.slow
def test_a_dataset_folder_on_this_machine_is_mounted_read_only(cli, tmp_path, pushed):
    """Local data reaches the containers as a pod's volume would: mounted at its own path, read-only, and nothing
    the steps write lands in it."""
    from yolokf.data.shapes import write_dataset

    write_dataset(tmp_path / "mine", train=8, val=4, test=2, imgsz=64, seed=5)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "mine").rglob("*"))
    root = tmp_path / "root"
    args = ["run", "--runner", "docker", "--image", pushed.reference, "--model", "yolov8n.yaml"]
    result = cli([*args, "--data", tmp_path / "mine", "--epochs", "1", *TINY, "--pipeline-root", root])
    assert result.exit_code == 0, result.output
    (run,) = root.glob("yolov8-train-*")
    fetched = executor_output(run, "fetch-dataset")["artifacts"]["dataset"]["artifacts"][0]["metadata"]
    assert fetched["kind"] == "passthrough" and fetched["source"] == str(tmp_path / "mine"), fetched
    assert (run / "yolo-train" / "weights" / "best.pt").is_file()
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "mine").rglob("*")) == before, "no label cache"


@pytest.mark.docker
@pytest.mark.slow
def test_a_halving_sweep_hands_checkpoints_on_only_through_the_run(cli, tmp_path, pushed):
    """Two trials, two rounds: the kept trial resumes round 1's checkpoint in a new container, which sees it only
    because the pipeline's outputs folder is mounted (no shared /tmp, no shared home)."""
    root = tmp_path / "root"
    space = ["--set", "optimizer=SGD", "--space", "lr0=loguniform:0.001:0.05", "--trials", "2", "--halving", "2"]
    args = ["tune", "--runner", "docker", "--image", pushed.reference, "--model", "yolov8n.yaml", "--data", "shapes"]
    result = cli([*args, "--epochs", "2", *TINY, *space, "--pipeline-root", root])
    assert result.exit_code == 0, result.output
    assert_halved_two_trials(result.stdout, root)


@pytest.mark.docker
@pytest.mark.slow
def test_a_dataset_yaml_with_a_download_url_is_fetched_once_for_every_step(cli, tmp_path, pushed, best_pt):
    """ultralytics' own dataset names are YAMLs with a `download:` URL (coco128.yaml); here one points at a loopback
    server. The download step fetches it once, with ultralytics' download code, and evaluation and export read that
    artifact in their own containers. Before issue 23 the step passed the name on and evaluation, in a container
    without the images, failed."""
    server = ZipServer(mini_dataset_zip(tmp_path))
    data = ultralytics_style_yaml(tmp_path / "data", f"{server.url}/mini.zip")
    root = tmp_path / "root"
    args = ["evaluate", "--runner", "docker", "--image", pushed.reference, "--model", best_pt, "--data", data]
    result = cli([*args, "--export", "onnx", "--pipeline-root", root])
    assert result.exit_code == 0, result.output
    assert server.downloads() == 1, server.requests  # once, by the download step: not by each step
    (run,) = root.glob("yolov8-evaluate-*")
    fetched = executor_output(run, "fetch-dataset")["artifacts"]["dataset"]["artifacts"][0]["metadata"]
    assert fetched["kind"] == "downloaded", fetched
    summary = json.loads((run / "yolo-evaluate" / "summary").read_text())
    assert summary["split"] == "test"
    # The shared model (15 epochs on shapes) finds these shapes too: seeds 0/1/2 give mAP50-95 >= 0.6 on shapes' own
    # test split (tests/test_promote.py); a floor well under that proves the steps read real images and labels.
    assert summary["metrics"]["mAP50-95"] >= 0.3, summary["metrics"]
    (records,) = [executor_output(run, t)["parameterValues"]["Output"] for t in ["yolo-export"]]
    assert [r["format"] for r in records] == ["onnx"] and records[0]["agreement"] >= 0.9, records
    assert not (tmp_path / "data" / "mini").exists(), "nothing downloaded next to the YAML on this machine"


@pytest.mark.docker
@pytest.mark.slow
def test_a_download_url_that_refuses_fails_the_download_step_and_nothing_trains(cli, tmp_path, pushed):
    url = f"http://127.0.0.1:{closed_port()}/mini.zip"
    data = ultralytics_style_yaml(tmp_path / "data", url)
    root = tmp_path / "root"
    args = ["run", "--runner", "docker", "--image", pushed.reference, "--model", "yolov8n.yaml", "--data", data]
    args += ["--epochs", "1", *TINY]
    result = cli([*args, "--pipeline-root", root])
    assert result.exit_code != 0, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and url in last and "s3://" in last and "pvc://" in last, last
    assert "Traceback" not in result.output
    (run,) = root.glob("yolov8-train-*")
    assert not (run / "yolo-train").exists(), "nothing trains"


# --- kubeflow/pipelines#13332 -------------------------------------------------------------------------------------


def test_a_step_reported_successful_without_its_outputs_is_a_failure(tmp_path):
    """kfp.local's DockerRunner reports a container that exited before it was waited on as a success. The run then
    names that step, not the step after it that read nothing."""
    from yolokf.core.errors import TrainingError
    from yolokf.runs.local import _check_outputs, _StepOutput

    written = tmp_path / "fetch-dataset" / "executor_output.json"
    written.parent.mkdir()
    written.write_text("{}")
    lines = []
    never_written = tmp_path / "yolo-train" / "executor_output.json"
    for task, output_file in (("fetch-dataset", written), ("yolo-train", never_written)):
        lines += [
            f"12:00:00.000 - INFO - Executing task '{task}'\n",
            "    [KFP Executor 2026-12-07 12:00:00,000 INFO]: Looking for component `yolo_train`\n",
            "    [KFP Executor 2026-12-07 12:00:00,000 INFO]: Got executor_input:\n",
            "    {\n",
            f'      "outputs": {{"outputFile": "{output_file}"}}\n',
            "    }\n",
            f"12:00:01.000 - INFO - Task '{task}' finished with status SUCCESS\n",
        ]
    events: list = []
    with (tmp_path / "log").open("w") as log:
        output = _StepOutput(log, events.append, False, {"yolo-train": "train"})
        for line in lines:
            output.write(line)
    assert [e.kind for e in events] == ["started", "succeeded", "started", "succeeded"]
    containers = {"fetch-dataset", "yolo-train"}
    assert output.without_outputs(containers) == ["yolo-train"]
    assert output.without_outputs({"fetch-dataset"}) == [], "an importer writes no executor output"
    with pytest.raises(TrainingError, match=r"^Step train failed: .* \(it wrote no outputs; .*#13332"):
        _check_outputs(output, containers, tmp_path / "log")
    assert re.search(r"fetch-dataset", json.dumps(output.output_files))
