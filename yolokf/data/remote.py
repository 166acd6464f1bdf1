"""Reading a remote dataset source, inside the download step (and `yolokf fetch`): listing a bucket (obstore,
boto3 for gs://), fetching listed objects through the parallel engine (`yolokf.data.transfer`), an archive
unpacked once, an https:// file, and the sources' errors as one line each.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from yolokf.core.errors import DataError
from yolokf.data.archive import fetch_tar, is_streamed, unpack
from yolokf.data.sources import DataSource
from yolokf.data.transfer import (
    ATTEMPTS,
    PART_SUFFIX,
    Listing,
    Progress,
    RemoteObject,
    Renewing,
    TransientError,
    default_workers,
    download,
)
from yolokf.data.web import download_url

if TYPE_CHECKING:
    from obstore.store import ClientConfig, S3Config, S3Credential

GCS_ENDPOINT = "https://storage.googleapis.com"
ARCHIVE_DIR = ".download"  # where an archive lands before it is unpacked
# How long obstore may keep a role's credentials before asking for them again: under botocore's 15-minute advisory
# refresh window, so new credentials are picked up at least 5 minutes before the old ones expire.
CREDENTIALS_RECHECK = timedelta(minutes=10)
ARCHIVE_MARKER = ".yolokf-unpacked"  # which archive version is unpacked here: a second fetch moves no bytes


def s3_client(scheme: str = "s3", endpoint: str | None = None) -> Any:
    """The one boto3 S3 client: AWS, MinIO (AWS_ENDPOINT_URL) or GCS's S3-compatible XML API (HMAC keys).

    Credentials come from the environment (the Secret mapped by --data-secret) or the pod's identity;
    without any, requests go unsigned, which public buckets answer.
    """
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    session = boto3.session.Session()
    settings: dict[str, Any] = {"retries": {"max_attempts": 5, "mode": "standard"}}
    if scheme == "gs":
        # GCS's XML API rejects the checksum headers newer botocore sends by default.
        settings.update(request_checksum_calculation="when_required", response_checksum_validation="when_required")
    endpoint = endpoint or _endpoint(scheme)
    if session.get_credentials() is None:
        settings["signature_version"] = UNSIGNED
    return session.client("s3", endpoint_url=endpoint, config=Config(**settings))


def _endpoint(scheme: str) -> str | None:
    if scheme == "gs":
        return os.getenv("YOLOKF_GS_ENDPOINT_URL", GCS_ENDPOINT)
    return os.getenv("AWS_ENDPOINT_URL_S3") or os.getenv("AWS_ENDPOINT_URL") or None


def list_source(source: DataSource, endpoint: str | None = None) -> Listing:
    """What `source` holds: the archive, or every object under the prefix (keys, sizes, ETags). Raises DataError.

    S3 is listed by obstore: boto3 spends about 0.3 s of CPU parsing each page of 1,000 keys (its timestamps
    above all), which was most of a second fetch of unchanged data. GCS's XML API answers only ListObjects v1,
    which obstore does not speak, so gs:// is listed by boto3.
    """
    listing = Listing()
    prefix = f"{source.path}/" if source.path and not source.is_archive else ""
    errors = _client_errors if source.scheme == "gs" else _store_errors
    entries = _list_boto3 if source.scheme == "gs" else _list_obstore
    try:
        with errors(source):
            for key, size, etag, modified in entries(source, endpoint):
                if source.is_archive:
                    listing.add(RemoteObject(key, PurePosixPath(key).name, size, etag, modified))
                    continue
                relative = PurePosixPath(key[len(prefix) :])
                if key.endswith("/") or not key.startswith(prefix) or not relative.parts or ".." in relative.parts:
                    continue
                if relative.name.endswith(PART_SUFFIX) or relative.parts[0] == ARCHIVE_DIR:
                    continue  # names this engine keeps for itself
                listing.add(RemoteObject(key, relative.as_posix(), size, etag, modified))
    except BaseException:
        listing.close()
        raise
    if listing.files == 0:
        listing.close()
        raise DataError(
            f"Nothing found under {source.uri}; give the dataset folder (s3://BUCKET/PREFIX) or an archive (.zip)."
        )
    return listing


def _list_obstore(source: DataSource, endpoint: str | None) -> Iterator[tuple[str, int, str, float]]:
    import obstore

    store = object_store(source, endpoint)
    if source.is_archive:
        meta = store.call(lambda current: obstore.head(current, source.path))
        yield source.path, meta["size"], meta["e_tag"] or "", meta["last_modified"].timestamp()
        return
    # A listing is seconds long: credentials renewed ahead of their expiry (object_store) outlast it.
    for chunk in obstore.list(store.current, prefix=source.path or None, chunk_size=1000):
        for meta in chunk:
            yield meta["path"], meta["size"], meta["e_tag"] or "", meta["last_modified"].timestamp()


def _list_boto3(source: DataSource, endpoint: str | None) -> Iterator[tuple[str, int, str, float]]:
    client = s3_client(source.scheme, endpoint)
    if source.is_archive:
        head = client.head_object(Bucket=source.bucket, Key=source.path)
        yield source.path, head["ContentLength"], head["ETag"], head["LastModified"].timestamp()
        return
    prefix = f"{source.path}/" if source.path else ""
    for page in client.get_paginator("list_objects").paginate(Bucket=source.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield item["Key"], item["Size"], item["ETag"], item["LastModified"].timestamp()


def object_store(source: DataSource, endpoint: str | None = None) -> Renewing:
    """The obstore store of `source`'s bucket, with the endpoint and credentials `s3_client` uses, built again
    with new credentials if S3 refuses them as expired (`Renewing`)."""
    return Renewing(functools.partial(_s3_store, source, endpoint))


def _s3_store(source: DataSource, endpoint: str | None) -> Any:
    """Credentials come from boto3's chain (environment, profile, the pod's web identity or role), so both clients
    sign as the same identity; none means unsigned requests. A role's credentials expire (an hour for IRSA by
    default): obstore asks the provider again at the `expires_at` it returned (keeping them forever for None), so
    refreshable ones are given `CREDENTIALS_RECHECK`, and botocore swaps in new ones from 15 minutes before they
    expire (botocore/credentials.py, RefreshableCredentials' advisory refresh).
    """
    import boto3
    from botocore.credentials import RefreshableCredentials
    from obstore.store import S3Store

    session = boto3.session.Session()
    endpoint = endpoint or _endpoint(source.scheme)
    config: S3Config = {"region": session.region_name or "us-east-1"}
    if endpoint:
        config["endpoint"] = endpoint
    credentials = session.get_credentials()
    renewed = isinstance(credentials, RefreshableCredentials)

    def provider() -> S3Credential:
        frozen = credentials.get_frozen_credentials()
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": datetime.now(timezone.utc) + CREDENTIALS_RECHECK if renewed else None,
        }

    if credentials is None:
        config["skip_signature"] = True
    options: ClientConfig = {"allow_http": bool(endpoint and endpoint.startswith("http://")), "timeout": "300s"}
    return S3Store(
        source.bucket,
        config=config,
        client_options=options,
        retry_config={"max_retries": 3, "retry_timeout": timedelta(seconds=60)},
        credential_provider=provider if credentials is not None else None,
    )


def fetch_bucket(
    source: DataSource,
    dest: Path,
    workers: int,
    endpoint: str | None,
    on_progress: Callable[[Progress], None] | None,
) -> Progress:
    listing = list_source(source, endpoint)  # before anything is written: bad URIs and credentials leave no folder
    try:
        return fetch_listed(source, listing, dest, workers, endpoint, on_progress)
    finally:
        listing.close()


def fetch_listed(
    source: DataSource,
    listing: Listing,
    dest: Path,
    workers: int | None,
    endpoint: str | None,
    on_progress: Callable[[Progress], None] | None,
) -> Progress:
    """Fetch what `listing` (of `source`) names into `dest`, keeping what is current there; unpack an archive."""
    dest.mkdir(parents=True, exist_ok=True)
    if source.is_archive:
        return _fetch_archive(source, listing, dest, workers or default_workers(), endpoint, on_progress)
    return download(
        object_store(source, endpoint),
        listing,
        dest,
        workers=workers or default_workers(),
        on_progress=on_progress,
        describe=lambda obj, exc: _describe(source, obj, exc),
    )


def _fetch_archive(
    source: DataSource,
    listing: Listing,
    dest: Path,
    workers: int,
    endpoint: str | None,
    on_progress: Callable[[Progress], None] | None,
) -> Progress:
    """The archive unpacked into dest; a marker, written last, remembers which version is unpacked.

    A tar is unpacked while its ranges land (`yolokf.data.archive.fetch_tar`); a zip lands in dest/.download
    first (its directory is at its end), is unpacked, then removed. Without the marker, a fetch unpacks again.
    """
    (archive,) = listing
    marker = dest / ARCHIVE_MARKER
    unpacked = f"{archive.key}\t{archive.size}\t{archive.etag}\n"
    if marker.is_file() and marker.read_text() == unpacked:
        progress = Progress(1, archive.size, files_done=1, bytes_done=archive.size)
        if on_progress:
            on_progress(progress)
        return progress
    marker.unlink(missing_ok=True)
    store = object_store(source, endpoint)
    describe = functools.partial(_describe, source)
    if is_streamed(archive.relative):
        shutil.rmtree(dest / ARCHIVE_DIR, ignore_errors=True)  # a download interrupted before it was streamed
        progress = fetch_tar(store, archive, dest, workers=workers, on_progress=on_progress, describe=describe)
    else:
        progress = download(
            store, listing, dest / ARCHIVE_DIR, workers=workers, on_progress=on_progress, describe=describe
        )
        unpack(dest / ARCHIVE_DIR / archive.relative, dest)
        shutil.rmtree(dest / ARCHIVE_DIR)
    marker.write_text(unpacked)
    return progress


_HINTS = {
    "NoSuchBucket": "check the bucket name",
    "NoSuchKey": "check the object key",
    "404": "check the bucket and object key",
    "AccessDenied": "check the credentials in --data-secret and the bucket policy",
    "403": "check the credentials in --data-secret and the bucket policy",
    "401": "check the credentials in --data-secret",
    "InvalidAccessKeyId": "check the credentials in --data-secret",
    "SignatureDoesNotMatch": "check the secret key in --data-secret",
}


@contextmanager
def _client_errors(source: DataSource) -> Iterator[None]:
    """boto3's errors as one DataError line that says what to check."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        hint = _HINTS.get(code, "see the message above")
        raise DataError(f"Cannot fetch {source.uri}: {code or exc} ({error.get('Message', '')}); {hint}.") from None
    except BotoCoreError as exc:
        raise DataError(f"Cannot fetch {source.uri}: {exc}. Check --s3-endpoint-url and the network.") from None


@contextmanager
def _store_errors(source: DataSource) -> Iterator[None]:
    """obstore's errors as the same one line: the S3 error code and message of the response, when it has one."""
    from obstore.exceptions import BaseError, PermissionDeniedError, UnauthenticatedError

    try:
        yield
    except FileNotFoundError:  # obstore's NotFound (a HEAD's 404 has no body to say more)
        raise DataError(f"Cannot fetch {source.uri}: 404 (Not Found); {_HINTS['404']}.") from None
    except BaseError as exc:
        text = str(exc)
        code = re.search(r"<Code>([^<]+)</Code>", text)
        message = re.search(r"<Message>([^<]*)</Message>", text)
        status = (
            "403" if isinstance(exc, PermissionDeniedError) else "401" if isinstance(exc, UnauthenticatedError) else ""
        )
        name = code.group(1) if code else status
        if name:
            detail = message.group(1) if message else "refused"
            hint = _HINTS.get(name, "see the message above")
            raise DataError(f"Cannot fetch {source.uri}: {name} ({detail}); {hint}.") from None
        first = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
        raise DataError(f"Cannot fetch {source.uri}: {first}. Check --s3-endpoint-url and the network.") from None


def _describe(source: DataSource, obj: RemoteObject, exc: BaseException) -> str:
    """One line for an object that could not be fetched; obstore's own text runs to a debug dump, so only its
    first line is kept (it names the URL, never the credentials: SigV4 signs in headers)."""
    from obstore.exceptions import PermissionDeniedError, PreconditionError, UnauthenticatedError

    where = f"Cannot fetch {source.uri}: {obj.key}"
    if isinstance(exc, FileNotFoundError):  # obstore's NotFound
        return f"{where} was deleted after the listing; run again."
    if isinstance(exc, PreconditionError):
        return f"{where} changed while it was fetched; run again."
    if isinstance(exc, (PermissionDeniedError, UnauthenticatedError)):
        return f"{where}: access refused; check the credentials in --data-secret and the bucket policy."
    if isinstance(exc, TransientError):
        return f"{where}: {exc} after {ATTEMPTS} attempts; check --s3-endpoint-url and the network."
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return f"{where}: {first}; check --s3-endpoint-url and the network."


def fetch_http(source: DataSource, dest: Path) -> Progress:
    """An http(s):// archive downloaded (transient failures tried again, `yolokf.data.web`) and unpacked into dest."""
    name = PurePosixPath(urllib.parse.unquote(source.path)).name or "dataset"
    archive = dest / ARCHIVE_DIR / name
    archive.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    done = download_url(source.uri, archive, say=lambda line: print(line, flush=True))
    unpack(archive, dest)
    shutil.rmtree(archive.parent)
    return Progress(
        1,
        done.size,
        files_done=1,
        bytes_done=done.size,
        files_fetched=1,
        bytes_fetched=done.moved,
        retries=done.attempts - 1,
        started=started,
    )
