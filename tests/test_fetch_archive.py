"""A tar archive unpacked while its ranges land (`yolokf.data.archive`), against the real S3 server of the fetch tests.

Small ranges (PART_SIZE patched to 64 kB) give a few-hundred-kB archive a dozen of them, so members straddle
ranges and ranges wait for their turn; faults come from the loopback proxy in front of the server.
"""

from __future__ import annotations

import io
import random
import re
import socket
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.loopback.s3 import FaultProxy
from yolokf.core.errors import DataError
from yolokf.data import transfer
from yolokf.data.archive import RangeReader
from yolokf.data.fetch import fetch
from yolokf.data.remote import ARCHIVE_MARKER, list_source, object_store
from yolokf.data.sources import parse_data_uri
from yolokf.data.transfer import Progress

PART = 64 << 10


@pytest.fixture(autouse=True)
def small_ranges(monkeypatch) -> None:
    monkeypatch.setattr(transfer, "PART_SIZE", PART)


class Faults(FaultProxy):
    """The fetch tests' fault proxy with two faults of ranged GETs: every connection
    dropped once `drop_after` ranges have been answered (the network gone mid-archive), and one byte flipped in the
    answer to a chosen range."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.drop_after: int | None = None
        self.dropped = 0
        self.flip_once: set[str] = set()  # Range headers, as "bytes=0-65535"

    def handle(self, request: Any) -> None:
        ranged = request.command == "GET" and request.headers.get("Range")
        if ranged and self.drop_after is not None and len(self.ranges) >= self.drop_after:
            self.dropped += 1
            request.close_connection = True
            request.connection.shutdown(socket.SHUT_RDWR)
            return None
        return super().handle(request)

    def _reply(
        self, request: Any, status: int, data: bytes, headers: dict[str, str], length: int | None = None
    ) -> None:
        asked = request.headers.get("Range", "")
        if asked in self.flip_once and data:
            self.flip_once.discard(asked)
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        FaultProxy._reply(request, status, data, headers, length)


@pytest.fixture
def faults(s3, s3_server, monkeypatch) -> Iterator[Faults]:
    """`Faults` in front of the S3 server, as the endpoint of the listing and the downloads."""
    faults = Faults(s3_server)
    monkeypatch.setenv("AWS_ENDPOINT_URL", faults.url)
    yield faults
    faults.close()


def dataset_tar(mode: str = "w", seed: int = 0) -> bytes:
    """A dataset as a tar: folders, members smaller and larger than a range, an empty one, an executable,
    a symlink and a hard link inside the folder, and text that compresses."""
    rng = random.Random(seed)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tf:

        def add(name: str, data: bytes = b"", **fields: Any) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000 + len(name), 0o644
            for key, value in fields.items():
                setattr(info, key, value)
            tf.addfile(info, io.BytesIO(data))

        add("shapes", type=tarfile.DIRTYPE, mode=0o755)
        add("shapes/data.yaml", b"path: .\ntrain: images/train\nval: images/train\nnames: {0: square}\n")
        for i in range(24):
            add(f"shapes/images/train/{i:03d}.jpg", rng.randbytes(rng.randint(1, 3 * PART)))
            add(f"shapes/labels/train/{i:03d}.txt", f"0 0.5 0.5 {i / 30:.4f} 0.2\n".encode() * 50)
        add("shapes/empty.txt")
        add("shapes/tools/check.sh", b"#!/bin/sh\nexit 0\n", mode=0o755)
        add("shapes/latest", type=tarfile.SYMTYPE, linkname="images/train")
        add("shapes/labels/copy.txt", type=tarfile.LNKTYPE, linkname="shapes/labels/train/000.txt")
    return buffer.getvalue()


def extracted(archive: bytes, folder: Path) -> dict[str, tuple[Any, ...]]:
    """What tarfile itself unpacks from `archive` (with the "data" filter), as `tree` reads it."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        tf.extractall(folder, filter="data")
    return tree(folder)


