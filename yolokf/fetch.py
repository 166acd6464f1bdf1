"""Datasets where users keep them: object storage (s3://, gs://), HTTP(S) archives and PVCs.

`parse_data_uri` and `check_data_source` run at compile time and refuse malformed input. `fetch_step` is
what the pipeline's download step runs: it fetches into the step's `Dataset` artifact, so KFP caching skips
the download next time. `prepare_dataset` runs in the training step: it finds the dataset YAML in the
fetched (or PVC-mounted) folder and writes a copy whose `path:` is where the data really is.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from yolokf.cluster import AMBIENT_CREDENTIALS, DATA_PVC_PATH, StepOptions
from yolokf.errors import DataError, UsageError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
YAML_SUFFIXES = (".yaml", ".yml")
GCS_ENDPOINT = "https://storage.googleapis.com"


@dataclass(frozen=True)
class DataSource:
    """A parsed `--data` URI."""

    uri: str
    scheme: str  # s3, gs, http, https, pvc
    bucket: str  # bucket, host, or PVC name
    path: str  # key or prefix, URL path, or path inside the PVC

    @property
    def is_archive(self) -> bool:
        return self.path.lower().endswith(ARCHIVE_SUFFIXES)

    @property
    def fetched(self) -> bool:
        """Whether the pipeline downloads it (a PVC is mounted instead)."""
        return self.scheme != "pvc"


def parse_data_uri(uri: str) -> DataSource:
    """Split and check an s3://, gs://, http(s):// or pvc:// dataset URI; UsageError when malformed."""
    parsed = urllib.parse.urlsplit(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("s3", "gs"):
        bucket, path = parsed.netloc, parsed.path.lstrip("/")
        if not bucket or any(c in bucket for c in " /\\") or parsed.query or parsed.fragment:
            raise UsageError(f"--data {uri} is not a {scheme}:// URI; use {scheme}://BUCKET/PREFIX or .../data.zip.")
        return DataSource(uri, scheme, bucket, path.rstrip("/"))
    if scheme in ("http", "https"):
        if not parsed.netloc:
            raise UsageError(f"--data {uri} has no host; use https://HOST/path/dataset.zip.")
        return DataSource(uri, scheme, parsed.netloc, parsed.path)
    if scheme == "pvc":
        name, path = parsed.netloc, parsed.path.lstrip("/")
        if not name or not path or ".." in PurePosixPath(path).parts:
            raise UsageError(f"--data {uri} is not pvc://PVC_NAME/path/to/data.yaml.")
        if not path.lower().endswith(YAML_SUFFIXES):
            raise UsageError(
                f"--data {uri} does not name a dataset YAML; point at the data.yaml inside the PVC, "
                "such as pvc://datasets/coco128/data.yaml."
            )
        return DataSource(uri, scheme, name, path)
    raise UsageError(f"--data {uri}: unsupported scheme {scheme}://; use s3://, gs://, https:// or pvc://.")


def pvc_uri(data: str, data_pvc: str | None) -> str:
    """`--data-pvc NAME --data path/in/pvc/data.yaml` as the one form yolokf keeps: pvc://NAME/path."""
    if not data_pvc:
        return data
    if "://" in data:
        raise UsageError(f"--data-pvc {data_pvc} takes a path inside the PVC as --data, not {data}.")
    return f"pvc://{data_pvc}/{data.lstrip('/')}"


def check_data_source(data: str, options: StepOptions) -> DataSource:
    """Compile-time checks of a remote `--data` against the step options; UsageError before anything is written."""
    source = parse_data_uri(data)
    if source.scheme in ("s3", "gs") and not options.data_secret:
        raise UsageError(
            f"--data {data} needs credentials: give --data-secret NAME (a Secret with AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY), or --data-secret {AMBIENT_CREDENTIALS} when the pod has them already "
            "(IRSA, Workload Identity, a public bucket)."
        )
    if source.scheme in ("http", "https", "gs") and options.s3_endpoint_url:
        raise UsageError(f"--s3-endpoint-url applies to s3:// datasets only, not {data}.")
    return source


def pvc_local_path(data: str) -> Path:
    """Where a pvc:// dataset YAML is inside the training container."""
    return Path(DATA_PVC_PATH) / parse_data_uri(data).path


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


def find_dataset(root: Path) -> Path:
    """The dataset YAML (or classification folder) in a fetched or mounted folder.

    Looks for data.yaml, then a single YAML, then descends into a single top folder (archives often wrap one).
    """
    if root.is_file():
        return root
    folder = root
    for _ in range(3):
        if (folder / "data.yaml").is_file():
            return folder / "data.yaml"
        yamls = sorted(p for p in folder.iterdir() if p.suffix in YAML_SUFFIXES and p.is_file())
        if len(yamls) == 1:
            return yamls[0]
        if len(yamls) > 1:
            names = ", ".join(p.name for p in yamls)
            raise DataError(f"{folder} holds several YAML files ({names}); name the dataset's data.yaml.")
        if (folder / "train").is_dir():
            return folder  # classification layout: train/<class>/*.jpg
        subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))]
        if len(subdirs) != 1:
            break
        folder = subdirs[0]
    raise DataError(
        f"No dataset YAML (data.yaml) or train/ folder in the fetched data under {root}; "
        "put data.yaml at the top of the folder or archive."
    )


