"""The dataset cache on a PVC (`--data-cache-pvc`): each version of a source fetched once, read in place.

Under the mount (`DATA_CACHE_PATH`) a source (its URI) has a folder of versions, each named by its content key,
the digest of the listing (every object's path, size and ETag, `transfer.Listing.digest`):

    <source id>/<key>/          a whole version, never written again (renamed into place when complete)
    <source id>/<key>.partial/  the version being fetched; a fetch that dies leaves it for the next to resume
    <source id>/<key>.lock      held (flock) by the one fetch filling `<key>.partial`

A new version starts from hard links to the files of the newest whole version that are current for it (same
size, Last-Modified and ETag), so only new and changed objects are downloaded. Links are safe: files are only
ever replaced by rename, never written in place. Two fetches of the same version take turns on the lock: the
second finds the version whole and downloads nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from yolokf.core.errors import DataError
from yolokf.data.remote import fetch_listed, list_source
from yolokf.data.sources import parse_data_uri
from yolokf.data.transfer import Listing, Progress, is_current

WAIT_NOTE_AFTER = 5.0  # seconds on the lock before the log says that another run is fetching the same data


@dataclass(frozen=True)
class CachedDataset:
    """A whole version in the cache: its folder, its content key, and what this fetch moved (None: nothing)."""

    path: Path
    key: str
    fetched: Progress | None


def source_id(uri: str) -> str:
    """The folder of one source's versions: a hash of its URI (bucket names and prefixes can be long)."""
    return hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]


def fetch_cached(
    uri: str,
    cache: Path,
    *,
    workers: int | None = None,
    endpoint: str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    say: Callable[[str], None] = print,
) -> CachedDataset:
    """The version of `uri` that its listing names, in the cache at `cache`, fetched if missing. Raises DataError."""

    source = parse_data_uri(uri)
    if source.scheme not in ("s3", "gs"):
        raise DataError(f"{uri}: the dataset cache keeps s3:// and gs:// data; an https:// archive is downloaded.")
    listing = list_source(source, endpoint)
    try:
        key = listing.digest
        versions = cache / source_id(uri)
        final = versions / key
        if final.is_dir():  # a whole version is never written again: no lock to read it
            return CachedDataset(final, key, None)
        versions.mkdir(parents=True, exist_ok=True)
        with _locked(versions / f"{key}.lock", say, uri):
            if final.is_dir():  # another run finished it while this one waited
                return CachedDataset(final, key, None)
            partial = versions / f"{key}.partial"
            if not partial.is_dir():
                partial.mkdir()
                if not source.is_archive:
                    _link_current(listing, _newest_version(versions, key), partial)
            progress = fetch_listed(source, listing, partial, workers, endpoint, on_progress)
            os.rename(partial, final)
            return CachedDataset(final, key, progress)
    finally:
        listing.close()


@contextlib.contextmanager
def _locked(path: Path, say: Callable[[str], None], uri: str) -> Iterator[None]:
    """An exclusive flock on `path`, waited for; the kernel (or the NFS server) drops it when its holder dies."""
    import fcntl

    with open(path, "a") as handle:
        started = time.monotonic()
        noted = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not noted and time.monotonic() - started > WAIT_NOTE_AFTER:
                    say(f"yolokf: another run is fetching {uri} into the cache; waiting for it")
                    noted = True
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _newest_version(versions: Path, key: str) -> Path | None:
    """The most recently completed other version of the same source, to link unchanged files from."""
    whole = [p for p in versions.iterdir() if p.is_dir() and p.name != key and "." not in p.name]
    return max(whole, key=lambda p: p.stat().st_mtime, default=None)


def _link_current(listing: Listing, previous: Path | None, partial: Path) -> int:
    """Hard-link into `partial` every file of `previous` that is current for the listing; returns how many."""
    if previous is None:
        return 0
    linked = 0
    for obj in listing:
        parts = obj.relative.split("/")
        old = previous.joinpath(*parts)
        if is_current(old, obj):
            new = partial.joinpath(*parts)
            new.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(old, new)
            except OSError:  # a filesystem without hard links: copy, keeping the times it is judged by
                shutil.copy2(old, new)
            linked += 1
    return linked
