"""ultralytics' own datasets: a name it ships (coco128.yaml, in its cfg/datasets) or any dataset YAML with a
`download:` entry, which ultralytics fetches itself when the images are not on disk.

The one resolver of such a name, for a run on this machine (`yolokf.data.datasets.resolve_data`) and for the
download step (`yolokf.data.fetch.fetch_step`, issue 23): finding the YAML, saying whether its images are on disk,
probing its own `download:` URL (a cluster often reaches a mirror and not the internet, so a general internet
check says nothing), and fetching it with ultralytics' own download code into a folder, the step's artifact.
"""

from __future__ import annotations

import base64
import http.client
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from yolokf.core import offline, ultralytics_cfg
from yolokf.core.errors import DataError
from yolokf.data.sources import YAML_SUFFIXES

PROBE_TIMEOUT = 4.0  # seconds for the connection and for the answer: a refusal comes in the step's first seconds
DATA_YAML = "data.yaml"  # the fetched dataset's YAML in the folder, the name `find_dataset` looks for first
# check_det_dataset's own rule (ultralytics/data/utils.py, ~line 821): an http(s) URL of one of these archives is
# downloaded and unpacked, any other `download:` is run as a Python script.
_ARCHIVES = (".zip", ".tar", ".gz", ".tgz", ".xz", ".bz2", ".txz", ".tbz2")
_URL = re.compile(r"https?://[^\s'\"{}<>\\]+")


@dataclass(frozen=True)
class NamedDataset:
    """A dataset YAML in ultralytics' format: a name it ships, or a file with a `download:` entry."""

    name: str  # as the run gave it: coco128.yaml, or the YAML's path
    yaml: Path
    spec: dict[str, Any]

    @property
    def download(self) -> str:
        return str(self.spec.get("download") or "").strip()

    @property
    def archive(self) -> bool:
        """Whether `download:` is an archive's URL rather than a script."""
        return self.download.lower().startswith("http") and public_url(self.download).lower().endswith(_ARCHIVES)

    @property
    def url(self) -> str | None:
        """What the data comes from: the archive's URL, or a script's first http(s) URL (None: it names none)."""
        if self.archive:
            return self.download
        found = _URL.search(self.download)
        return found[0] if found else None

    @property
    def source(self) -> str:
        """Where it comes from, as messages name it: the URL without credentials (`public_url`)."""
        return public_url(self.url) if self.url else "its download: script"

    def on_disk(self) -> bool:
        """Whether its train and val images are here: where ultralytics reads `path:` (as given, or under its
        datasets_dir), or next to the YAML."""
        given = str(self.spec.get("path") or "")
        bases = [self.yaml.parent / given]
        if given:
            bases.append(Path(given))
            datasets_dir = offline.ultralytics_settings().get("datasets_dir")
            if datasets_dir:
                bases.append(Path(datasets_dir) / given)
        entries = [str(e) for split in ("train", "val") for e in _listed(self.spec.get(split))]
        return any(all((base / entry).exists() for entry in entries) for base in bases)


def shipped_yaml(name: str) -> Path | None:
    """ultralytics' own dataset YAML called `name` (coco128.yaml), in the installed package's cfg/datasets."""
    package = ultralytics_cfg.installed_package_dir()
    if package is None or not name.endswith(YAML_SUFFIXES) or "/" in name:
        return None
    path = package / "cfg" / "datasets" / name
    return path if path.is_file() else None


