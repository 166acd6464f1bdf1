"""Where `--data` points when it is not on this machine: object storage, HTTP(S) archives, a PVC.

Parsed once, when the job is planned (`yolokf.pipeline.job`), and refused there when malformed, so nothing is written
for bad input. The download itself runs in a step (`yolokf.data.fetch`); a PVC is mounted instead.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import PurePosixPath

from yolokf.core.errors import UsageError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
YAML_SUFFIXES = (".yaml", ".yml")
FETCHED_SCHEMES = ("s3", "gs", "http", "https")


@dataclass(frozen=True)
class DataSource:
    """A parsed remote `--data`: s3://BUCKET/KEY, gs://..., https://HOST/PATH, or a path inside a PVC."""

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
        return self.scheme in FETCHED_SCHEMES


def is_remote(data: str) -> bool:
    """Whether `data` is a URI (any scheme: ftp:// is refused by `parse_data_uri`, not taken for a folder)."""
    return "://" in data


def check_nodes_data(data: str, nodes: int) -> None:
    """Refuse, in one line, data that `nodes` training nodes (`--nodes N`, N > 1) cannot read: every node reads the
    dataset itself, and a node's pod mounts PVCs, never the download step's artifact (in KFP's object store), so
    only a dataset on a PVC (pvc://) or one a node finds on its own (a built-in) works, here as on a cluster.

    The one rule of `compile`, `run` (with --host or on this machine), the download step (a `data` edited in the
    run form, before anything is downloaded) and the launcher (issue 24).
    """
    if nodes > 1 and is_remote(data) and parse_data_uri(data).fetched:
        raise UsageError(
            f"--nodes {nodes}: every node reads the dataset itself and sees only PVCs, not a download; put {data} "
            "on a PVC and give data as pvc://PVC/path/data.yaml (compiled with --data-pvc PVC or --data pvc://...), "
            "or use a built-in dataset."
        )


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
        return pvc_source(parsed.netloc, parsed.path, uri)
    raise UsageError(f"--data {uri}: unsupported scheme {scheme}://; use s3://, gs://, https:// or pvc://.")


def pvc_source(pvc: str, path: str, given: str | None = None) -> DataSource:
    """A dataset YAML inside a PVC: `pvc://PVC/path/data.yaml`, or `--data-pvc PVC --data path/data.yaml`."""
    given = given or f"--data-pvc {pvc} --data {path}"
    path = path.lstrip("/")
    if "://" in path:
        raise UsageError(f"--data-pvc {pvc} takes a path inside the PVC as --data, not {path}.")
    if not pvc or not path or ".." in PurePosixPath(path).parts:
        raise UsageError(f"{given} is not a dataset in a PVC; use pvc://PVC_NAME/path/to/data.yaml.")
    if not path.lower().endswith(YAML_SUFFIXES):
        raise UsageError(
            f"{given} does not name a dataset YAML; point at the data.yaml inside the PVC, "
            "such as pvc://datasets/coco128/data.yaml."
        )
    return DataSource(f"pvc://{pvc}/{path}", "pvc", pvc, path)
