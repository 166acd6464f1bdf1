"""The Kubeflow Pipelines API: connection, credentials, the one `kfp.Client`, retries and error wording.

Everything goes through the real `kfp.Client` (KFP v2 REST API, /apis/v2beta1), made by one
factory, `kfp_client`. Failures of the API (unreachable host, DNS, TLS, 401/403/404, 5xx, a spec
the server rejects) become one `ClusterError` line that says what to do; connection errors and 5xx
are retried a bounded number of times with backoff. Tokens and cookies are only ever handed to
kfp.Client: they are not printed, logged, or written into the compiled pipeline.
"""

from __future__ import annotations

import contextlib
import functools
import io
import ipaddress
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar
from urllib.parse import urlsplit

from yolokf.core.errors import ClusterError, ClusterUnavailableError, UsageError
from yolokf.runs.api_errors import classify
from yolokf.runs.connection import Connection
from yolokf.runs.credentials import Credentials, resolve_credentials

T = TypeVar("T")

UI_ENDPOINT_ENV = "KF_PIPELINES_UI_ENDPOINT"
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class RetryPolicy:
    """How often a transient failure (connection error, 5xx, 429) is tried again, with doubling waits."""

    attempts: int = 4
    first_delay: float = 1.0

    def delays(self) -> Iterator[float]:
        return (self.first_delay * 2**i for i in range(self.attempts - 1))


RETRY = RetryPolicy()
# Per request: a proxy that accepts the connection and never answers must not hang yolokf.
REQUEST_TIMEOUT = (15.0, 120.0)  # connect, read (uploads can be slow)


