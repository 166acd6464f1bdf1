"""The download engine: many objects of one bucket in flight at once, each verified and renamed into place whole.

The engine is obstore (Rust's `object_store` behind a thin Python layer): a request costs a few microseconds of
Python, where boto3 spends about 2 ms of CPU per `get_object`, so a thread pool over boto3 is CPU-bound long before
the network is (issue 18; the measurements are in docs/benchmarks.md). Listing stays with boto3 (one request per
1,000 keys, and its error codes say what to check); this module only moves bytes.

A file is current when it has the listed size and its modification time is the object's Last-Modified (set here
when a download completes, as `aws s3 sync` compares) and, where the filesystem keeps user xattrs, the listed ETag
(stored with it), so a fetch started again skips what is already there and fetches what is missing or changed.
Objects are read into a `.yolokf-part` file beside the target, checked against the listed size (and the ETag
where it is an MD5), and renamed: a target name only ever holds a whole file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from yolokf.core.errors import DataError
from yolokf.core.mounts import DEFAULT_WORKERS, WORKERS_ENV

if TYPE_CHECKING:
    import asyncio

    from obstore import GetOptions

PART_SIZE = 8 << 20  # objects larger than this are fetched as ranges of this size, several at once
ATTEMPTS = 5  # per object, on top of obstore's own retries of a request (5xx, dropped connections)
PART_SUFFIX = ".yolokf-part"
ETAG_XATTR = "user.yolokf.etag"
_MD5 = re.compile(r"^[0-9a-f]{32}$")
T = TypeVar("T")


@dataclass(frozen=True)
class RemoteObject:
    """One listed object: its key, where it lands under the destination, and what the listing says of it."""

    key: str
    relative: str  # POSIX path under the destination folder
    size: int
    etag: str  # as listed, quotes included
    modified: float  # Last-Modified, seconds since the epoch

    @property
    def md5(self) -> str | None:
        """The content's MD5 when the ETag is one (single-part uploads); multipart ETags are not."""
        tag = self.etag.strip('"').lower()
        return tag if _MD5.match(tag) else None


class Listing:
    """A bucket listing spooled to an unnamed temporary file: the totals in memory, the objects on disk.

    Memory stays the same for 1,000 or 1,000,000 objects; `digest` hashes (path, size, ETag) of every object in
    listing order, the identity of the dataset's content.
    """

    def __init__(self) -> None:
        import tempfile  # asyncio and tempfile load with a fetch, not with every `yolokf` start

        self._file: IO[str] = tempfile.TemporaryFile("w+", encoding="utf-8", newline="\n")
        self._hash = hashlib.sha256()
        self.files = 0
        self.bytes = 0

    def add(self, obj: RemoteObject) -> None:
        line = f"{obj.key}\t{obj.relative}\t{obj.size}\t{obj.etag}\t{obj.modified!r}\n"
        self._file.write(line)
        self._hash.update(f"{obj.relative}\t{obj.size}\t{obj.etag}\n".encode())
        self.files += 1
        self.bytes += obj.size

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()

    def __iter__(self) -> Iterator[RemoteObject]:
        self._file.flush()
        self._file.seek(0)
        for line in self._file:
            key, relative, size, etag, modified = line.rstrip("\n").split("\t")
            yield RemoteObject(key, relative, int(size), etag, float(modified))

    def close(self) -> None:
        self._file.close()


@dataclass
class Progress:
    """Where a fetch stands; handed to the progress callback about twice a second and returned at the end."""

    files_total: int
    bytes_total: int
    files_done: int = 0  # fetched or already current
    bytes_done: int = 0
    files_fetched: int = 0
    bytes_fetched: int = 0  # object bytes moved over the network by this fetch
    retries: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        """Bytes a second moved by this fetch."""
        return self.bytes_fetched / self.seconds if self.seconds > 0 else 0.0

    def summary(self, uri: str, dest: Path) -> str:
        """The closing line: what was fetched, what was already there."""
        kept = self.files_done - self.files_fetched
        return (
            f"Fetched {uri} into {dest}: {self.files_total:,} objects, {self.files_fetched:,} downloaded "
            f"({_size(self.bytes_fetched)} in {self.seconds:.1f} s), {kept:,} already current."
        )

    def line(self) -> str:
        """`12,345/120,000 files, 2.1/20.0 GB, 85.3 MB/s, 3:41 left`: the step log's progress line."""
        left = self.bytes_total - self.bytes_done
        eta = _clock(left / self.rate) if self.rate > 0 and left > 0 else "0:00" if left <= 0 else "?"
        return (
            f"{self.files_done:,}/{self.files_total:,} files, {_size(self.bytes_done)}/{_size(self.bytes_total)}, "
            f"{_size(self.rate)}/s, {eta} left"
        )


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n:.1f} TB"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def default_workers() -> int:
    """--fetch-workers as the environment gives it (the download step's pod), else DEFAULT_WORKERS."""
    text = os.getenv(WORKERS_ENV, "")
    if not text:
        return DEFAULT_WORKERS
    if not text.isdigit() or int(text) < 1:
        raise DataError(f"{WORKERS_ENV}={text}: give a whole number of objects in flight, at least 1.")
    return int(text)