def named_dataset(data: str) -> NamedDataset | None:
    """`data` as ultralytics' own dataset: a name it ships (with or without `download:`), or a dataset YAML file
    with a `download:` entry. None for anything else, an unreadable YAML too (the steps that read it say why)."""
    path = Path(data).expanduser()
    given = path.suffix in YAML_SUFFIXES and path.is_file()
    found = path if given else shipped_yaml(data)
    if found is None:
        return None
    try:
        spec = yaml.safe_load(found.read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(spec, dict) or (given and not spec.get("download")):
        return None
    return NamedDataset(data, found, spec)


def to_fetch(data: str) -> NamedDataset | None:
    """The dataset the download step fetches for `data`: one ultralytics would download, not on disk here."""
    found = named_dataset(data)
    return found if found is not None and found.download and not found.on_disk() else None


def check_reachable(found: NamedDataset, timeout: float = PROBE_TIMEOUT) -> None:
    """Raise a DataError (one line: the dataset, its URL, what happened, what to use instead) unless its own URL
    answers within `timeout` seconds. An archive must answer 2xx or 3xx; a URL read from a script may be a base or a
    template ({split}), so any HTTP answer will do there."""
    url = found.url
    if url is None:
        return  # a script that names no URL: ultralytics' own error says what failed
    problem = probe(url, status_matters=found.archive, timeout=timeout)
    if problem is not None:
        raise DataError(refusal(found, problem))


def refusal(found: NamedDataset, problem: str) -> str:
    """The one line a download step that cannot fetch `found` fails with."""
    stem = Path(found.name).stem
    datasets_dir = offline.ultralytics_settings().get("datasets_dir")
    baked = f" ({Path(datasets_dir) / str(found.spec.get('path') or stem)})" if datasets_dir else ""
    return (
        f"Cannot fetch dataset {found.name} from {found.source}: {problem}. Give it as --data "
        f"s3://BUCKET/{stem}.zip or pvc://PVC/{stem}/data.yaml, or use an --image with it under ultralytics' "
        f"datasets_dir{baked}."
    )


def probe(url: str, *, status_matters: bool = True, timeout: float = PROBE_TIMEOUT) -> str | None:
    """What stops `url` from being fetched, in a few words ("connection refused", "HTTP 404 Not Found"), or None when
    it answers: one HEAD request (redirects followed), `timeout` seconds for the connection and for the answer."""
    parts = urllib.parse.urlsplit(url)
    request = urllib.request.Request(
        urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])),
        method="HEAD",
        headers={"User-Agent": "yolokf"},
    )
    if parts.username is not None:  # https://USER:PASSWORD@mirror/...: sent as requests sends it, not on redirects
        user = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        request.add_unredirected_header("Authorization", "Basic " + base64.b64encode(user.encode()).decode())
    try:
        with urllib.request.build_opener(_KeepHead).open(request, timeout=timeout):
            return None
    except urllib.error.HTTPError as exc:
        if not status_matters or exc.code in (405, 501):  # 405, 501: the server answers, without HEAD
            return None
        return f"HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return f"host {parts.hostname} not found ({cause.strerror})"
        if isinstance(cause, TimeoutError):
            return f"no answer in {timeout:g} s"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"certificate not trusted ({cause.verify_message})"
        return str(cause) or type(cause).__name__


class _KeepHead(urllib.request.HTTPRedirectHandler):
    """Redirects a HEAD as a HEAD (urllib makes it a GET, which would start the whole download)."""

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.method = req.get_method()
        return new


def public_url(url: str) -> str:
    """`url` without what may be a credential: user and password, query string (as ultralytics' clean_url)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def fetch_into(found: NamedDataset, folder: Path) -> tuple[str, int]:
    """Download `found` with ultralytics' own code into `folder`, then write its YAML there, DATA_YAML with `path:`
    relative to `folder` and no `download:`. Returns (that YAML's name, files in `folder`).

    What `check_det_dataset` does with `download:` (ultralytics/data/utils.py, 8.4, lines ~817-828), aimed at
    `folder` rather than ultralytics' datasets_dir (this machine's, shared with other runs): an archive's URL goes to
    `safe_download(url, dir=folder)`, which unpacks it there; a script runs through `check_det_dataset` itself, on a
    copy of the YAML whose `path:` is under `folder` (the scripts download to `yaml["path"]`). Raises a DataError in
    one line; what it leaves in `folder` on failure is the caller's to remove."""
    # Imported on use: ultralytics imports torch, and a refusal (check_reachable) comes before it.
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.utils import USER_CONFIG_DIR
    from ultralytics.utils.downloads import safe_download

    offline.place_fonts(Path(USER_CONFIG_DIR))  # else check_det_dataset's check_font downloads Arial.ttf
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    given = str(found.spec.get("path") or "")
    root = folder / Path(given).name if given else folder  # `path: coco128`: the archive's one top folder
    spec = {key: value for key, value in found.spec.items() if key != "download"}
    try:
        if found.archive:
            safe_download(url=found.download, dir=folder, delete=True)
        else:
            staged = folder / f".{DATA_YAML}"
            staged.write_text(yaml.safe_dump({**spec, "path": str(root), "download": found.download}, sort_keys=False))
            check_det_dataset(str(staged), autodownload=True)
            staged.unlink()
    except Exception as exc:  # ultralytics' ConnectionError, or whatever a download script raises
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"Cannot fetch dataset {found.name} from {found.source}: {first}") from None
    images = [root / str(entry) for split in ("train", "val") for entry in _listed(spec.get(split))]
    if not all(image.exists() for image in images):
        raise DataError(
            f"Dataset {found.name}: its download: ran, but the images are not where its path: says ({root}); "
            "give the data as --data s3://... or pvc://... instead."
        )
    spec["path"] = root.relative_to(folder).as_posix()
    (folder / DATA_YAML).write_text(yaml.safe_dump(spec, sort_keys=False))
    return DATA_YAML, sum(1 for p in folder.rglob("*") if p.is_file())


def _listed(entries: Any) -> list[Any]:
    """A split's entries: `train:` may be one folder or a list."""
    return entries if isinstance(entries, list) else [entries] if entries else []
