"""What every loopback server shares: the threaded HTTP server, the request log, injected faults, JSON answers and
strict field checks.

An API server subclasses `LoopbackServer` and writes `serve` (one request, its API's answer) and `error_body` (its
API's error JSON). `start()` serves it on a free loopback port from a thread, `stop()` closes it; a test fixture
does both. Every request is kept in `requests` (method, path, query, headers, body, and the status answered) for
tests to read; `fail()` answers the next matching requests with an error, a dropped connection or a stall. A server
that is no API (the S3 fault proxy) subclasses `Loopback`, the thread and port alone, and writes `handle`.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

HOST = "127.0.0.1"
T = TypeVar("T")
S = TypeVar("S", bound="Loopback")


class ApiError(Exception):
    """An error answer: HTTP `status` and `message`, written as the server's API writes errors (`error_body`)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    """A request as the server read it, and the status it answered (0: the connection was dropped)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: bytes
    status: int = 0

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Fault:
    status: int  # HTTP status to answer, 0 to close the connection without answering, 200 to serve after `delay`
    times: int
    method: str | None = None
    path: str | None = None  # regex searched in the request path
    body: str | None = None  # regex searched in the request body
    message: str = "injected fault"
    after: bool = False  # status 0 only: carry the request out first, then drop the answer
    delay: float = 0.0  # wait this long before answering (a stalled proxy)

    def matches(self, request: Request) -> bool:
        return (
            (self.method is None or self.method == request.method)
            and (self.path is None or re.search(self.path, request.path) is not None)
            and (self.body is None or re.search(self.body, request.body.decode(errors="replace")) is not None)
        )


def fields(
    doc: Mapping[str, Any], known: Mapping[str, T], unknown: Callable[[str], Exception]
) -> Iterator[tuple[str, Any, T]]:
    """Each (key, value, field) of a JSON object in order, raising `unknown(key)` at the first key `known` lacks: how
    a strict API server decodes a body (protojson with DiscardUnknown=false, Go's DisallowUnknownFields, the
    Kubernetes API server's strict field validation). Lazy, so a wrong value before an unknown key is found first."""
    for key, value in doc.items():
        if key not in known:
            raise unknown(key)
        yield key, value, known[key]


def container(openapi_type: str) -> tuple[str, str] | None:
    """("list", X) for "list[X]", ("dict", X) for "dict(str, X)", else None: the container types in the
    `openapi_types` of swagger-codegen models (kfp_server_api's, the kubernetes client's)."""
    if m := re.fullmatch(r"list\[(.+)\]", openapi_type):
        return "list", m[1]
    if m := re.fullmatch(r"dict\(str, (.+)\)", openapi_type):
        return "dict", m[1]
    return None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up (Ctrl-C tests, dropped connections) is not a server failure


class Handler(BaseHTTPRequestHandler):
    """One connection's requests: each goes to `loopback.handle`; the answer is written with the helpers here, which
    record its status in `record`."""

    loopback: Loopback
    record: Request

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def respond(self) -> None:  # do_<METHOD> for each method of the server's API
        self.loopback.handle(self)

    def read_request(self) -> Request:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.record = Request(self.command, url.path, self.loopback.parse_query(url.query), headers, body)
        return self.record

    def send(self, status: int, data: bytes, content_type: str, headers: Mapping[str, str] | None = None) -> None:
        self.record.status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        self.send(status, json.dumps(payload).encode(), "application/json", headers)

    def send_text(self, status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send(status, text.encode(), content_type)

    def drop(self) -> None:
        """Close the connection without an answer."""
        self.record.status = 0
        self.close_connection = True
        self.connection.close()


class Loopback:
    """A thread serving HTTP on a free loopback port: `start()`, `stop()`, `url`; `handle` answers each request."""

    name = "loopback"  # the serving thread's name
    methods: tuple[str, ...] = ("GET", "POST", "DELETE")  # http.server answers 501 to any other
    protocol_version = "HTTP/1.1"

    def __init__(self, *, tls: tuple[Path, Path] | None = None):
        self.tls = tls  # (certificate, key): serve https
        self._httpd: ThreadingHTTPServer | None = None

    def start(self: S) -> S:
        attributes: dict[str, Any] = {"loopback": self, "protocol_version": self.protocol_version}
        attributes |= {f"do_{method}": Handler.respond for method in self.methods}
        httpd = _HTTPServer((HOST, 0), type(f"{type(self).__name__}Handler", (Handler,), attributes))
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        self._httpd = httpd
        threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=self.name, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    def parse_query(self, query: str) -> dict[str, str]:
        """The query string's parameters: the last value of each, empty ones kept."""
        return {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}

    def handle(self, http: Handler) -> None:
        """Answer the request `http` has just received."""
        raise NotImplementedError


class LoopbackServer(Loopback):
    """One API on a free loopback port: keeps every request, answers injected faults, and leaves the rest to `serve`
    and `error_body`, the API's own."""

    name = "loopback-server"

    def __init__(self, *, tls: tuple[Path, Path] | None = None):
        super().__init__(tls=tls)
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self._lock = threading.RLock()

    def fail(
        self,
        status: int,
        times: int = 1,
        *,
        method: str | None = None,
        path: str | None = None,
        body: str | None = None,
        message: str = "injected fault",
        after: bool = False,
        delay: float = 0.0,
    ) -> None:
        """Answer the next `times` requests that match (method, and regexes searched in path and body) with `status`
        and `message`.

        Status 0 drops the connection without an answer; with `after=True` the request is carried out first (the
        answer is lost on the way back, as when a proxy times out). `delay` stalls before answering; with status 200
        the request is then served normally.
        """
        with self._lock:
            self.faults.append(Fault(status, times, method, path, body, message, after, delay))

    def calls(self, method: str, path_regex: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.search(path_regex, r.path)]

    def _fault_for(self, request: Request) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.matches(request):
                    fault.times -= 1
                    return fault
        return None

    def handle(self, http: Handler) -> None:
        """One request: kept in `requests`, then answered by an injected fault or by `serve`; an ApiError is answered
        with `error_body`."""
        record = http.read_request()
        with self._lock:
            self.requests.append(record)
        fault = self._fault_for(record)
        if fault and fault.delay:
            time.sleep(fault.delay)
        if fault and fault.status == 0:
            if fault.after:
                self.carry_out(http, record)
            return http.drop()
        try:
            if fault and fault.status != 200:
                raise ApiError(fault.status, fault.message)
            self.serve(http, record)
        except ApiError as exc:
            http.send_json(exc.status, self.error_body(exc))

    def serve(self, http: Handler, record: Request) -> None:
        """Answer `record` through `http`, or raise ApiError."""
        raise NotImplementedError

    def error_body(self, error: ApiError) -> Any:
        """The JSON the API answers an error with."""
        raise NotImplementedError

    def carry_out(self, http: Handler, record: Request) -> None:
        """Do what `record` asks, without answering (a fault with after=True)."""
        raise NotImplementedError(f"{type(self).__name__} cannot carry out a request without answering it")
