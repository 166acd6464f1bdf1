"""A dataset ultralytics downloads itself (a name it ships, a YAML with `download:`) on a cluster (issue 23, item 2):
the download step fetches it once, with ultralytics' own code, into its artifact, which every later step reads; a
`download:` URL that does not answer fails the step in its first seconds, in one line.

The step function runs as the pod runs it, against a loopback HTTP server of the tests' own (tests/loopback/base.py)
serving a small dataset's zip; ultralytics' settings point at an empty datasets_dir of the test's own.
"""

from __future__ import annotations

import importlib.util
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.loopback.base import Handler, Loopback, Request
from tests.loopback.s3 import FakeArtifact
from tests.test_fetch import zipped
from yolokf.core.errors import DataError
from yolokf.core.mounts import SHARED_DISK_ENV
from yolokf.data import named
from yolokf.data.datasets import DOWNLOADED, PASSTHROUGH, dataset_spec, read_descriptor, step_data
from yolokf.data.fetch import fetch_step
from yolokf.data.shapes import CLASSES, write_dataset
from yolokf.training.launch import free_port

ARCHIVE = "/mini.zip"
ALTERNATIVES = r"Give it as --data s3://BUCKET/mini\.zip or pvc://PVC/mini/data\.yaml, or use an --image with it"


class Files(Loopback):
    """Files by path over GET and HEAD, 404 for any other path; every request kept in `requests`."""

    name = "named-files"
    methods = ("GET", "HEAD")

    def __init__(self, files: dict[str, bytes]):
        super().__init__()
        self.files = files
        self.requests: list[Request] = []

    def handle(self, http: Handler) -> None:
        record = http.read_request()
        self.requests.append(record)
        body = self.files.get(record.path)
        record.status = 404 if body is None else 200
        http.send_response(record.status)
        http.send_header("Content-Length", str(len(body or b"")))
        http.end_headers()
        if body is not None and record.method == "GET":
            http.wfile.write(body)

    def count(self, method: str, path: str = ARCHIVE) -> int:
        return sum(1 for r in self.requests if (r.method, r.path) == (method, path))


@pytest.fixture(scope="module")
def mini_zip(tmp_path_factory) -> bytes:
    """A tiny detection dataset as ultralytics' own zips hold one: `mini/images/{train,val}`, `mini/labels/...`."""
    top = tmp_path_factory.mktemp("zip")
    write_dataset(top / "mini", train=4, val=2, test=0, imgsz=64)
    (top / "mini" / "data.yaml").unlink()
    return zipped(top)


@pytest.fixture
def server(mini_zip) -> Iterator[Files]:
    files = Files({ARCHIVE: mini_zip}).start()
    yield files
    files.stop()


@pytest.fixture
def datasets_dir(tmp_path, monkeypatch) -> Path:
    """ultralytics' datasets_dir, empty, in a settings.json of a private YOLO_CONFIG_DIR; no shared disk."""
    from ultralytics.utils import SettingsManager

    config, datasets = tmp_path / "config", tmp_path / "datasets"
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(config))
    monkeypatch.delenv(SHARED_DISK_ENV, raising=False)
    SettingsManager(file=config / "Ultralytics" / "settings.json").update(datasets_dir=str(datasets))
    return datasets


def mini_yaml(folder: Path, download: str) -> Path:
    """A dataset YAML in ultralytics' format, as on a mounted folder, its images not on disk."""
    spec = {"path": "mini", "train": "images/train", "val": "images/val"}
    spec |= {"names": dict(enumerate(CLASSES)), "download": download}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mini.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder / "mini.yaml"


def test_a_yaml_with_download_is_fetched_once_into_the_artifact(server, datasets_dir, tmp_path, capsys):
    from ultralytics.data import utils

    ultralytics_dir = utils.DATASETS_DIR  # where ultralytics itself would have downloaded it
    assert not (ultralytics_dir / "mini").exists()
    data = mini_yaml(tmp_path / "mounted", f"{server.url}{ARCHIVE}")
    artifact = FakeArtifact(str(tmp_path / "artifact"))
    fetch_step(uri=str(data), dataset=artifact)

    dest = Path(artifact.path)
    assert len(list((dest / "mini" / "images" / "train").glob("*.png"))) == 4
    assert read_descriptor(dest)["kind"] == artifact.metadata["kind"] == DOWNLOADED
    assert (server.count("HEAD"), server.count("GET")) == (1, 1), server.requests  # the probe, the download
    files = artifact.metadata["files"]
    assert f"yolokf: fetched {data} from {server.url}{ARCHIVE}: {files} files" in capsys.readouterr().out

    local = step_data(str(data), artifact, tmp_path / "work")  # as the training, evaluate and export steps read it
    spec = dataset_spec(local)  # autodownload=False: the data is there
    assert Path(spec["val"]).is_relative_to(dest.resolve()) and len(list(Path(spec["val"]).glob("*.png"))) == 2
    assert not datasets_dir.exists() or not any(datasets_dir.iterdir())
    assert utils.DATASETS_DIR == ultralytics_dir and not (ultralytics_dir / "mini").exists()