def is_current(target: Path, obj: RemoteObject) -> bool:
    """Whether `target` is a whole copy of `obj`: its size, and the mtime this engine set from Last-Modified.

    Compared to the millisecond the listing gives, or to the second on a filesystem that keeps only seconds.
    """
    try:
        st = target.stat()
    except OSError:
        return False
    if st.st_size != obj.size:
        return False
    listed = _millis(obj.modified)
    if st.st_mtime_ns % 1_000_000_000 == 0:
        same_time = st.st_mtime_ns // 1_000_000_000 == listed // 1000
    else:
        same_time = st.st_mtime_ns // 1_000_000 == listed
    if not same_time:
        return False
    try:  # an object rewritten within the same second at the same size: only the ETag tells
        return os.getxattr(target, ETAG_XATTR) == obj.etag.encode()
    except OSError:  # no xattrs on this filesystem (some NFS), or written before: size and time decide
        return True


def _millis(seconds: float) -> int:
    return round(seconds * 1000)


class TransientError(Exception):
    """A download that may succeed when tried again: a short read, a checksum mismatch, a dropped connection."""


def download(
    store: Any,
    listing: Listing,
    dest: Path,
    *,
    workers: int = DEFAULT_WORKERS,
    on_progress: Callable[[Progress], None] | None = None,
    describe: Callable[[RemoteObject, BaseException], str] | None = None,
) -> Progress:
    """Fetch every object of `listing` that is not current under `dest`, `workers` at a time; returns the totals.

    `store` is the listed bucket's obstore store (`Renewing`). `describe` turns a final failure into the one-line
    message of the DataError raised (the caller knows the URI and which flags to check).
    """
    if workers < 1:
        raise DataError(f"--fetch-workers {workers}: give at least 1.")
    import asyncio

    progress = Progress(listing.files, listing.bytes)
    return asyncio.run(_download(store, listing, dest, workers, progress, on_progress, describe))


async def _download(
    store: Any,
    listing: Listing,
    dest: Path,
    workers: int,
    progress: Progress,
    on_progress: Callable[[Progress], None] | None,
    describe: Callable[[RemoteObject, BaseException], str] | None,
) -> Progress:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    pending = iter(listing)
    in_flight = max(4, workers // 2)
    ranges = asyncio.Semaphore(in_flight)  # ranges of large objects in flight, all objects together
    # Every request is obstore's blocking call in a thread of this pool (`read_object`): one per worker, one per range.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=workers + in_flight, thread_name_prefix="yolokf-fetch")
    )

    async def worker() -> None:
        for obj in pending:
            target = dest.joinpath(*obj.relative.split("/"))
            if not is_current(target, obj):
                try:
                    await _fetch_object(store, obj, target, ranges, progress)
                except DataError:
                    raise
                except Exception as exc:
                    message = describe(obj, exc) if describe else f"Cannot fetch {obj.key}: {exc}"
                    raise DataError(message) from None
            else:
                progress.bytes_done += obj.size
            progress.files_done += 1

    tasks = [asyncio.ensure_future(worker()) for _ in range(workers)]
    ticker = asyncio.ensure_future(_tick(progress, on_progress)) if on_progress else None
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # the first failure, raised here
    finally:
        for task in [*tasks, *([ticker] if ticker else [])]:
            task.cancel()
        await asyncio.gather(*tasks, *([ticker] if ticker else []), return_exceptions=True)
    if on_progress:
        on_progress(progress)
    return progress


async def _tick(progress: Progress, on_progress: Callable[[Progress], None]) -> None:
    import asyncio

    while True:
        await asyncio.sleep(0.5)
        on_progress(progress)


