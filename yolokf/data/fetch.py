"""The download step: datasets from object storage (s3://, gs://), HTTP(S) archives and ultralytics' own
`download:` into a `Dataset` artifact.

`fetch_step` is what the pipeline's download component runs, in every pipeline, whatever `data` was compiled
with: the kind of dataset is decided from the run's own `data` (docs/cluster.md, "What a run can change"). It
fetches remote data into the step's `Dataset` artifact (or the dataset cache, `--data-cache-pvc`), and notes in
it what the next steps read (`yolokf.data.datasets.step_data`). KFP's cache is off for it: the same URI may hold
other data in the next run (yolokf.pipeline.step_options.apply_fetch_options).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from yolokf.core.errors import DataError, UsageError
from yolokf.core.mounts import AMBIENT_CREDENTIALS, DATA_CACHE_PATH, DATA_PVC_PATH, NO_CREDENTIALS, SHARED_DISK_ENV
from yolokf.data import named
from yolokf.data.cache import fetch_cached
from yolokf.data.datasets import (
    CACHED,
    DOWNLOADED,
    MOUNTED,
    PASSTHROUGH,
    dataset_hash,
    find_dataset,
    prepare_dataset,
    write_descriptor,
)
from yolokf.data.remote import fetch_bucket, fetch_http
from yolokf.data.sources import check_nodes_data, is_remote, parse_data_uri
from yolokf.data.transfer import (
    Progress,
    default_workers,
)

PROGRESS_EVERY = 10.0  # seconds between progress lines in the step's log


class _Default:
    """The step log's progress line, as `fetch`'s default reporter (None means no progress at all)."""


_STEP_LOG = _Default()


def fetch(
    uri: str,
    dest: Path,
    *,
    workers: int | None = None,
    endpoint: str | None = None,
    on_progress: Callable[[Progress], None] | None | _Default = _STEP_LOG,
) -> Progress:
    """Download `uri` into `dest` (created), unpacking archives; returns the totals. Raises DataError.

    Objects already current under `dest` are not fetched again (`yolokf.data.transfer`). Progress goes to
    `on_progress`; by default a line in the step's log every PROGRESS_EVERY seconds. `endpoint` overrides the
    S3 endpoint the environment gives (AWS_ENDPOINT_URL, as --s3-endpoint-url sets it in the pod).
    """
    source = parse_data_uri(uri)
    if not source.fetched:
        raise UsageError(f"{uri} is on a PVC: the training step mounts it, nothing to download.")
    report = log_progress(uri) if isinstance(on_progress, _Default) else on_progress
    if source.scheme in ("s3", "gs"):
        return fetch_bucket(source, dest, workers or default_workers(), endpoint, report)
    created = not dest.exists()
    try:
        return fetch_http(source, dest)
    except DataError:
        if created:  # nothing half-written for a URL that does not answer
            shutil.rmtree(dest, ignore_errors=True)
        raise


def log_progress(uri: str) -> Callable[[Progress], None]:
    """A progress line in the step's log every PROGRESS_EVERY seconds, and one at the end."""
    last = [time.monotonic()]

    def report(progress: Progress) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY or progress.files_done == progress.files_total:
            last[0] = now
            print(f"yolokf: fetching {uri}: {progress.line()}", flush=True)

    return report