def localize_data_yaml(data_yaml: Path, workdir: Path) -> Path:
    """Write a copy of `data_yaml` into `workdir` whose `path:` is the folder where its images really are.

    A relative `path:` in ultralytics means "under ultralytics' datasets_dir", and an absolute one names the
    machine the YAML was written on; neither is where a fetched or mounted dataset lives.
    """
    spec = yaml.safe_load(data_yaml.read_text())
    if not isinstance(spec, dict) or "train" not in spec:
        raise DataError(f"Dataset YAML {data_yaml} has no 'train:' entry; see https://docs.ultralytics.com/datasets/")
    train = spec["train"] if isinstance(spec["train"], list) else [spec["train"]]
    given = str(spec.get("path") or "")
    here = data_yaml.parent
    candidates = [here / given] if given and not Path(given).is_absolute() else []
    if given and Path(given).is_absolute():
        candidates.append(Path(given))
    candidates += [here, here / Path(given).name] if given else [here]
    for base in candidates:
        if all((base / str(t)).exists() for t in train):
            spec["path"] = str(base.resolve())
            spec.pop("download", None)  # the data is here; never let ultralytics fetch it again
            workdir.mkdir(parents=True, exist_ok=True)
            out = workdir / data_yaml.name
            out.write_text(yaml.safe_dump(spec, sort_keys=False))
            return out
    raise DataError(
        f"Dataset YAML {data_yaml}: training images {train[0]!r} not found under {here}; "
        "keep data.yaml at the dataset root, or set path: relative to the YAML."
    )


def prepare_dataset(root: Path, workdir: Path) -> str:
    """What the training step hands ultralytics for a fetched or PVC dataset at `root`."""
    found = find_dataset(Path(root))
    if found.is_dir():
        return str(found)
    return str(localize_data_yaml(found, workdir))


def fetch_step(*, uri: str, dataset: Any) -> None:
    """Entry point of the pipeline's download component: fetch `uri` into the `dataset` artifact."""
    dest = Path(dataset.path)
    if dest.exists():  # a retried step: start clean rather than mix two downloads
        shutil.rmtree(dest)
    fetch(uri, dest)
    found = find_dataset(dest)  # fail here, not an hour later in the training step
    files = sum(1 for p in dest.rglob("*") if p.is_file())
    relative = str(found.relative_to(dest)) if found != dest else "."
    dataset.metadata.update({"source": uri, "files": files, "data": relative})
    print(f"yolokf: fetched {uri}: {files} files, dataset {relative}", flush=True)
