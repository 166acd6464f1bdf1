"""Datasets from object storage and HTTP, fetched by the same code the download step runs.

A real S3-compatible server (moto's server mode) and a real HTTP server run on loopback, started by
fixtures and stopped by pid. Nothing is mocked.
"""

from __future__ import annotations

import io
import os
import random
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
from yolokf.steps.transfer import PART_SIZE


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
    dest = tmp_path / "d"
    fetch("s3://datasets/archives/shapes.tar.gz", dest)
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
        dest = tmp_path / uri.rsplit("/", 2)[-2]
        fetch(uri, dest)
        assert_usable(prepare_dataset(dest, tmp_path / "work" / dest.name), dataset_dir)


def test_https_archive(http_root, dataset_dir, tmp_path):
    root, base = http_root
    (root / "shapes.zip").write_bytes(zipped(dataset_dir))
    dest = tmp_path / "d"
    fetch(f"{base}/shapes.zip", dest)
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


class FaultProxy:
    """A loopback HTTP proxy in front of the S3 server that slows, fails or cuts GETs of chosen keys.

    Everything else passes through unchanged, so the client speaks to the real server; the proxy only counts
    the object GETs (by path) and breaks the ones a test asks it to, once each.
    """

    def __init__(self, upstream: str) -> None:
        import http.server
        import threading
        from collections import Counter

        self.upstream = upstream.removeprefix("http://")
        self.gets: Counter[str] = Counter()
        self.ranges: list[str] = []
        self.fail_once: set[str] = set()  # answer 503 SlowDown once
        self.cut_once: set[str] = set()  # send the headers and half the body, then drop the connection
        self.gone: set[str] = set()  # answer 404 NoSuchKey (deleted after the listing)
        self.delay = 0.0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy.handle(self)

            do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, request: Any) -> None:
        import http.client
        import urllib.parse

        path = urllib.parse.unquote(urllib.parse.urlsplit(request.path).path)
        is_object_get = request.command == "GET" and "?" not in request.path
        if is_object_get:
            self.gets[path] += 1
            if request.headers.get("Range"):
                self.ranges.append(f"{path} {request.headers['Range']}")
            time.sleep(self.delay)
            if path in self.fail_once:
                self.fail_once.discard(path)
                return self._reply(request, 503, b"<Error><Code>SlowDown</Code></Error>", {})
            if path in self.gone:
                return self._reply(request, 404, b"<Error><Code>NoSuchKey</Code></Error>", {})
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection(self.upstream, timeout=60)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("connection", "keep-alive")}
        upstream.request(request.command, request.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        passed = {
            k: v
            for k, v in response.getheaders()
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server")
        }
        upstream.close()
        if is_object_get and path in self.cut_once:
            self.cut_once.discard(path)
            request.send_response(response.status)
            for k, v in passed.items():
                request.send_header(k, v)
            request.send_header("Content-Length", str(len(data)))
            request.end_headers()
            request.wfile.write(data[: len(data) // 2])
            request.wfile.flush()
            request.close_connection = True
            request.connection.shutdown(socket.SHUT_RDWR)
            return None
        return self._reply(request, response.status, data if request.command != "HEAD" else b"", passed, len(data))

    @staticmethod
    def _reply(request: Any, status: int, data: bytes, headers: dict[str, str], length: int | None = None) -> None:
        request.send_response(status)
        for k, v in headers.items():
            request.send_header(k, v)
        request.send_header("Content-Length", str(len(data) if length is None else length))
        request.end_headers()
        if data:
            request.wfile.write(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(s3, s3_server, monkeypatch) -> Iterator[FaultProxy]:
    """The fault proxy in front of the S3 server, as the endpoint both the listing and the downloads use."""
    fault = FaultProxy(s3_server)
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault.url)
    yield fault
    fault.close()


def upload_many(client, prefix: str, count: int = 300) -> dict[str, bytes]:
    """`count` small objects of varied sizes in a few folders, as a YOLO dataset's images and labels are."""
    rng = random.Random(count)
    objects = {}
    for i in range(count):
        folder = ("images", "labels")[i % 2]
        body = rng.randbytes(rng.randint(0, 4000))
        objects[f"{folder}/train/{i:04d}.{'jpg' if folder == 'images' else 'txt'}"] = body
        client.put_object(Bucket="datasets", Key=f"{prefix}/{folder}/train/{i:04d}.{folder[:3]}", Body=body)
    return {k.replace(".jpg", ".ima").replace(".txt", ".lab"): v for k, v in objects.items()}


def local_files(dest: Path) -> dict[str, bytes]:
    return {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}


def test_parallel_fetch_is_complete_and_exact(proxy, s3, tmp_path):
    objects = upload_many(s3, "many")
    big = random.Random(1).randbytes(2 * PART_SIZE + 12345)  # three ranges
    s3.put_object(Bucket="datasets", Key="many/archive.bin", Body=big)
    seen: list[int] = []
    report = fetch("s3://datasets/many", tmp_path / "d", workers=16, on_progress=lambda p: seen.append(p.files_done))
    assert local_files(tmp_path / "d") == {**objects, "archive.bin": big}
    assert (report.files_total, report.files_fetched) == (301, 301)
    assert report.bytes_fetched == report.bytes_total == sum(map(len, objects.values())) + len(big)
    assert seen == sorted(seen) and seen[-1] == 301  # the last report is the end
    assert {r.split(" ", 1)[1] for r in proxy.ranges} == {
        f"bytes={start}-{min(start + PART_SIZE, len(big)) - 1}" for start in (0, PART_SIZE, 2 * PART_SIZE)
    }
    assert len(proxy.gets) == 301 and max(proxy.gets.values()) <= 3  # one GET each, three for the ranged one


def test_a_second_fetch_moves_nothing_and_a_changed_object_is_fetched_again(proxy, s3, tmp_path):
    objects = upload_many(s3, "again", count=200)
    dest = tmp_path / "d"
    fetch("s3://datasets/again", dest, on_progress=None)
    proxy.gets.clear()
    second = fetch("s3://datasets/again", dest, on_progress=None)
    assert (second.files_done, second.files_fetched, second.bytes_fetched) == (200, 0, 0)
    assert not proxy.gets

    key = next(k for k, v in objects.items() if len(v) > 10)
    changed = bytes(b ^ 0xFF for b in objects[key])  # same size, same second: only the ETag differs
    s3.put_object(Bucket="datasets", Key=f"again/{key}", Body=changed)
    third = fetch("s3://datasets/again", dest, on_progress=None)
    assert (third.files_fetched, third.bytes_fetched) == (1, len(changed))
    assert list(proxy.gets) == [f"/datasets/again/{key}"]
    assert local_files(dest) == {**objects, key: changed}


def test_transient_errors_and_short_reads_are_retried(proxy, s3, tmp_path):
    objects = upload_many(s3, "flaky", count=100)
    big = random.Random(2).randbytes(PART_SIZE + 1000)
    s3.put_object(Bucket="datasets", Key="flaky/big.bin", Body=big)
    keys = sorted(k for k, v in objects.items() if len(v) > 100)
    proxy.fail_once |= {f"/datasets/flaky/{k}" for k in keys[:3]}
    proxy.cut_once |= {f"/datasets/flaky/{k}" for k in keys[3:6]} | {"/datasets/flaky/big.bin"}
    report = fetch("s3://datasets/flaky", tmp_path / "d", workers=8, on_progress=None)
    assert local_files(tmp_path / "d") == {**objects, "big.bin": big}
    assert not proxy.fail_once and not proxy.cut_once  # every fault was served
    assert all(proxy.gets[f"/datasets/flaky/{k}"] == 2 for k in keys[:6])
    assert report.bytes_fetched == report.bytes_total  # a retried object counts once


def test_an_interrupted_fetch_resumes_without_fetching_whole_files_again(proxy, s3, tmp_path):
    objects = upload_many(s3, "resume", count=300)
    dest = tmp_path / "d"
    proxy.delay = 0.02
    cmd = [sys.executable, "-m", "yolokf", "fetch", "s3://datasets/resume", "--out", str(dest), "--fetch-workers", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(1 for _ in dest.rglob("*.???")) < 60:
        time.sleep(0.05)
    proc.kill()  # as a pod is killed: no clean-up runs
    proc.wait()
    whole = {p.relative_to(dest).as_posix(): p.stat().st_ino for p in dest.rglob("*") if p.suffix in (".ima", ".lab")}
    assert 60 <= len(whole) < 300, len(whole)
    assert all((dest / k).read_bytes() == objects[k] for k in whole)  # a final name only ever holds a whole file

    proxy.delay, proxy.gets = 0.0, type(proxy.gets)()
    report = fetch("s3://datasets/resume", dest, on_progress=None)
    assert report.files_fetched == 300 - len(whole)
    assert not any(proxy.gets[f"/datasets/resume/{k}"] for k in whole)
    assert all((dest / k).stat().st_ino == inode for k, inode in whole.items())
    assert local_files(dest) == objects  # no part files left behind


def test_download_failures_are_one_line(proxy, s3, tmp_path, capsys):
    objects = upload_many(s3, "gone", count=20)
    key = sorted(objects)[5]
    proxy.gone.add(f"/datasets/gone/{key}")
    with pytest.raises(DataError) as caught:
        fetch("s3://datasets/gone", tmp_path / "d", on_progress=None)
    message = str(caught.value)
    assert message == f"Cannot fetch s3://datasets/gone: gone/{key} was deleted after the listing; run again."
    assert not (tmp_path / "d" / key).exists() and not list((tmp_path / "d").rglob("*.yolokf-part"))


def test_refused_credentials_are_one_line_without_the_secret(tmp_path, cli):
    """moto with authentication on: an unknown key is refused as AWS refuses it."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    log = (tmp_path / "moto.log").open("wb")
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        secret = "wJalrXUtnFEMI-not-a-real-secret"
        result = cli(
            ["fetch", "s3://datasets/shapes", "--out", tmp_path / "d", "--s3-endpoint-url", f"http://127.0.0.1:{port}"],
            env={
                "AWS_ACCESS_KEY_ID": "AKIAUNKNOWN",
                "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_DEFAULT_REGION": "us-east-1",
            },
        )
    finally:
        stop(proc)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        "Error: Cannot fetch s3://datasets/shapes: InvalidAccessKeyId (The AWS Access Key Id you provided does not "
        "exist in our records.); check the credentials in --data-secret."
    ]
    assert secret not in result.output and not (tmp_path / "d").exists()


def test_fetch_command_and_the_step_log(s3, cli, tmp_path, capsys, monkeypatch):
    objects = upload_many(s3, "cli", count=50)
    first = cli(["fetch", "s3://datasets/cli", "--out", tmp_path / "d", "--fetch-workers", "3"])
    assert first.exit_code == 0, first.output
    assert re.fullmatch(
        rf"Fetched s3://datasets/cli into {re.escape(str(tmp_path / 'd'))}: 50 objects, 50 downloaded "
        r"\([\d.]+ kB in [\d.]+ s\), 0 already current\.\n",
        first.stdout,
    )
    second = cli(["fetch", "s3://datasets/cli", "--out", tmp_path / "d"])
    assert "50 objects, 0 downloaded (0 B in" in second.stdout and "50 already current" in second.stdout
    assert local_files(tmp_path / "d") == objects

    fetch("s3://datasets/cli", tmp_path / "step")  # the download step's default: progress lines in its log
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("yolokf: fetching s3://datasets/cli: 50/50 files, ")
    assert "yolokf-test-secret" not in "\n".join(lines)