def fetch_step(
    *,
    uri: str,
    dataset: Any,
    credentials: str = AMBIENT_CREDENTIALS,
    data_pvc: str = "",
    data_cache_pvc: str = "",
    nodes: int = 1,
) -> None:
    """Entry point of the pipeline's download component, which every pipeline runs before its first step that
    reads data: it decides from the run's `data` (`uri`), at run time, what the next steps read.

    s3://, gs://, https:// are downloaded into the `dataset` artifact; pvc:// names a path on the PVC the pipeline
    mounts (`data_pvc`, compile-time); a dataset ultralytics downloads itself (coco128.yaml, a YAML with
    `download:`) and that is not on disk is fetched into the artifact too (`yolokf.data.named`, issue 23), unless
    every step shares this disk (SHARED_DISK_ENV); anything else (a built-in, a path in the image) is passed through.
    `credentials` says how the pipeline was compiled: a Secret, the pod's own, or none.
    With `data_cache_pvc` (compile-time), s3:// and gs:// data go into the cache PVC the steps mount, not the
    artifact (`yolokf.data.cache`). `nodes` (compile-time, `--nodes N`): a download the nodes could not read is
    refused before it starts (`check_nodes_data`).
    """

    check_nodes_data(uri, nodes)
    dest = Path(dataset.path)
    if dest.exists():  # a retried step: start clean rather than mix two downloads
        shutil.rmtree(dest)
    if not is_remote(uri):
        if data_pvc and PurePosixPath(uri).is_relative_to(DATA_PVC_PATH):
            descriptor = write_descriptor(dest, MOUNTED, path=uri)
        elif os.getenv(SHARED_DISK_ENV) != "1" and (fetched := named.to_fetch(uri)) is not None:
            return _fetch_named(fetched, dest, dataset)
        else:
            descriptor = write_descriptor(dest, PASSTHROUGH, data=uri)
        dataset.metadata.update({"source": uri, **descriptor})
        print(f"yolokf: dataset {uri} is read where it is ({descriptor['kind']})", flush=True)
        return
    source = parse_data_uri(uri)
    if source.scheme == "pvc":
        path = str(PurePosixPath(DATA_PVC_PATH) / source.path)
        if source.bucket != data_pvc:
            mounted = f"mounts PVC {data_pvc}" if data_pvc else "mounts no dataset PVC"
            raise DataError(
                f"{uri} is on PVC {source.bucket}, but this pipeline {mounted} (volumes are fixed when it is "
                f"compiled): compile it with --data-pvc {source.bucket}, or give data as a path or URI."
            )
        descriptor = write_descriptor(dest, MOUNTED, path=path)
        dataset.metadata.update({"source": uri, **descriptor})
        print(f"yolokf: dataset {uri} is read on the mounted PVC at {path}", flush=True)
        return
    if source.scheme in ("s3", "gs") and credentials == NO_CREDENTIALS:
        raise DataError(
            f"{uri} needs object-storage credentials, and this pipeline was compiled without them: compile it with "
            f"--data-secret NAME (a Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or with --data-secret "
            f"{AMBIENT_CREDENTIALS} to use the pod's own (IRSA, Workload Identity, a public bucket)."
        )
    if data_cache_pvc and source.scheme in ("s3", "gs"):
        _fetch_into_cache(uri, dest, dataset)
        return
    fetch(uri, dest)
    found = find_dataset(dest)  # fail here, not an hour later in the training step
    files = sum(1 for p in dest.rglob("*") if p.is_file())
    relative = str(found.relative_to(dest)) if found != dest else "."
    descriptor = write_descriptor(dest, DOWNLOADED, data=relative)
    dataset.metadata.update({"source": uri, "files": files, **descriptor})
    print(f"yolokf: fetched {uri}: {files} files, dataset {relative}", flush=True)


def cached_content_hash(version: Path) -> str:
    """The registry's content hash of a cache version (`yolokf.data.datasets.dataset_hash`), read once per version and
    kept beside it, so later runs on the same data do not read 20 GB again to find it (issue 16, issue 18).

    The same images and labels hash the same from a folder, a PVC or s3://, so `--champion` still compares them;
    the cache key (the listing's digest) cannot, since a listing's ETags and times are the store's own."""
    import tempfile

    kept = version.parent / f"{version.name}.content-hash"
    if kept.is_file():
        return kept.read_text().strip()
    with tempfile.TemporaryDirectory(prefix="yolokf-hash-") as workdir:
        digest = dataset_hash(prepare_dataset(version, Path(workdir)))
    partial = kept.parent / f".{kept.name}.{os.getpid()}"
    partial.write_text(digest + "\n")
    os.replace(partial, kept)  # two runs that hash the same version at once write the same text
    return digest


def _fetch_named(found: named.NamedDataset, dest: Path, dataset: Any) -> None:
    """A dataset ultralytics downloads itself, fetched once here into the artifact, so that training, evaluation and
    export read these files and never a copy of their own on their own pod's disk (issue 23)."""
    # Into the artifact even with --data-cache-pvc: the cache keeps listed s3:// and gs:// versions (yolokf.data.cache).
    named.check_reachable(found)  # its own URL, in seconds, before ultralytics (and torch) is imported
    try:
        relative, files = named.fetch_into(found, dest)
        find_dataset(dest)  # fail here, not an hour later in the training step
        descriptor = write_descriptor(dest, DOWNLOADED, data=relative)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)  # nothing half-written
        raise
    dataset.metadata.update({"source": found.name, "files": files, **descriptor})
    print(f"yolokf: fetched {found.name} from {found.source}: {files} files", flush=True)


def _fetch_into_cache(uri: str, dest: Path, dataset: Any) -> None:
    """--data-cache-pvc: the data lands in the cache (once per version); the artifact only says where."""

    cached = fetch_cached(uri, Path(DATA_CACHE_PATH), on_progress=log_progress(uri))
    find_dataset(cached.path)  # fail here, not an hour later in the training step
    digest = cached_content_hash(cached.path)
    descriptor = write_descriptor(dest, CACHED, path=str(cached.path), key=cached.key, content_hash=digest)
    dataset.metadata.update({"source": uri, **descriptor})
    moved = cached.fetched
    how = f"fetched {moved.files_fetched} objects, {moved.files_done - moved.files_fetched} kept" if moved else "whole"
    print(f"yolokf: {uri} is read in place from the dataset cache at {cached.path} ({how})", flush=True)