def tree(folder: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under `folder` (but the unpack marker): a symlink's target, a file's bytes, mode and mtime."""
    found: dict[str, tuple[Any, ...]] = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        name = path.relative_to(folder).as_posix()
        if path.is_symlink():
            found[name] = ("link", str(path.readlink()))
        elif path.is_dir():
            found[name] = ("dir", stat.S_IMODE(st.st_mode))
        elif name != ARCHIVE_MARKER:
            found[name] = ("file", path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return found


def ranges_of(data: bytes) -> set[str]:
    return {f"bytes={start}-{min(start + PART, len(data)) - 1}" for start in range(0, len(data), PART)}


@pytest.mark.parametrize(("name", "mode"), [("shapes.tar", "w"), ("shapes.tar.gz", "w:gz"), ("shapes.tgz", "w:gz")])
def test_a_tar_unpacks_as_tarfile_unpacks_it_while_its_ranges_land(faults, s3, tmp_path, name, mode):
    archive = dataset_tar(mode)
    assert len(archive) > 8 * PART, "several ranges"
    s3.put_object(Bucket="datasets", Key=f"packs/{name}", Body=archive)
    seen: list[Progress] = []
    report = fetch(f"s3://datasets/packs/{name}", tmp_path / "d", workers=4, on_progress=seen.append)
    assert tree(tmp_path / "d") == extracted(archive, tmp_path / "reference")
    assert (tmp_path / "d" / "shapes" / "labels" / "copy.txt").stat().st_nlink == 2
    assert not (tmp_path / "d" / ".download").exists() and not list((tmp_path / "d").rglob("*.yolokf-part"))
    assert sorted(r.split(" ", 1)[1] for r in faults.ranges) == sorted(ranges_of(archive)), "each range once"
    assert (report.files_fetched, report.bytes_fetched, report.retries) == (1, len(archive), 0)
    assert seen[-1].files_done == 1 and seen[-1].bytes_done == len(archive)


def test_a_second_fetch_of_an_unchanged_archive_moves_nothing(faults, s3, tmp_path):
    s3.put_object(Bucket="datasets", Key="packs/again.tar", Body=dataset_tar())
    fetch("s3://datasets/packs/again.tar", tmp_path / "d", on_progress=None)
    faults.gets.clear()
    again = fetch("s3://datasets/packs/again.tar", tmp_path / "d", on_progress=None)
    assert (again.files_done, again.files_fetched, again.bytes_fetched) == (1, 0, 0)
    assert not faults.gets

    changed = dataset_tar(seed=1)
    s3.put_object(Bucket="datasets", Key="packs/again.tar", Body=changed)
    third = fetch("s3://datasets/packs/again.tar", tmp_path / "d", on_progress=None)
    assert third.bytes_fetched == len(changed)
    assert tree(tmp_path / "d") == extracted(changed, tmp_path / "reference")


def test_a_member_outside_the_folder_is_refused_and_nothing_is_trusted(s3, tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        for i in range(6):  # members before the bad one, over several ranges
            info = tarfile.TarInfo(f"shapes/{i}.bin")
            info.size = PART
            tf.addfile(info, io.BytesIO(random.Random(i).randbytes(PART)))
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    s3.put_object(Bucket="datasets", Key="packs/evil.tar", Body=buffer.getvalue())
    dest = tmp_path / "d"
    for _ in range(2):  # refused again: the first attempt left nothing that the second one trusts
        with pytest.raises(DataError) as caught:
            fetch("s3://datasets/packs/evil.tar", dest, on_progress=None)
        message = str(caught.value)
        outside = re.escape(repr(str(tmp_path / "escape.txt")))
        assert re.fullmatch(rf"evil\.tar: '\.\./escape\.txt' would be extracted to {outside}, which is outside the "
                            r"destination\.", message), message  # fmt: skip
        assert not (tmp_path / "escape.txt").exists() and not (dest / ARCHIVE_MARKER).exists()


def test_a_link_out_of_the_folder_is_refused(s3, tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    s3.put_object(Bucket="datasets", Key="packs/evil.tgz", Body=buffer.getvalue())
    with pytest.raises(DataError, match=r"^evil\.tgz: 'link' is a link to an absolute path\.$"):
        fetch("s3://datasets/packs/evil.tgz", tmp_path / "d", on_progress=None)
    assert not (tmp_path / "d" / "link").exists() and not (tmp_path / "d" / ARCHIVE_MARKER).exists()


def test_not_a_tar_is_one_line(s3, tmp_path):
    s3.put_object(Bucket="datasets", Key="packs/notes.tar", Body=b"just some notes\n" * 100)
    with pytest.raises(DataError, match=r"^notes\.tar is not a readable tar archive \(.*\); check the file\.$"):
        fetch("s3://datasets/packs/notes.tar", tmp_path / "d", on_progress=None)


def test_the_network_gone_mid_archive_leaves_no_marker_and_the_next_fetch_completes(faults, s3, tmp_path):
    archive = dataset_tar()
    s3.put_object(Bucket="datasets", Key="packs/cut.tar", Body=archive)
    dest = tmp_path / "d"
    faults.drop_after = 4
    with pytest.raises(DataError) as caught:
        fetch("s3://datasets/packs/cut.tar", dest, workers=2, on_progress=None)
    message = str(caught.value)
    assert message.startswith("Cannot fetch s3://datasets/packs/cut.tar: packs/cut.tar") and "\n" not in message
    assert message.endswith("check --s3-endpoint-url and the network."), message
    assert faults.dropped >= transfer.ATTEMPTS, "retried before giving up"
    assert (dest / "shapes" / "data.yaml").is_file(), "the unpack had begun"
    assert not (dest / ARCHIVE_MARKER).exists()

    faults.drop_after = None
    report = fetch("s3://datasets/packs/cut.tar", dest, on_progress=None)
    assert report.files_fetched == 1 and (dest / ARCHIVE_MARKER).is_file()
    assert tree(dest) == extracted(archive, tmp_path / "reference")


def test_a_cut_range_is_fetched_again_and_counted_once(faults, s3, tmp_path):
    archive = dataset_tar()
    s3.put_object(Bucket="datasets", Key="packs/cut-once.tar", Body=archive)
    faults.cut_once.add("/datasets/packs/cut-once.tar")
    report = fetch("s3://datasets/packs/cut-once.tar", tmp_path / "d", workers=4, on_progress=None)
    assert not faults.cut_once and len(faults.ranges) == len(ranges_of(archive)) + 1
    assert report.bytes_fetched == len(archive)
    assert tree(tmp_path / "d") == extracted(archive, tmp_path / "reference")


def test_content_that_does_not_match_its_md5_is_fetched_and_unpacked_again(faults, s3, tmp_path):
    archive = dataset_tar()
    s3.put_object(Bucket="datasets", Key="packs/flipped.tar", Body=archive)  # one PUT: the ETag is the MD5
    faults.flip_once.add(sorted(ranges_of(archive))[3])
    report = fetch("s3://datasets/packs/flipped.tar", tmp_path / "d", workers=4, on_progress=None)
    assert not faults.flip_once and report.retries == 1
    assert report.bytes_fetched == len(archive) and len(faults.ranges) == 2 * len(ranges_of(archive))
    assert tree(tmp_path / "d") == extracted(archive, tmp_path / "reference")


def test_ranges_wait_for_their_turn_within_the_window(faults, s3):
    """Memory stays at window + 1 ranges: while the reader holds the first range, only `window` more are asked for."""
    archive = dataset_tar()
    s3.put_object(Bucket="datasets", Key="packs/window.tar", Body=archive)
    source = parse_data_uri("s3://datasets/packs/window.tar")
    listing = list_source(source)
    (obj,) = listing
    listing.close()
    with RangeReader(object_store(source), obj, 3, Progress(1, obj.size), None) as reader:
        first = reader.read(10)
        deadline = time.monotonic() + 30
        while len(faults.ranges) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # time for a request beyond the window to show
        assert len(faults.ranges) == 4, faults.ranges  # the one being read and three ahead
        rest = b"".join(iter(lambda: reader.read(PART // 3), b""))
    assert first + rest == archive and len(faults.ranges) == len(ranges_of(archive))
