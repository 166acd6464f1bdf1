"""The S3 side of the fetch tests: moto's server on loopback, a fault proxy in front of it, and datasets to put.

Registered as a pytest plugin (tests/conftest.py) so that tests/test_fetch.py and tests/test_fetch_cache.py share
the fixtures. Servers are started by fixtures and stopped by pid; nothing is mocked.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import socket
import struct
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.loopback.base import Loopback
from tests.loopback.processes import start_server, stop
from yolokf.data.remote import s3_client
from yolokf.training.launch import free_port


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
def dataset_dir(tmp_path_factory) -> Path:
    """A small shapes dataset as a user would upload it: data.yaml at the top, `path:` from another machine."""
    from yolokf.data.shapes import write_dataset

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


@dataclass
class FakeArtifact:
    """What kfp hands a component for an Output[Dataset]: a local path and a metadata dict."""

    path: str
    metadata: dict[str, Any] = field(default_factory=dict)


EXPIRED_TOKEN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ExpiredToken</Code>'
    b"<Message>The provided token has expired.</Message></Error>"
)


class FaultProxy(Loopback):
    """A loopback HTTP proxy in front of the S3 server that slows, fails or cuts GETs of chosen keys.

    Everything else passes through unchanged, so the client speaks to the real server; the proxy only counts
    the object GETs (by path) and breaks the ones a test asks it to, once each.
    """

    name = "s3-fault-proxy"
    methods = ("GET", "HEAD", "PUT", "POST", "DELETE")

    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream.removeprefix("http://")
        self.gets: Counter[str] = Counter()
        self.ranges: list[str] = []
        self.fail_once: set[str] = set()  # answer 503 SlowDown once
        self.cut_once: set[str] = set()  # send the headers and half the body, then drop the connection
        self.gone: set[str] = set()  # answer 404 NoSuchKey (deleted after the listing)
        self.reset_once: set[str] = set()  # reset the connection (TCP RST) without answering
        self.delay = 0.0
        # Credentials that expire: each access key ID signs `expire_after` requests, then is refused as S3 refuses a
        # session token past its expiry (400 ExpiredToken, "The provided token has expired": the S3 API
        # reference's error-code list, https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html).
        self.expire_after: int | None = None
        self.signed: Counter[str] = Counter()  # requests signed by each access key ID
        self.expired = 0  # requests answered ExpiredToken
        self.start()

    def handle(self, request: Any) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(request.path).path)
        signer = re.search(r"Credential=([^/]+)/", request.headers.get("Authorization", ""))
        if signer and self.expire_after is not None:
            self.signed[signer[1]] += 1
            if self.signed[signer[1]] > self.expire_after:
                self.expired += 1
                if length := int(request.headers.get("Content-Length") or 0):
                    request.rfile.read(length)
                return self._reply(request, 400, EXPIRED_TOKEN, {"Content-Type": "application/xml"})
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
            if path in self.reset_once:
                self.reset_once.discard(path)
                # SO_LINGER with a zero timeout: close() sends RST, what a node's dropped NAT entry or a load
                # balancer's idle reset looks like to the client ("connection reset by peer").
                request.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                request.close_connection = True
                request.connection.close()
                return None
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
        # A HEAD's answer has no body: its Content-Length is the object's size, as S3 (and moto behind) sent it.
        length = int(response.getheader("Content-Length") or 0) if request.command == "HEAD" else len(data)
        return self._reply(request, response.status, data, passed, length)

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
        self.stop()


@pytest.fixture
def proxy(s3, s3_server, monkeypatch) -> Iterator[FaultProxy]:
    """The fault proxy in front of the S3 server, as the endpoint both the listing and the downloads use."""
    fault = FaultProxy(s3_server)
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault.url)
    yield fault
    fault.close()


class CredentialServer(Loopback):
    """The container credentials endpoint (EKS Pod Identity, ECS task roles) that botocore's ContainerProvider reads
    from AWS_CONTAINER_CREDENTIALS_FULL_URI (botocore/credentials.py, `ContainerProvider`, a loopback http URL is
    allowed): each request gets a new access key ID, as each refresh of a role's session does, valid for an hour."""

    name = "s3-credentials"
    methods = ("GET",)

    def __init__(self) -> None:
        super().__init__()
        self.issued: list[str] = []
        self.start()

    def handle(self, request: Any) -> None:
        key = f"yolokf-rotating-{len(self.issued) + 1}"
        self.issued.append(key)
        expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        body = json.dumps(
            {"AccessKeyId": key, "SecretAccessKey": f"{key}-secret", "Token": f"{key}-token", "Expiration": expiry}
        ).encode()
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)


@pytest.fixture
def rotating_credentials(proxy, monkeypatch) -> Iterator[CredentialServer]:
    """The role's credentials from the container endpoint instead of static keys; the proxy lets each sign
    `proxy.expire_after` requests."""
    server = CredentialServer()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"{server.url}/credentials")
    yield server
    server.stop()


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
