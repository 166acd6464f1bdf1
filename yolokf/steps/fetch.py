"""The download step: datasets from object storage (s3://, gs://) and HTTP(S) archives into a `Dataset` artifact.

`fetch_step` is what the pipeline's download component runs, in every pipeline, whatever `data` was compiled
with: the kind of dataset is decided from the run's own `data` (docs/cluster.md, "What a run can change"). It
fetches remote data into the step's `Dataset` artifact, so KFP caching skips the download next time, and notes
in it what the next steps read (`yolokf.datasets.step_data`).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from yolokf.data_sources import DataSource, is_remote, parse_data_uri
from yolokf.datasets import find_dataset
from yolokf.errors import DataError, UsageError
from yolokf.step_options import AMBIENT_CREDENTIALS, DATA_PVC_PATH, NO_CREDENTIALS

GCS_ENDPOINT = "https://storage.googleapis.com"


def s3_client(scheme: str = "s3") -> Any:
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
        endpoint: str | None = os.getenv("YOLOKF_GS_ENDPOINT_URL", GCS_ENDPOINT)
        # GCS's XML API rejects the checksum headers newer botocore sends by default.
        settings.update(request_checksum_calculation="when_required", response_checksum_validation="when_required")
    else:
        endpoint = os.getenv("AWS_ENDPOINT_URL_S3") or os.getenv("AWS_ENDPOINT_URL") or None
    if session.get_credentials() is None:
        settings["signature_version"] = UNSIGNED
    return session.client("s3", endpoint_url=endpoint, config=Config(**settings))


def fetch(uri: str, dest: Path) -> Path:
    """Download `uri` into `dest` (created), unpacking archives; returns `dest`. Raises DataError."""
    source = parse_data_uri(uri)
    if not source.fetched:
        raise UsageError(f"{uri} is on a PVC: the training step mounts it, nothing to download.")
    dest.mkdir(parents=True, exist_ok=True)
    if source.scheme in ("s3", "gs"):
        _fetch_bucket(source, dest)
    else:
        _fetch_http(source, dest)
    return dest


def _fetch_bucket(source: DataSource, dest: Path) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client(source.scheme)
    try:
        if source.is_archive:
            archive = dest / ".download" / PurePosixPath(source.path).name
            archive.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(source.bucket, source.path, str(archive))
            _unpack(archive, dest)
            shutil.rmtree(archive.parent)
            return
        prefix = f"{source.path}/" if source.path else ""
        # GCS's XML API answers ListObjects (v1); S3 and MinIO both.
        method = "list_objects" if source.scheme == "gs" else "list_objects_v2"
        count = 0
        for page in client.get_paginator(method).paginate(Bucket=source.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                relative = PurePosixPath(key[len(prefix) :])
                if key.endswith("/") or not relative.parts or ".." in relative.parts:
                    continue
                target = dest.joinpath(*relative.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(source.bucket, key, str(target))
                count += 1
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        hint = {
            "NoSuchBucket": "check the bucket name",
            "NoSuchKey": "check the object key",
            "404": "check the bucket and object key",
            "AccessDenied": "check the credentials in --data-secret and the bucket policy",
            "403": "check the credentials in --data-secret and the bucket policy",
            "InvalidAccessKeyId": "check the credentials in --data-secret",
            "SignatureDoesNotMatch": "check the secret key in --data-secret",
        }.get(code, "see the message above")
        raise DataError(f"Cannot fetch {source.uri}: {code or exc} ({error.get('Message', '')}); {hint}.") from None
    except BotoCoreError as exc:
        raise DataError(f"Cannot fetch {source.uri}: {exc}. Check --s3-endpoint-url and the network.") from None
    if count == 0:
        raise DataError(
            f"Nothing found under {source.uri}; give the dataset folder (s3://BUCKET/PREFIX) or an archive (.zip)."
        )


def _fetch_http(source: DataSource, dest: Path) -> None:
    name = PurePosixPath(urllib.parse.unquote(source.path)).name or "dataset"
    archive = dest / ".download" / name
    archive.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(source.uri, headers={"User-Agent": "yolokf"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response, archive.open("wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except urllib.error.HTTPError as exc:
        raise DataError(f"Cannot fetch {source.uri}: HTTP {exc.code} {exc.reason}.") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(f"Cannot fetch {source.uri}: {reason}. Check the URL and the cluster's egress.") from None
    _unpack(archive, dest)
    shutil.rmtree(archive.parent)


def _unpack(archive: Path, dest: Path) -> None:
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
            if hasattr(tarfile, "data_filter"):
                try:
                    tf.extractall(root, filter="data")
                except tarfile.FilterError as exc:
                    raise DataError(f"{archive.name}: {exc}.") from None
            else:  # Python before 3.10.12 / 3.11.4
                for member in tf.getmembers():
                    if not (root / member.name).resolve().is_relative_to(root) or member.issym() or member.islnk():
                        raise DataError(f"{archive.name}: member {member.name!r} is not a plain file in the folder.")
                tf.extractall(root)
        return
    raise DataError(f"{archive.name} is not a zip or tar archive; give a dataset folder, .zip, .tar or .tar.gz.")


def fetch_step(*, uri: str, dataset: Any, credentials: str = AMBIENT_CREDENTIALS, data_pvc: str = "") -> None:
    """Entry point of the pipeline's download component, which every pipeline runs before its first step that
    reads data: it decides from the run's `data` (`uri`), at run time, what the next steps read.

    s3://, gs://, https:// are downloaded into the `dataset` artifact; pvc:// names a path on the PVC the pipeline
    mounts (`data_pvc`, compile-time); anything else (a built-in or ultralytics name, a path in the image) is
    passed through. `credentials` says how the pipeline was compiled: a Secret, the pod's own, or none.
    """
    from yolokf.datasets import DOWNLOADED, MOUNTED, PASSTHROUGH, write_descriptor

    dest = Path(dataset.path)
    if dest.exists():  # a retried step: start clean rather than mix two downloads
        shutil.rmtree(dest)
    if not is_remote(uri):
        if data_pvc and PurePosixPath(uri).is_relative_to(DATA_PVC_PATH):
            descriptor = write_descriptor(dest, MOUNTED, path=uri)
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
    fetch(uri, dest)
    found = find_dataset(dest)  # fail here, not an hour later in the training step
    files = sum(1 for p in dest.rglob("*") if p.is_file())
    relative = str(found.relative_to(dest)) if found != dest else "."
    descriptor = write_descriptor(dest, DOWNLOADED, data=relative)
    dataset.metadata.update({"source": uri, "files": files, **descriptor})
    print(f"yolokf: fetched {uri}: {files} files, dataset {relative}", flush=True)