async def _fetch_object(
    store: Any, obj: RemoteObject, target: Path, ranges: asyncio.Semaphore, progress: Progress
) -> None:
    import asyncio

    part = target.with_name(target.name + PART_SUFFIX)
    target.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(ATTEMPTS):
        counted = [0]
        try:
            if obj.size > PART_SIZE:
                await _fetch_ranges(store, obj, part, ranges, progress, counted)
            else:
                await _fetch_whole(store, obj, part, progress, counted)
            break
        except Exception as exc:
            progress.bytes_done -= counted[0]
            progress.bytes_fetched -= counted[0]
            if attempt == ATTEMPTS - 1 or not is_transient(exc):
                part.unlink(missing_ok=True)
                raise
            progress.retries += 1
            await asyncio.sleep(0.2 * 2**attempt)
    with contextlib.suppress(OSError):  # a filesystem without user xattrs keeps size and time only
        os.setxattr(part, ETAG_XATTR, obj.etag.encode())
    stamp = _millis(obj.modified) * 1_000_000
    os.utime(part, ns=(stamp, stamp))
    os.replace(part, target)
    progress.files_fetched += 1


def is_transient(exc: BaseException) -> bool:
    """Retry short reads, checksum mismatches and network errors; not a missing object or refused credentials."""
    from obstore.exceptions import PermissionDeniedError, PreconditionError, UnauthenticatedError

    # obstore raises the built-in FileNotFoundError for a missing object
    refused = (FileNotFoundError, PermissionDeniedError, UnauthenticatedError, PreconditionError)
    return not isinstance(exc, refused)


def _count(progress: Progress, counted: list[int], n: int) -> None:
    progress.bytes_done += n
    progress.bytes_fetched += n
    counted[0] += n


def is_expired(exc: BaseException) -> bool:
    """S3 refused the request's credentials as expired (400 ExpiredToken; TokenRefreshRequired on older endpoints)."""
    text = str(exc)
    return "ExpiredToken" in text or "TokenRefreshRequired" in text


class Renewing:
    """An obstore store that is built again, with new credentials, when S3 refuses its credentials as expired.

    obstore keeps a provider's credentials until the `expires_at` it was given (yolokf.data.remote renews them
    ahead of that); credentials refused earlier (revoked, a skewed clock, a role's session cut short) would be
    refused again until then, so the request that met ExpiredToken is sent once more from a store built anew.
    """

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self.current = build()
        self.renewals = 0

    def call(self, request: Callable[[Any], T]) -> T:
        """`request(store)`, sent again from a new store if the credentials it was signed with had expired."""
        store = self.current
        try:
            return request(store)
        except Exception as exc:
            if not is_expired(exc):
                raise
            with self._lock:  # the first worker to meet the expiry renews; the others use its new store
                if self.current is store:
                    self.current = self._build()
                    self.renewals += 1
            return request(self.current)


def read_object(store: Renewing, key: str, options: GetOptions | None = None) -> Any:
    """One object (or range) as bytes, with obstore's blocking call, which releases the GIL while it waits.

    Not obstore's `get_async`: its futures are completed from tokio threads that attach to Python, and one still
    attaching when the interpreter finalizes aborts the process (SIGABRT) after the step has succeeded; measured
    here, 9 of 40 short processes (PyO3/pyo3-async-runtimes#40). The blocking calls never call back into Python.
    """
    import obstore

    return store.call(lambda current: obstore.get(current, key, options=options).bytes())


async def _fetch_whole(store: Any, obj: RemoteObject, part: Path, progress: Progress, counted: list[int]) -> None:
    import asyncio

    data = await asyncio.to_thread(read_object, store, obj.key)
    if len(data) != obj.size:
        raise TransientError(f"{obj.key}: got {len(data)} of {obj.size} bytes")
    expected = obj.md5
    if expected and hashlib.md5(memoryview(data)).hexdigest() != expected:
        raise TransientError(f"{obj.key}: content does not match its ETag")
    with open(part, "wb") as out:
        out.write(memoryview(data))
    _count(progress, counted, len(data))


async def _fetch_ranges(
    store: Any, obj: RemoteObject, part: Path, ranges: asyncio.Semaphore, progress: Progress, counted: list[int]
) -> None:
    """A large object as PART_SIZE ranges written in place; If-Match keeps every range to the listed version."""
    import asyncio

    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, obj.size)

        async def fetch_range(start: int) -> None:
            end = min(start + PART_SIZE, obj.size)
            async with ranges:
                options: GetOptions = {"range": (start, end), "if_match": obj.etag}
                data = await asyncio.to_thread(read_object, store, obj.key, options)
                if len(data) != end - start:
                    raise TransientError(f"{obj.key}: got {len(data)} of {end - start} bytes at {start}")
                os.pwrite(fd, memoryview(data), start)
            _count(progress, counted, len(data))

        tasks = [asyncio.ensure_future(fetch_range(start)) for start in range(0, obj.size, PART_SIZE)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        os.close(fd)
    expected = obj.md5
    if expected and await asyncio.to_thread(_file_md5, part) != expected:
        raise TransientError(f"{obj.key}: content does not match its ETag")


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
