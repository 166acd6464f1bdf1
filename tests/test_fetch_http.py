"""An https:// dataset archive through a flaky server (issue 24, item 12): the download step's http(s) fetch
(`yolokf.data.web`) tries a cut body, a reset or dropped connection, a stall and 503 again, resuming with Range.

The server is a loopback HTTP server of the tests' own (tests/loopback/base.py) serving an archive with a strong
ETag and byte ranges (If-Range honoured, as nginx and S3 do), after the faults a test injects, one per request.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.loopback.base import Handler, Loopback
from tests.loopback.s3 import FakeArtifact
from tests.test_fetch import zipped
from yolokf.core.errors import DataError
from yolokf.data import web
from yolokf.data.fetch import fetch, fetch_step

ARCHIVE = "/datasets/shapes.zip"


@dataclass
class Served:
    """One request: its Range and If-Range headers, the status answered (0: none) and the body bytes sent."""

    range: str | None
    if_range: str | None
    status: int
    sent: int


class FlakyFiles(Loopback):
    """Files by path; each request first takes the next injected fault, if any:

    "cut": the whole answer's headers, half the body, then the connection closed (FIN); "reset": the connection
    reset (RST) before any answer; "drop": closed (FIN) before any answer; "stall": nothing for `stall` seconds,
    then the answer; "503": Service Unavailable. `ranges=False` ignores Range, as some servers do.
    """

    name = "flaky-files"
    methods = ("GET",)

    def __init__(self, files: dict[str, bytes], *, ranges: bool = True, stall: float = 2.0):
        super().__init__()
        self.files, self.ranges, self.stall = files, ranges, stall
        self.faults: list[str] = []
        self.served: list[Served] = []
        self._lock = threading.Lock()

    @staticmethod
    def etag(body: bytes) -> str:
        return f'"{hashlib.md5(body).hexdigest()}"'

    def handle(self, http: Handler) -> None:
        record = http.read_request()
        with self._lock:
            fault = self.faults.pop(0) if self.faults else None
            body = self.files.get(record.path)
        served = Served(record.headers.get("range"), record.headers.get("if-range"), 0, 0)
        self.served.append(served)
        if fault == "reset":  # SO_LINGER 0: close() sends RST instead of FIN
            http.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if fault in ("drop", "reset"):
            return http.drop()
        if fault == "stall":
            time.sleep(self.stall)
        if fault == "503":
            served.status = 503
            http.send_response(503)
            http.send_header("Content-Length", "0")
            return http.end_headers()
        if body is None:
            served.status = 404
            return http.send_text(404, "not found")
        start = 0
        if self.ranges and served.range and served.if_range == self.etag(body):
            start = int(served.range.removeprefix("bytes=").partition("-")[0])
        part = body[start:]
        served.status = 206 if start else 200
        http.send_response(served.status)
        http.send_header("ETag", self.etag(body))
        http.send_header("Accept-Ranges", "bytes" if self.ranges else "none")
        http.send_header("Content-Length", str(len(part)))
        if start:
            http.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        http.end_headers()
        if fault == "cut":
            part = part[: len(part) // 2]
        http.wfile.write(part)
        http.wfile.flush()
        served.sent = len(part)
        if fault == "cut":
            http.close_connection = True
            http.connection.close()


@pytest.fixture
def server(dataset_dir) -> Iterator[FlakyFiles]:
    files = FlakyFiles({ARCHIVE: zipped(dataset_dir)}).start()
    yield files
    files.stop()


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch):
    monkeypatch.setattr(web, "BACKOFF", 0.0)  # the retries, without their pauses


def _images(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))


def test_a_cut_a_reset_and_a_503_are_tried_again_and_the_rest_is_resumed(server, dataset_dir, tmp_path, capsys):
    """Through the download step: three faults, then the archive whole, its first half sent once."""
    server.faults = ["cut", "503", "reset"]
    artifact = FakeArtifact(str(tmp_path / "artifact"))
    url = f"{server.url}{ARCHIVE}"
    fetch_step(uri=url, dataset=artifact)
    size = len(server.files[ARCHIVE])
    assert artifact.metadata["kind"] == "downloaded"
    assert _images(Path(artifact.path)) == _images(dataset_dir), "the archive unpacked whole"
    etag = server.etag(server.files[ARCHIVE])
    half = size // 2
    assert [(s.range, s.if_range, s.status) for s in server.served] == [
        (None, None, 200),
        (f"bytes={half}-", etag, 503),
        (f"bytes={half}-", etag, 0),
        (f"bytes={half}-", etag, 206),
    ]
    assert sum(s.sent for s in server.served) == size, "no byte sent twice"
    retries = [line for line in capsys.readouterr().out.splitlines() if "trying again" in line]
    assert retries == [
        f"yolokf: fetching {url}: the connection closed {size - half:,} bytes before the end; trying again in 0 s, "
        f"from byte {half:,} (2 of 5)",
        f"yolokf: fetching {url}: HTTP 503 Service Unavailable; trying again in 0 s, from byte {half:,} (3 of 5)",
        f"yolokf: fetching {url}: [Errno 104] Connection reset by peer; trying again in 0 s, from byte {half:,} "
        "(4 of 5)",
    ]


def test_a_dropped_connection_and_a_stall_are_tried_again(server, dataset_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(web, "TIMEOUT", 0.5)
    server.faults = ["drop", "stall"]
    progress = fetch(f"{server.url}{ARCHIVE}", tmp_path / "d", on_progress=None)
    assert _images(tmp_path / "d") == _images(dataset_dir)
    assert len(server.served) == 3 and server.served[-1].status == 200 and progress.retries == 2


def test_a_server_without_ranges_sends_it_all_again(server, dataset_dir, tmp_path):
    server.ranges = False
    server.faults = ["cut"]
    progress = fetch(f"{server.url}{ARCHIVE}", tmp_path / "d", on_progress=None)
    assert _images(tmp_path / "d") == _images(dataset_dir)
    size = len(server.files[ARCHIVE])
    assert [s.status for s in server.served] == [200, 200]
    assert progress.bytes_fetched == sum(s.sent for s in server.served) == size // 2 + size


def test_a_file_that_changed_between_attempts_comes_back_whole_not_spliced(server, dataset_dir, tmp_path):
    """If-Range: the second answer is the new version from its start (200), never its second half on the old one's
    first."""
    server.faults = ["cut"]
    original = server.files[ARCHIVE]
    target = tmp_path / "archive.zip"

    def change(seconds: float) -> None:
        server.files[ARCHIVE] = original + b"\0" * 10  # a new version: other bytes, other ETag
        assert seconds == 0

    done = web.download_url(f"{server.url}{ARCHIVE}", target, say=lambda line: None, sleep=change)
    assert target.read_bytes() == server.files[ARCHIVE] and done.attempts == 2
    assert [s.status for s in server.served] == [200, 200]


def test_what_a_retry_cannot_change_fails_at_once_and_a_lasting_fault_after_five_tries(server, tmp_path):
    with pytest.raises(DataError, match=r"^Cannot fetch .*/missing\.zip: HTTP 404 Not Found\.$"):
        fetch(f"{server.url}/missing.zip", tmp_path / "d")
    assert len(server.served) == 1 and not (tmp_path / "d").exists()
    server.faults = ["503"] * 5
    url = f"{server.url}{ARCHIVE}"
    with pytest.raises(DataError) as failed:
        fetch(url, tmp_path / "e")
    assert str(failed.value) == (
        f"Cannot fetch {url}: HTTP 503 Service Unavailable, 5 times. Check the URL and the cluster's egress."
    )
    assert len(server.served) == 6 and not (tmp_path / "e").exists()


def test_a_retry_after_is_waited_for_up_to_a_minute(server, tmp_path):
    waits: list[float] = []

    class Busy(FlakyFiles):
        def handle(self, http: Handler) -> None:
            http.read_request()
            self.served.append(Served(None, None, 429, 0))
            http.send_response(429)
            http.send_header("Retry-After", "7" if len(self.served) == 1 else "3600")
            http.send_header("Content-Length", "0")
            http.end_headers()

    busy = Busy({}).start()
    try:
        with pytest.raises(DataError, match="HTTP 429 Too Many Requests, 5 times"):
            web.download_url(f"{busy.url}/x.zip", tmp_path / "x.zip", say=lambda line: None, sleep=waits.append)
    finally:
        busy.stop()
    assert waits == [7.0, 60.0, 60.0, 60.0]
