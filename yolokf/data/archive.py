"""Dataset archives: a zip or tar unpacked once it has downloaded, and a tar unpacked while it downloads.

A tar (plain, .tar.gz or .tgz) is read front to back, so its ranges are fed, in order as they land, to `tarfile`'s
stream mode: the unpack overlaps the transfer and nothing of the archive but its members is written (issue 27;
the measurements are in docs/benchmarks.md). A zip keeps its directory at its end, so it is downloaded first.
Either way members go through tarfile's "data" filter or the same checks: nothing lands outside the folder.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yolokf.core.errors import DataError
from yolokf.data import transfer
from yolokf.data.transfer import ATTEMPTS, Progress, RemoteObject, TransientError, is_transient, read_object

if TYPE_CHECKING:
    from concurrent.futures import Future

    from obstore import GetOptions

STREAMED_SUFFIXES = (".tar", ".tar.gz", ".tgz")  # unpacked while they download
TICK = 0.5  # seconds between progress reports, as the engine reports


def is_streamed(name: str) -> bool:
    """Whether an archive of this name is unpacked while it downloads (a tar, compressed or not)."""
    return name.lower().endswith(STREAMED_SUFFIXES)


def unpack(archive: Path, dest: Path) -> None:
    """Unpack a zip or tar (any compression) into `dest`, refusing members that would land outside it."""
    root = dest.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if not (root / name).resolve().is_relative_to(root):
                    raise DataError(f"{archive.name}: member {name!r} would unpack outside the dataset folder.")
            zf.extractall(root)
        return
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            _extract(tf, root, archive.name)
        return
    raise DataError(f"{archive.name} is not a zip or tar archive; give a dataset folder, .zip, .tar or .tar.gz.")


def _extract(tf: tarfile.TarFile, root: Path, name: str) -> None:
    """Every member of `tf` into `root`, one after another (a stream cannot go back), as the "data" filter allows:
    nothing outside `root`, no link pointing out of it, no device files."""
    if hasattr(tarfile, "data_filter"):
        try:
            tf.extractall(root, members=_clearing_hard_links(tf, root), filter="data")
        except tarfile.FilterError as exc:
            raise DataError(f"{name}: {exc}.") from None
        return
    for member in tf:  # Python before 3.10.12 / 3.11.4: no filters; links refused outright
        if not (root / member.name).resolve().is_relative_to(root) or member.issym() or member.islnk():
            raise DataError(f"{name}: member {member.name!r} is not a plain file in the folder.")
        tf.extract(member, root)


def _clearing_hard_links(tf: tarfile.TarFile, root: Path) -> Iterator[tarfile.TarInfo]:
    """The members of `tf`, a hard link's path cleared first (once the filter has passed it): an unpack over an
    earlier one meets the file there, os.link refuses to replace it, and tarfile's way round that, the target's
    data again, cannot go back in a stream."""
    for member in tf:
        if member.islnk():
            path = root / tarfile.data_filter(member, str(root)).name
            if path.is_symlink() or path.is_file():
                path.unlink()
        yield member


class _FetchFailed(Exception):
    """A range that could not be fetched, carried through tarfile (which handles OSError itself) to the caller."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def fetch_tar(
    store: Any,
    obj: RemoteObject,
    dest: Path,
    *,
    workers: int,
    on_progress: Callable[[Progress], None] | None = None,
    describe: Callable[[RemoteObject, BaseException], str] | None = None,
) -> Progress:
    """Fetch the tar `obj` and unpack it into `dest` as its ranges land; returns the totals. Raises DataError.

    Returns only once every byte has arrived, matched its size and (an MD5 ETag) its checksum, and every member is
    unpacked; on a failure, members already written stay and the caller must not trust them. Content that does not
    match its MD5 is fetched and unpacked again, up to ATTEMPTS times, as the engine fetches an object again; an
    archive refused or unreadable is blamed on its content only once its checksum, where there is one, matched.
    """
    if workers < 1:
        raise DataError(f"--fetch-workers {workers}: give at least 1.")
    root = dest.resolve()
    progress = Progress(1, obj.size)
    say = describe or (lambda obj, exc: f"Cannot fetch {obj.key}: {exc}")
    for attempt in range(ATTEMPTS):
        reader = RangeReader(store, obj, max(4, workers // 2), progress, on_progress)
        try:
            with reader:
                refused = _unpack_stream(reader, root, obj.relative)
                if refused is None or reader.checksummed:
                    reader.drain()  # the bytes after the tar's end marker are checked too
                matches = reader.matches()
        except _FetchFailed as failed:
            raise DataError(say(obj, failed.cause)) from None
        if matches and refused:
            raise refused
        if matches:
            break
        progress.bytes_done -= reader.counted
        progress.bytes_fetched -= reader.counted
        if attempt == ATTEMPTS - 1:
            raise DataError(say(obj, TransientError(f"{obj.key}: content does not match its ETag")))
        progress.retries += 1
    progress.files_done = progress.files_fetched = 1
    if on_progress:
        on_progress(progress)
    return progress


def _unpack_stream(reader: RangeReader, root: Path, name: str) -> DataError | None:
    """Unpack what `reader` reads into `root`; the refusal or the unreadable archive as an error, not raised."""
    try:
        with tarfile.open(fileobj=reader, mode="r|*") as tf:
            _extract(tf, root, name)
    except DataError as exc:
        return exc
    except tarfile.TarError as exc:
        return DataError(f"{name} is not a readable tar archive ({exc}); check the file.")
    return None


class RangeReader(io.RawIOBase):
    """One object's bytes in order, as a read-only file object for tarfile; closing it stops the fetching.

    PART_SIZE ranges are fetched `window` at a time ahead of the reader, each held until its turn, so memory stays
    at window + 1 ranges however far the network runs ahead of the unpacking. Each range is pinned to the listed
    version (If-Match), checked for length and tried ATTEMPTS times, as the engine tries an object; an MD5 ETag is
    checked over the bytes in order, in a thread of its own.
    """

    def __init__(
        self,
        store: Any,
        obj: RemoteObject,
        window: int,
        progress: Progress,
        on_progress: Callable[[Progress], None] | None,
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        super().__init__()
        self._store, self._obj = store, obj
        self._part = transfer.PART_SIZE
        self._starts = iter(range(0, obj.size, self._part))
        self._pool = ThreadPoolExecutor(max_workers=window, thread_name_prefix="yolokf-fetch")
        self._ahead: deque[Future[Any]] = deque()
        self._current = memoryview(b"")
        self._stop = threading.Event()  # a failure elsewhere: retries give up
        self._lock = threading.Lock()  # the counters, updated from the range threads
        self._md5 = hashlib.md5() if obj.md5 else None
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="yolokf-md5") if obj.md5 else None
        self._hashed: Future[None] | None = None
        self._progress, self._on_progress = progress, on_progress
        self._reported = time.monotonic()
        self.counted = 0  # bytes this reader added to the progress
        for _ in range(window):
            self._submit()

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)  # ranges in flight end (or give up) before we return
        if self._hasher:
            self._hasher.shutdown(wait=True)
        super().close()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        """At most `size` bytes (all of one range if negative), the next in order: of the current range, or of
        the next to land; b"" at the end. One copy, where RawIOBase's own `read` would make two."""
        if not self._current:
            if not self._ahead:
                return b""
            self._current = memoryview(self._next())
        chunk = self._current if size < 0 else self._current[:size]
        self._current = self._current[len(chunk) :]
        return bytes(chunk)

    def readinto(self, buffer: Any) -> int:
        chunk = self.read(len(memoryview(buffer)))
        memoryview(buffer).cast("B")[: len(chunk)] = chunk
        return len(chunk)

    def drain(self) -> None:
        """Wait for every range not yet read (the tar's padding, or anything after its end)."""
        self._current = memoryview(b"")
        while self._ahead:
            self._next()

    @property
    def checksummed(self) -> bool:
        """Whether the ETag is an MD5 that the bytes are checked against."""
        return self._md5 is not None

    def matches(self) -> bool:
        """Whether the bytes read match the ETag, where it is an MD5 (always true where it is not)."""
        if self._md5 is None:
            return True
        if self._hashed:
            self._hashed.result()
        return self._md5.hexdigest() == self._obj.md5

    def _submit(self) -> None:
        start = next(self._starts, None)
        if start is not None:
            self._ahead.append(self._pool.submit(self._fetch, start))

    def _next(self) -> Any:
        from concurrent.futures import wait

        future = self._ahead.popleft()
        while not wait([future], timeout=TICK).done:
            self._report()
        if (error := future.exception()) is not None:
            raise _FetchFailed(error)
        data = future.result()
        self._submit()  # the window moves on only as ranges are read: the memory bound
        if self._hasher and self._md5:
            if self._hashed:
                self._hashed.result()  # at most one range waits for the hash
            self._hashed = self._hasher.submit(self._md5.update, data)
        if time.monotonic() - self._reported >= TICK:
            self._report()
        return data

    def _report(self) -> None:
        self._reported = time.monotonic()
        if self._on_progress:
            self._on_progress(self._progress)

    def _fetch(self, start: int) -> Any:
        """One range, in a pool thread: obstore's blocking call, tried again after a transient failure."""
        key, end = self._obj.key, min(start + self._part, self._obj.size)
        options: GetOptions = {"range": (start, end), "if_match": self._obj.etag}
        for attempt in range(ATTEMPTS):
            try:
                data = read_object(self._store, key, options)
                if len(data) != end - start:
                    raise TransientError(f"{key}: got {len(data)} of {end - start} bytes at {start}")
                break
            except Exception as exc:
                if attempt == ATTEMPTS - 1 or not is_transient(exc) or self._stop.is_set():
                    raise
                with self._lock:
                    self._progress.retries += 1
                self._stop.wait(0.2 * 2**attempt)
        with self._lock:
            self._progress.bytes_done += len(data)
            self._progress.bytes_fetched += len(data)
            self.counted += len(data)
        return data