@dataclass
class Cluster:
    """A connected Kubeflow Pipelines API: the kfp.Client and what yolokf learned about it."""

    client: Any
    host: str
    namespace: str | None
    multi_user: bool
    credentials: Credentials
    notify: Callable[[str], None]  # one line for the user: retries, warnings

    @property
    def ui(self) -> str:
        return os.environ.get(UI_ENDPOINT_ENV, "").rstrip("/") or self.host

    def run_url(self, run_id: str) -> str:
        return f"{self.ui}/#/runs/details/{run_id}"

    def call(self, action: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` with retries, kfp's prints silenced, failures as one ClusterError."""
        return call_api(self, action, fn, *args, **kwargs)


def normalize_host(host: str) -> str:
    host = host.strip().rstrip("/")
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(
            f"--host {host!r} is not an http(s) URL. Examples: http://localhost:8080 (a port-forward of "
            "svc/ml-pipeline-ui), https://kubeflow.example.com/pipeline (multi-user Kubeflow)."
        )
    return host


def _is_loopback(host: str) -> bool:
    name = urlsplit(host).hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@functools.cache
def _client_class() -> type:
    import kfp.client
    import urllib3

    class YolokfClient(kfp.client.Client):
        """kfp.Client with explicit configuration only, and failures left to yolokf's retry loop."""

        def _load_config(self, *args: Any, **kwargs: Any) -> Any:
            config = super()._load_config(*args, **kwargs)
            # Retries happen in yolokf (bounded, with backoff, and announced). Redirects are not followed:
            # an OIDC front (Dex, oauth2-proxy) answers 302 to its login page, which yolokf explains.
            config.retries = urllib3.Retry(total=0, redirect=False, raise_on_redirect=False)
            return config

        def _load_context_setting_or_default(self) -> None:
            # Not ~/.config/kfp/context.json: --namespace/$KFP_NAMESPACE are the only namespace source.
            self._context_setting = {"namespace": ""}

        def set_user_namespace(self, namespace: str) -> None:
            self._context_setting["namespace"] = namespace  # no write to ~/.config/kfp

        def get_kfp_healthz(self, sleep_duration: int = 5) -> Any:
            # kfp asks from __init__, before yolokf can set request timeouts, and retries 5 times 5 s apart on
            # any ApiException (a 401 takes 25 s to report). yolokf asks once, in connect(), through call_api.
            if not getattr(self, "_yolokf_ready", False):
                return SimpleNamespace(multi_user=False)
            return self._healthz_api.healthz_service_get_healthz()

    return YolokfClient


def kfp_client(
    host: str,
    *,
    namespace: str | None = None,
    ca_bundle: Path | None = None,
    insecure_skip_verify: bool = False,
    credentials: Credentials | None = None,
) -> Any:
    """The one place yolokf makes a `kfp.Client`. Raises the client's own exceptions."""
    import warnings

    credentials = credentials or Credentials()
    token_credentials = None
    if credentials.token_file is not None:
        from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

        # Re-read before every request, like kfp does for projected (rotating) service-account tokens.
        token_credentials = ServiceAccountTokenVolumeCredentials(str(credentials.token_file))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 ..."
        client = _client_class()(
            host=host,
            namespace=namespace or "kubeflow",  # kfp's "not given"
            existing_token=credentials.token,
            cookies=credentials.cookie,
            credentials=token_credentials,
            ssl_ca_cert=str(ca_bundle) if ca_bundle else None,
            verify_ssl=False if insecure_skip_verify else None,
        )
    # kfp.Client passes no timeout to its requests, and urllib3 then waits forever: a proxy that accepts
    # and never answers would hang yolokf. All of the client's services share this one ApiClient.
    api_client = client._run_api.api_client
    api_client.rest_client = _rest_client_class()(api_client.configuration)
    client._yolokf_ready = True
    return client


@functools.cache
def _rest_client_class() -> type:
    from kfp_server_api.rest import RESTClientObject

    class TimeoutRESTClient(RESTClientObject):
        def request(self, *args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
            return super().request(*args, _request_timeout=_request_timeout or REQUEST_TIMEOUT, **kwargs)

    return TimeoutRESTClient


def connect(connection: Connection, notify: Callable[[str], None] = print) -> Cluster:
    """Check the options, make the client, and ask the API's healthz (which also tells multi-user).

    `notify` receives the lines the user should see on the way: warnings, and retries of failed requests.
    """
    if not connection.host:
        raise UsageError("No cluster given: pass --host URL (or set KFP_HOST), e.g. --host http://localhost:8080.")
    host = normalize_host(connection.host)
    namespace, ca_bundle = connection.namespace, connection.ca_bundle
    insecure_skip_verify = connection.insecure_skip_tls_verify
    token_file, cookie_file = connection.token_file, connection.cookie_file
    if ca_bundle is not None and not Path(ca_bundle).is_file():
        raise UsageError(f"--ca-bundle {ca_bundle} does not exist. Give the PEM file of the CA that signed {host}.")
    credentials = resolve_credentials(token_file, cookie_file)
    if insecure_skip_verify and host.startswith("https://"):
        notify(
            f"Warning: not verifying the TLS certificate of {host} (--insecure-skip-tls-verify). Anyone on the "
            "network path can impersonate the cluster and read your credentials; prefer --ca-bundle."
        )
        import urllib3

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # said once above
    if host.startswith("http://") and credentials.source != "no credentials" and not _is_loopback(host):
        notify(f"Warning: sending the {credentials.source} over plain http to {host}; use https.")
    namespace = namespace.strip() if namespace else None
    cluster = Cluster(None, host, namespace or None, False, credentials, notify)
    cluster.client = cluster.call(
        f"Connecting to {host}",
        kfp_client,
        host,
        namespace=namespace,
        ca_bundle=ca_bundle,
        insecure_skip_verify=insecure_skip_verify,
        credentials=credentials,
    )
    healthz = cluster.call(f"Connecting to {host}", cluster.client.get_kfp_healthz)
    cluster.multi_user = bool(getattr(healthz, "multi_user", False))
    if cluster.multi_user and not cluster.namespace:
        cluster.namespace = _in_cluster_namespace()  # in a pod, as kfp.Client does
        if not cluster.namespace:
            raise UsageError(
                f"{host} is a multi-user Kubeflow: pass --namespace (your profile namespace, for example "
                "kubeflow-user-example-com) or set KFP_NAMESPACE."
            )
    return cluster


def _in_cluster_namespace() -> str | None:
    try:
        return IN_CLUSTER_NAMESPACE.read_text().strip() or None
    except OSError:
        return None


def call_api(
    cluster: Cluster,
    action: str,
    fn: Callable[..., T],
    *args: Any,
    _recover: Callable[[], T | None] | None = None,
    **kwargs: Any,
) -> T:
    """Run one API call with bounded retries; turn failures into a ClusterError naming `action`.

    `_recover`, if given, runs before each retry and may return the result instead (a create whose
    answer was lost must not be sent twice).
    """
    delays = RETRY.delays()
    attempt = 1
    while True:
        try:
            if attempt > 1 and _recover is not None:
                found = _recover()
                if found is not None:
                    return found
            with contextlib.redirect_stdout(io.StringIO()):  # kfp prints links itself; yolokf prints its own
                return fn(*args, **kwargs)
        except Exception as exc:
            problem = classify(exc, cluster.host, cluster.namespace, cluster.credentials.source)
            if problem is None:
                raise
            delay = next(delays, None) if problem.transient else None
            if delay is None:
                tries = f" (tried {attempt} times)" if attempt > 1 else ""
                error = ClusterUnavailableError if problem.transient else ClusterError
                raise error(f"{action} failed: {problem.message}{tries}") from None
            cluster.notify(
                f"{action}: {problem.message.split('. ')[0]}; retrying in {delay:g} s ({attempt}/{RETRY.attempts - 1})"
            )
            time.sleep(delay)
            attempt += 1


GATEWAY_STATUSES = (429, 502, 503, 504)


@dataclass(frozen=True)
class TextAnswer:
    """A plain-text answer: the log endpoints of the UI and the API server answer text, not the API's JSON."""

    status: int
    text: str


def get_text(cluster: Cluster, action: str, path: str, query: dict[str, str], *, ui: bool = False) -> TextAnswer:
    """GET `path` (under the API host, or the UI's with `ui`) with the client's credentials, TLS and timeouts.

    Any HTTP answer comes back as it is (the caller knows what a 404 or a 500 of that endpoint means); transport
    failures, a gateway's 502/503/504, 429, 401 and login redirects are retried or worded as for every other call.
    """
    import kfp_server_api

    api_client = cluster.client._run_api.api_client  # the one ApiClient kfp.Client's services share

    def get() -> TextAnswer:
        try:
            api_client.call_api(
                path,
                "GET",
                query_params=list(query.items()),
                header_params={"Accept": "text/plain, application/json"},
                auth_settings=["Bearer"],
                _return_http_data_only=True,
                _host=cluster.ui if ui else None,
            )
        except kfp_server_api.ApiException as exc:
            # A gateway's 502/503/504 and a 429 say nothing of the log: retried as every other call's.
            if exc.status in (0, 401, *GATEWAY_STATUSES) or 300 <= (exc.status or 0) < 400:
                raise
            body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body or "")
            return TextAnswer(exc.status, body)
        response = api_client.last_response
        data = response.data  # kfp_server_api decodes it (utf-8) unless asked for bytes
        return TextAnswer(response.status, data.decode(errors="replace") if isinstance(data, bytes) else data)

    return cluster.call(action, get)
