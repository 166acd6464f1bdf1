"""Datasets from object storage and HTTP, fetched by the same code the download step runs.

A real S3-compatible server (moto's server mode) and a real HTTP server run on loopback, started by
fixtures and stopped by pid. Nothing is mocked.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from yolokf.datasets import prepare_dataset, resolve_data
from yolokf.errors import DataError
from yolokf.steps.fetch import fetch, fetch_step, s3_client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cmd: list[str], url: str, log: Path) -> subprocess.Popen:
    handle = log.open("wb")
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[2]} exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"{cmd} did not answer at {url}: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory) -> Iterator[str]:
    """moto's S3 server on a free loopback port; the endpoint URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = start_server(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], f"http://127.0.0.1:{port}/", log
    )
    yield f"http://127.0.0.1:{port}"
    stop(proc)


@pytest.fixture
def s3(s3_server, monkeypatch) -> Any:
    """A client of the test S3 server, with the environment the download step gets from --data-secret."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "yolokf-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "yolokf-test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = s3_client()
    client.create_bucket(Bucket="datasets")
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="datasets"):
        for item in page.get("Contents", []):
            client.delete_object(Bucket="datasets", Key=item["Key"])
    client.delete_bucket(Bucket="datasets")


@pytest.fixture(scope="module")
def http_root(tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """Python's http.server on a free loopback port serving a folder; (folder, base URL)."""
    root = tmp_path_factory.mktemp("www")
    port = free_port()
    proc = start_server(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
        f"http://127.0.0.1:{port}/",
        root.parent / "http.log",
    )
    yield root, f"http://127.0.0.1:{port}"
    stop(proc)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    """A small shapes dataset as a user would upload it: data.yaml at the top, `path:` from another machine."""
    from yolokf.shapes import write_dataset

    root = tmp_path_factory.mktemp("upload") / "shapes"
    write_dataset(root, train=8, val=4, test=2, imgsz=64)
    spec = yaml.safe_load((root / "data.yaml").read_text())
    spec["path"] = "/home/someone/datasets/shapes"
    (root / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root


def upload_folder(client, folder: Path, prefix: str) -> int:
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    for path in files:
        client.upload_file(str(path), "datasets", f"{prefix}/{path.relative_to(folder).as_posix()}")
    return len(files)


def tar_gz(folder: Path, top: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        tf.add(folder, arcname=top)
    return buffer.getvalue()


def zipped(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


@dataclass
class FakeArtifact:
    """What kfp hands a component for an Output[Dataset]: a local path and a metadata dict."""

    path: str
    metadata: dict[str, Any] = field(default_factory=dict)


def assert_usable(local_yaml: str, original: Path) -> None:
    spec = yaml.safe_load(Path(local_yaml).read_text())
    assert Path(spec["path"]).is_absolute() and spec["path"] != "/home/someone/datasets/shapes"
    assert (Path(spec["path"]) / spec["train"]).is_dir()
    assert len(list((Path(spec["path"]) / "images" / "train").iterdir())) == len(
        list((original / "images" / "train").iterdir())
    )
    assert resolve_data(local_yaml) == local_yaml  # yolokf's own dataset check passes


def test_s3_prefix_through_the_download_step(s3, dataset_dir, tmp_path):
    count = upload_folder(s3, dataset_dir, "vision/shapes")
    artifact = FakeArtifact(str(tmp_path / "artifact"))
    fetch_step(uri="s3://datasets/vision/shapes", dataset=artifact)
    expected = {"source": "s3://datasets/vision/shapes", "files": count, "kind": "downloaded", "data": "data.yaml"}
    assert artifact.metadata == expected
    local = prepare_dataset(Path(artifact.path), tmp_path / "work")
    assert_usable(local, dataset_dir)
    # the artifact itself is left as fetched (KFP may cache and share it)
    assert yaml.safe_load((Path(artifact.path) / "data.yaml").read_text())["path"] == "/home/someone/datasets/shapes"


def test_s3_tar_gz_archive_with_a_top_folder(s3, dataset_dir, tmp_path):
    s3.put_object(Bucket="datasets", Key="archives/shapes.tar.gz", Body=tar_gz(dataset_dir, "shapes-v1"))
    dest = fetch("s3://datasets/archives/shapes.tar.gz", tmp_path / "d")
    assert not (dest / ".download").exists()
    local = prepare_dataset(dest, tmp_path / "work")
    assert_usable(local, dataset_dir)
    assert yaml.safe_load(Path(local).read_text())["path"] == str((dest / "shapes-v1").resolve())


def test_gs_uses_the_s3_compatible_api(s3, s3_server, dataset_dir, tmp_path, monkeypatch):
    """gs:// goes through GCS's XML API (HMAC keys); here the same S3 server stands in for storage.googleapis.com."""
    monkeypatch.setenv("YOLOKF_GS_ENDPOINT_URL", s3_server)
    s3.put_object(Bucket="datasets", Key="shapes.zip", Body=zipped(dataset_dir))
    upload_folder(s3, dataset_dir, "gs-folder")
    for uri in ("gs://datasets/shapes.zip", "gs://datasets/gs-folder/"):
        dest = fetch(uri, tmp_path / uri.rsplit("/", 2)[-2])
        assert_usable(prepare_dataset(dest, tmp_path / "work" / dest.name), dataset_dir)


def test_https_archive(http_root, dataset_dir, tmp_path):
    root, base = http_root
    (root / "shapes.zip").write_bytes(zipped(dataset_dir))
    dest = fetch(f"{base}/shapes.zip", tmp_path / "d")
    assert_usable(prepare_dataset(dest, tmp_path / "work"), dataset_dir)


def test_ultralytics_style_relative_path_is_rewritten(tmp_path, dataset_dir):
    """A YAML one level above its data with `path: ../datasets/shapes` (relative to ultralytics' datasets_dir)."""
    mount = tmp_path / "pvc"
    shutil.copytree(dataset_dir, mount / "datasets" / "shapes")
    spec = yaml.safe_load((dataset_dir / "data.yaml").read_text())
    spec["path"] = "../datasets/shapes"
    (mount / "configs").mkdir()
    (mount / "configs" / "shapes.yaml").write_text(yaml.safe_dump(spec))
    local = prepare_dataset(mount / "configs" / "shapes.yaml", tmp_path / "work")
    assert yaml.safe_load(Path(local).read_text())["path"] == str((mount / "datasets" / "shapes").resolve())


def test_fetch_errors_say_what_to_check(s3, http_root, tmp_path):
    _, base = http_root
    cases = [
        ("s3://no-such-bucket/x.zip", "check the bucket and object key"),
        ("s3://no-such-bucket/folder", "NoSuchBucket"),
        ("s3://datasets/missing.zip", "check the bucket and object key"),
        ("s3://datasets/empty-prefix", "Nothing found under s3://datasets/empty-prefix"),
        (f"{base}/missing.zip", "HTTP 404"),
        ("http://127.0.0.1:9/shapes.zip", "Check the URL and the cluster's egress"),
    ]
    for uri, message in cases:
        with pytest.raises(DataError, match=message):
            fetch(uri, tmp_path / "d")


def test_archives_cannot_write_outside_the_dataset_folder(s3, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("../escape.txt", "x")
    s3.put_object(Bucket="datasets", Key="evil.zip", Body=buffer.getvalue())
    with pytest.raises(DataError, match="would unpack outside the dataset folder"):
        fetch("s3://datasets/evil.zip", tmp_path / "d")
    assert not (tmp_path / "escape.txt").exists()

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    s3.put_object(Bucket="datasets", Key="evil.tar", Body=buffer.getvalue())
    with pytest.raises(DataError, match=r"evil\.tar: .*link"):
        fetch("s3://datasets/evil.tar", tmp_path / "e")


def test_fetched_folder_without_a_dataset_yaml(s3, tmp_path):
    s3.put_object(Bucket="datasets", Key="notes/readme.txt", Body=b"hi")
    with pytest.raises(DataError, match=r"No dataset YAML \(data.yaml\) or train/ folder"):
        fetch_step(uri="s3://datasets/notes", dataset=FakeArtifact(str(tmp_path / "a")))


@pytest.mark.slow
def test_local_run_downloads_from_s3_then_trains_on_it(cli, s3, dataset_dir, tmp_path):
    """`yolokf run --data s3://...` with no cluster: the pipeline's download step, then training, via kfp.local."""
    s3.put_object(Bucket="datasets", Key="shapes.tar.gz", Body=tar_gz(dataset_dir, "shapes"))
    root = tmp_path / "root"
    args = ["run", "--model", "yolov8n.yaml", "--data", "s3://datasets/shapes.tar.gz", "--epochs", "1"]
    result = cli([*args, "--imgsz", "64", "--workers", "0", "--set", "plots=false", "--pipeline-root", root])
    assert result.exit_code == 0, result.output
    assert "mAP50" in result.stdout
    (weights,) = root.glob("*/yolo-train/weights")
    assert sorted(p.name for p in weights.iterdir()) == ["best.pt", "last.pt"]
    fetched = list(root.glob("*/fetch-dataset/dataset"))
    assert len(fetched) == 1 and (fetched[0] / "shapes" / "data.yaml").is_file()


def test_local_run_refuses_a_cluster_volume(cli, tmp_path):
    result = cli(["run", "--model", "yolov8n.yaml", "--data", "pvc://datasets/shapes/data.yaml"])
    assert result.exit_code == 2, result.output
    assert "is on a cluster volume; locally, pass the dataset's folder or YAML" in result.stderr


def test_a_broken_dataset_is_the_same_data_error_here_and_in_the_step(tmp_path):
    """A YAML without `names:` fails alike in a local run's check and in the step that got it downloaded."""
    (tmp_path / "images").mkdir()
    (tmp_path / "data.yaml").write_text("train: images\nval: images\n")
    message = rf"Dataset YAML {re.escape(str(tmp_path / 'data.yaml'))} has no 'names:' entry"
    with pytest.raises(DataError, match=message):
        resolve_data(str(tmp_path / "data.yaml"))
    with pytest.raises(DataError, match=message):
        prepare_dataset(tmp_path, tmp_path / "work")
