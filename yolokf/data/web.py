"""An http(s):// file (a dataset archive) downloaded inside the download step, surviving a flaky server.

A dropped or reset connection, a timeout, a body cut short and the answers a server gives when it is busy or
restarting (408, 425, 429, 500, 502, 503, 504) are tried again, `ATTEMPTS` times in all, after BACKOFF seconds
doubled each time (or the server's Retry-After, up to MAX_WAIT). The bytes already on disk are kept: the next
attempt asks for the rest (`Range`) under `If-Range` with the first answer's strong ETag or Last-Modified, so a file
that changed in between comes back whole (200) rather than spliced; a server that ignores Range also answers 200,
and the file starts over. A refused connection, an unknown host, a bad certificate and the other 4xx fail at once:
trying again would not change them.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

from yolokf.core.errors import DataError
from yolokf.data.transfer import ATTEMPTS

BACKOFF = 1.0  # seconds before the second attempt, doubled before each later one
MAX_WAIT = 60.0  # at most this long for a Retry-After
TIMEOUT = 60  # seconds without a byte before a read fails (and is tried again)
RETRIED_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
EGRESS_ADVICE = "Check the URL and the cluster's egress."


@dataclass
class Downloaded:
    """What `download_url` did: the file's size, the bytes it moved (resumed attempts add only their rest) and
    how many attempts it took."""

    size: int
    moved: int
    attempts: int


@dataclass
class _Transfer:
    """What the attempts at one URL share: the file's validator (to resume with) once an answer gave one, and the
    bytes written by every attempt, cut ones included."""

    validator: str | None = None
    moved: int = 0


class _Cut(Exception):
    """The connection closed before Content-Length bytes arrived (http.client ends such a body quietly)."""


def download_url(
    url: str, target: Path, *, say: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep
) -> Downloaded:
    """Download `url` into the file `target`, trying transient failures again (module docstring); one line through
    `say` per retry. Raises DataError with one line."""
    transfer = _Transfer()
    target.unlink(missing_ok=True)
    for attempt in range(1, ATTEMPTS + 1):
        wait = BACKOFF * 2 ** (attempt - 1)
        try:
            _attempt(url, target, transfer)
            return Downloaded(target.stat().st_size, transfer.moved, attempt)
        except _Cut as exc:
            reason = str(exc)
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # the part on disk no longer fits the file: start over
                transfer.validator = None
            elif exc.code not in RETRIED_STATUS:
                raise DataError(f"Cannot fetch {url}: HTTP {exc.code} {exc.reason}.") from None
            reason = f"HTTP {exc.code} {exc.reason}"
            wait = _retry_after(exc.headers, wait)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(cause, (ConnectionRefusedError, socket.gaierror, ssl.SSLCertVerificationError)):
                raise DataError(f"Cannot fetch {url}: {cause}. {EGRESS_ADVICE}") from None
            reason = str(cause) or type(cause).__name__
        if attempt == ATTEMPTS:
            raise DataError(f"Cannot fetch {url}: {reason}, {ATTEMPTS} times. {EGRESS_ADVICE}")
        kept = target.stat().st_size if transfer.validator and target.exists() else 0
        resume = f", from byte {kept:,}" if kept else ""
        say(f"yolokf: fetching {url}: {reason}; trying again in {wait:g} s{resume} ({attempt + 1} of {ATTEMPTS})")
        sleep(wait)
    raise AssertionError("unreachable")


def _attempt(url: str, target: Path, transfer: _Transfer) -> None:
    """One GET: the rest of the file when the part on disk can be resumed, else all of it."""
    have = target.stat().st_size if transfer.validator and target.exists() else 0
    headers = {"User-Agent": "yolokf"}
    if have:
        headers |= {"Range": f"bytes={have}-", "If-Range": transfer.validator or ""}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT) as response:
        resumed = have > 0 and response.status == 206 and _range_start(response.headers) == have
        if not resumed:  # a whole answer: the file from its start, maybe a new version of it
            transfer.validator = _validator(response.headers)
        with target.open("ab" if resumed else "wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
                transfer.moved += len(block)
        if response.length:  # bytes the server announced and never sent
            raise _Cut(f"the connection closed {response.length:,} bytes before the end")


def _validator(headers: Message) -> str | None:
    """What If-Range may name: a strong ETag, else Last-Modified; None (no resume) without either."""
    etag = headers.get("ETag") or ""
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


def _range_start(headers: Message) -> int | None:
    """The first byte of a 206's `Content-Range: bytes START-END/SIZE`."""
    value = (headers.get("Content-Range") or "").removeprefix("bytes ").partition("-")[0]
    return int(value) if value.isdigit() else None


def _retry_after(headers: Message | None, default: float) -> float:
    """The server's Retry-After in seconds (up to MAX_WAIT), else `default`."""
    value = (headers.get("Retry-After") or "").strip() if headers is not None else ""
    return min(float(value), MAX_WAIT) if value.isdigit() else default