def test_a_download_script_runs_with_its_path_in_the_artifact(server, datasets_dir, tmp_path):
    """A `download:` that is a Python script, as most of ultralytics' own YAMLs hold (coco.yaml, VOC.yaml): it runs
    through ultralytics' `check_det_dataset` with `yaml["path"]` in the artifact, so its files land there."""
    script = (
        "from pathlib import Path\n"
        "from ultralytics.utils.downloads import download\n"
        f"download(['{server.url}{ARCHIVE}'], dir=Path(yaml['path']).parent)\n"
    )
    data = mini_yaml(tmp_path / "mounted", script)
    artifact = FakeArtifact(str(tmp_path / "artifact"))
    fetch_step(uri=str(data), dataset=artifact)

    dest = Path(artifact.path)
    assert len(list((dest / "mini" / "images" / "val").glob("*.png"))) == 2
    assert server.count("GET") == 1, server.requests
    assert {"data.yaml", "mini", "yolokf-dataset.json"} <= {p.name for p in dest.iterdir()}
    assert not (dest / ".data.yaml").exists(), "the staged copy the script ran with is gone"
    spec = dataset_spec(step_data(str(data), artifact, tmp_path / "work"))
    assert Path(spec["train"]).is_relative_to(dest.resolve())
    assert not datasets_dir.exists() or not any(datasets_dir.iterdir())


def test_a_download_url_that_refuses_fails_the_step_at_once_in_one_line(datasets_dir, tmp_path):
    url = f"http://127.0.0.1:{free_port()}{ARCHIVE}"  # nothing listens there
    data = mini_yaml(tmp_path / "mounted", url)
    artifact = FakeArtifact(str(tmp_path / "artifact"))
    started = time.monotonic()
    with pytest.raises(DataError) as refused:
        fetch_step(uri=str(data), dataset=artifact)
    elapsed = time.monotonic() - started
    assert re.fullmatch(
        rf"Cannot fetch dataset {re.escape(str(data))} from {re.escape(url)}: connection refused\. {ALTERNATIVES} "
        r"under ultralytics' datasets_dir \(.+/mini\)\.",
        str(refused.value),
    ), str(refused.value)
    assert elapsed < 10, f"refused after {elapsed:.1f} s"
    assert not Path(artifact.path).exists()


def test_a_download_url_answering_404_is_refused_naming_the_status_and_no_credentials(server, datasets_dir, tmp_path):
    data = mini_yaml(tmp_path / "mounted", f"http://mirror:s3cret@{server.url[7:]}/gone.zip?token=t0ken")
    artifact = FakeArtifact(str(tmp_path / "artifact"))
    started = time.monotonic()
    with pytest.raises(DataError) as refused:
        fetch_step(uri=str(data), dataset=artifact)
    elapsed = time.monotonic() - started
    message = str(refused.value)
    assert re.fullmatch(
        rf"Cannot fetch dataset {re.escape(str(data))} from {re.escape(server.url)}/gone\.zip: HTTP 404 Not Found\. "
        rf"{ALTERNATIVES}.*",
        message,
    ), message
    assert "s3cret" not in message and "t0ken" not in message and "\n" not in message
    assert elapsed < 10, f"refused after {elapsed:.1f} s"
    ((probe),) = server.requests
    assert (probe.method, probe.headers["authorization"]) == ("HEAD", "Basic bWlycm9yOnMzY3JldA==")
    assert not Path(artifact.path).exists()


def test_a_download_that_brings_no_dataset_leaves_nothing(server, datasets_dir, tmp_path):
    server.files[ARCHIVE] = b"not a zip"  # the probe passes; ultralytics downloads it and unpacks nothing
    data = mini_yaml(tmp_path / "mounted", f"{server.url}{ARCHIVE}")
    artifact = FakeArtifact(str(tmp_path / "artifact"))
    with pytest.raises(DataError, match=rf"^Dataset {re.escape(str(data))}: its download: ran, but the images are not"):
        fetch_step(uri=str(data), dataset=artifact)
    assert not Path(artifact.path).exists()


def test_on_a_shared_disk_a_dataset_name_is_passed_through(server, datasets_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(SHARED_DISK_ENV, "1")
    data = mini_yaml(tmp_path / "mounted", f"{server.url}{ARCHIVE}")
    artifact = FakeArtifact(str(tmp_path / "artifact"))
    fetch_step(uri=str(data), dataset=artifact)
    assert read_descriptor(Path(artifact.path)) == {"kind": PASSTHROUGH, "data": str(data)}
    assert server.requests == []


def test_images_already_in_the_datasets_dir_are_passed_through(server, datasets_dir, tmp_path):
    """A dataset baked into the image (under ultralytics' datasets_dir) is read there, not downloaded."""
    write_dataset(datasets_dir / "mini", train=1, val=1, test=0, imgsz=32)
    data = mini_yaml(tmp_path / "mounted", f"{server.url}{ARCHIVE}")
    artifact = FakeArtifact(str(tmp_path / "artifact"))
    fetch_step(uri=str(data), dataset=artifact)
    assert read_descriptor(Path(artifact.path))["kind"] == PASSTHROUGH
    assert server.requests == []


def test_a_name_ultralytics_ships_resolves_to_its_yaml_and_download_url(datasets_dir):
    """coco8.yaml is ultralytics' own file, fetched from its own URL (not downloaded here: no internet)."""
    found = named.to_fetch("coco8.yaml")  # not on disk in the empty datasets_dir: the step would fetch it
    assert found is not None
    spec = importlib.util.find_spec("ultralytics")
    assert spec is not None and spec.submodule_search_locations
    package = Path(next(iter(spec.submodule_search_locations)))
    assert found.yaml == package / "cfg" / "datasets" / "coco8.yaml"
    assert found.archive and found.url == yaml.safe_load(found.yaml.read_text())["download"]
    assert found.url.startswith("https://") and found.url.endswith("/coco8.zip")
