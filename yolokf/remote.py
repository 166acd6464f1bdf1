"""Submit the pipeline to a Kubeflow Pipelines cluster, follow its runs, and report them.

Everything goes through the real `kfp.Client` (KFP v2 REST API, /apis/v2beta1), made by one
factory, `kfp_client`. Failures of the API (unreachable host, DNS, TLS, 401/403/404, 5xx, a spec
the server rejects) become one `ClusterError` line that says what to do; connection errors and 5xx
are retried a bounded number of times with backoff. Tokens and cookies are only ever handed to
kfp.Client: they are not printed, logged, or written into the compiled pipeline.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import io
import ipaddress
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml
from rich.console import Console

from yolokf.cluster import StepOptions
from yolokf.errors import ClusterError, RunFailedError, UsageError
from yolokf.settings import TrainConfig

T = TypeVar("T")

DEFAULT_EXPERIMENT = "yolokf"
# kfp's own variables, honoured as kfp.Client does.
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
SA_TOKEN_DEFAULT_PATH = Path("/var/run/secrets/kubeflow/pipelines/token")
UI_ENDPOINT_ENV = "KF_PIPELINES_UI_ENDPOINT"
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
TOKEN_ENVS = ("YOLOKF_KFP_TOKEN", "KFP_TOKEN")
COOKIE_ENVS = ("YOLOKF_KFP_COOKIE", "KFP_COOKIE")

TERMINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED")


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


# -- connection and credentials ------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """What yolokf sends to the API. `source` names where it came from, never the secret itself."""

    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    cookie: str | None = field(default=None, repr=False)
    source: str = "no credentials"


def resolve_credentials(
    token_file: Path | None = None,
    cookie_file: Path | None = None,
    environ: dict[str, str] | None = None,
) -> Credentials:
    """Find the bearer token and/or session cookie, in the order Kubeflow users keep them.

    Token: --token-file, then $YOLOKF_KFP_TOKEN / $KFP_TOKEN, then kfp's $KF_PIPELINES_SA_TOKEN_PATH,
    then the projected service-account token kfp uses in a pod. Cookie (Dex/OIDC): --cookie-file,
    then $YOLOKF_KFP_COOKIE / $KFP_COOKIE.
    """
    env = os.environ if environ is None else environ
    token: str | None = None
    path: Path | None = None
    sources = []
    if token_file is not None:
        path, label = Path(token_file), f"--token-file {token_file}"
    elif env_name := next((n for n in TOKEN_ENVS if env.get(n, "").strip()), None):
        token, label = env[env_name].strip(), f"${env_name}"
    elif env.get(SA_TOKEN_PATH_ENV):
        path, label = Path(env[SA_TOKEN_PATH_ENV]), f"${SA_TOKEN_PATH_ENV}"
    elif SA_TOKEN_DEFAULT_PATH.is_file():
        path, label = SA_TOKEN_DEFAULT_PATH, "the pod's KFP service-account token"
    else:
        label = ""
    if path is not None:
        _read_secret_file(path, "token", label)  # fail now, not inside the first request
    if label:
        sources.append(f"token from {label}")

    cookie: str | None = None
    if cookie_file is not None:
        clabel = f"--cookie-file {cookie_file}"
        cookie = _read_secret_file(Path(cookie_file), "cookie", clabel)
    elif env_name := next((n for n in COOKIE_ENVS if env.get(n, "").strip()), None):
        cookie, clabel = env[env_name].strip(), f"${env_name}"
    if cookie is not None:
        if cookie.lower().startswith("cookie:"):
            cookie = cookie.split(":", 1)[1].strip()
        if "=" not in cookie:
            raise UsageError(
                f"The cookie from {clabel} is not NAME=VALUE. Copy the whole session cookie from your browser, "
                "for example KFP_COOKIE='oauth2_proxy_kubeflow=...' (or 'authservice_session=...' on older Kubeflow)."
            )
        sources.append(f"session cookie from {clabel}")
    return Credentials(token, path, cookie, " and ".join(sources) or "no credentials")


def _read_secret_file(path: Path, what: str, label: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise UsageError(f"Cannot read the {what} file from {label}: {exc.strerror}.") from None
    if not value:
        raise UsageError(f"The {what} file from {label} is empty.")
    return value


@dataclass
class Cluster:
    """A connected Kubeflow Pipelines API: the kfp.Client and what yolokf learned about it."""

    client: Any
    host: str
    namespace: str | None
    multi_user: bool
    credentials: Credentials
    console: Console

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


def connect(
    host: str,
    *,
    namespace: str | None = None,
    ca_bundle: Path | None = None,
    insecure_skip_verify: bool = False,
    token_file: Path | None = None,
    cookie_file: Path | None = None,
    console: Console | None = None,
) -> Cluster:
    """Check the options, make the client, and ask the API's healthz (which also tells multi-user)."""
    console = console or Console(stderr=True)
    host = normalize_host(host)
    if ca_bundle is not None and not Path(ca_bundle).is_file():
        raise UsageError(f"--ca-bundle {ca_bundle} does not exist. Give the PEM file of the CA that signed {host}.")
    credentials = resolve_credentials(token_file, cookie_file)
    if insecure_skip_verify and host.startswith("https://"):
        console.print(
            f"Warning: not verifying the TLS certificate of {host} (--insecure-skip-tls-verify). Anyone on the "
            "network path can impersonate the cluster and read your credentials; prefer --ca-bundle.",
            markup=False,
            highlight=False,
        )
        import urllib3

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # said once above
    if host.startswith("http://") and credentials.source != "no credentials" and not _is_loopback(host):
        console.print(
            f"Warning: sending the {credentials.source} over plain http to {host}; use https.",
            markup=False,
            highlight=False,
        )
    namespace = namespace.strip() if namespace else None
    cluster = Cluster(None, host, namespace or None, False, credentials, console)
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


# -- calling the API: retries and one-line errors ------------------------------------------------


@dataclass
class _Problem:
    message: str
    transient: bool


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
            problem = _classify(exc, cluster)
            if problem is None:
                raise
            delay = next(delays, None) if problem.transient else None
            if delay is None:
                tries = f" (tried {attempt} times)" if attempt > 1 else ""
                raise ClusterError(f"{action} failed: {problem.message}{tries}") from None
            cluster.console.print(
                f"{action}: {problem.message.split('. ')[0]}; retrying in {delay:g} s ({attempt}/{RETRY.attempts - 1})",
                markup=False,
                highlight=False,
            )
            time.sleep(delay)
            attempt += 1


def _server_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if body:
        try:
            data = json.loads(body)
        except (ValueError, TypeError):
            data = None
        if isinstance(data, dict):
            message = data.get("message") or data.get("error")
            if message:
                return str(message).strip()
    return str(getattr(exc, "reason", "") or "").strip()


def _classify(exc: BaseException, cluster: Cluster) -> _Problem | None:
    import kfp_server_api
    import urllib3

    host = cluster.host
    if isinstance(exc, kfp_server_api.ApiException):
        status = exc.status or 0
        message = _server_message(exc)
        if status == 0:
            if "SSLError" in message or "CERTIFICATE" in message.upper():
                return _tls_problem(host, message)
            return _Problem(message or "the request could not be sent", False)
        detail = f" ({message})" if message else ""
        if 300 <= status < 400:
            location = (exc.headers or {}).get("Location", "") if hasattr(exc, "headers") else ""
            return _Problem(
                f"{host} redirected to a login page ({location or status}): the cluster is behind Dex/OIDC. "
                "Pass your session cookie (export KFP_COOKIE='oauth2_proxy_kubeflow=...', copied from the "
                "browser, or --cookie-file) or a bearer token (KFP_TOKEN, --token-file).",
                False,
            )
        if status == 401:
            used = cluster.credentials.source
            what = f"the {used} was refused" if used != "no credentials" else "no credentials were sent"
            return _Problem(
                f"401 Unauthorized from {host}{detail}: {what}. Pass a valid token (KFP_TOKEN, --token-file, "
                f"{SA_TOKEN_PATH_ENV}) or, behind Dex/OIDC, a session cookie (KFP_COOKIE).",
                False,
            )
        if status == 403:
            namespace = f"namespace {cluster.namespace!r}" if cluster.namespace else "the default namespace"
            return _Problem(
                f"403 Forbidden from {host}{detail}: your account may not use {namespace}. Check --namespace "
                "(your Kubeflow profile namespace) and that the profile grants you access.",
                False,
            )
        if status == 404:
            return _Problem(
                f"404 Not Found from {host}{detail}. Check that --host is the Kubeflow Pipelines API "
                "(http://localhost:8080 for a port-forward of svc/ml-pipeline-ui, https://<kubeflow>/pipeline "
                "behind the Kubeflow gateway) and that the id and --namespace are right.",
                False,
            )
        if status == 429 or status >= 500:
            return _Problem(
                f"{host} answered {status} {exc.reason or ''}{detail}. The KFP API server is failing or "
                "overloaded: try again later, or check its pods (kubectl -n kubeflow get pods).".replace("  ", " "),
                True,
            )
        return _Problem(f"{host} rejected the request with {status}{detail}.", False)
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        exc = exc.reason or exc
    if isinstance(exc, urllib3.exceptions.NameResolutionError) or _is_dns_error(exc):
        name = urlsplit(host).hostname
        return _Problem(f"cannot resolve the host name {name!r}: check the spelling of --host and your DNS/VPN.", False)
    if isinstance(exc, urllib3.exceptions.SSLError):
        return _tls_problem(host, str(exc))
    if isinstance(exc, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError):
        return _Problem(
            f"cannot connect to {host} ({_short(exc)}). Is the API reachable? For a port-forward: "
            "kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80, then --host http://localhost:8080.",
            True,
        )
    if isinstance(exc, urllib3.exceptions.ProtocolError | urllib3.exceptions.ReadTimeoutError | ConnectionError):
        return _Problem(f"the connection to {host} broke ({_short(exc)}).", True)
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return _Problem(f"talking to {host} failed ({_short(exc)}).", True)
    if isinstance(exc, ValueError) and type(exc).__module__.startswith(("kfp", "builtins")):
        return _Problem(str(exc), False)
    return None


def _is_dns_error(exc: BaseException) -> bool:
    import socket

    while exc is not None:
        if isinstance(exc, socket.gaierror):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def _short(exc: BaseException) -> str:
    text = str(exc)
    for pattern in (r"\[Errno -?\d+\] ([^')\]]+)", r"(timed out[^')]*)", r"(Remote end closed connection[^')]*)"):
        if m := re.search(pattern, text):
            return m[1].strip().rstrip(".")
    return text.split(": ")[-1].strip("()'\" ")[:120]


def _tls_problem(host: str, message: str) -> _Problem:
    reason = re.search(r"certificate verify failed: ([^(')]+)", message)
    why = reason[1].strip() if reason else _short(Exception(message))
    return _Problem(
        f"TLS verification of {host} failed ({why}). If the cluster uses a private CA, pass --ca-bundle ca.pem; "
        "--insecure-skip-tls-verify skips the check (not recommended).",
        False,
    )


# -- submitting ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    """How to submit: names, where outputs go, and caching."""

    experiment: str = DEFAULT_EXPERIMENT
    run_name: str | None = None
    pipeline_root: str | None = None
    service_account: str | None = None
    cache: bool | None = None  # None: as compiled (on)
    upload: bool = False
    description: str | None = None


@dataclass
class Submitted:
    run_id: str
    run_name: str
    url: str
    experiment: str
    experiment_id: str
    created_experiment: bool = False
    pipeline_id: str | None = None
    version_id: str | None = None
    version_name: str | None = None

    def summary(self) -> list[str]:
        """What `yolokf run --host` prints after submitting."""
        created = " (created)" if self.created_experiment else ""
        lines = [f"Submitted run {self.run_name} to experiment {self.experiment}{created}"]
        if self.version_id:
            lines.append(f"Pipeline: yolov8-train, version {self.version_name} ({self.version_id})")
        return lines + [f"Run id: {self.run_id}", f"Details: {self.url}"]


def describe_submission(
    host: str, namespace: str | None, config: TrainConfig, step: StepOptions, options: Submission
) -> list[str]:
    """The lines `run --host --dry-run` prints. Compiles the pipeline, contacts nothing."""
    host = normalize_host(host)
    with tempfile.TemporaryDirectory(prefix="yolokf-dry-run-") as tmp:
        write_package(config, step, options.cache, Path(tmp))
    where = f"{host} (namespace {namespace})" if namespace else host
    cache = {True: "on", False: "off", None: "as compiled (on)"}[options.cache]
    lines = [f"Would submit run {options.run_name or default_run_name(config)} to {where}"]
    if options.upload:
        lines.append("Would register pipeline yolov8-train, or a new version of it when it exists")
    return lines + [
        f"  experiment: {options.experiment} (created when missing)",
        f"  image: {step.image}",
        f"  parameters: {json.dumps(pipeline_arguments(config), sort_keys=True)}",
        f"  pipeline root: {options.pipeline_root or 'the cluster default'}",
        f"  service account: {options.service_account or 'the cluster default'}",
        f"  caching: {cache}, for every task",
    ]


def default_run_name(config: TrainConfig, now: datetime.datetime | None = None) -> str:
    """`yolov8n-coco128-20240131-142501`: model and dataset stems and the local time."""

    def stem(value: str) -> str:
        name = value.rstrip("/").rsplit("/", 1)[-1]
        name = re.sub(r"\.(pt|ya?ml|zip|tar\.gz|tgz)$", "", name)
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "data"

    now = now or datetime.datetime.now()
    return f"{stem(config.model)}-{stem(config.data)}-{now:%Y%m%d-%H%M%S}"


def set_caching(spec: dict[str, Any], enabled: bool) -> int:
    """Set `enableCache` on every task of a compiled PipelineSpec dict, sub-DAGs included.

    kfp.Client's submit-time override only touches the root DAG's tasks (kfp 2.17
    `_override_caching_options`), so a training task inside a condition, loop or exit handler would
    keep the compile-time setting. Returns how many tasks were set.
    """
    dags = [spec.get("root", {}).get("dag", {})]
    dags += [c["dag"] for c in spec.get("components", {}).values() if isinstance(c, dict) and "dag" in c]
    count = 0
    for dag in dags:
        for task in dag.get("tasks", {}).values():
            task.setdefault("cachingOptions", {})["enableCache"] = enabled
            count += 1
    return count


def write_package(config: TrainConfig, step: StepOptions, cache: bool | None, folder: Path) -> Path:
    """Compile the pipeline (the same one `yolokf compile` writes) with the caching choice applied."""
    from yolokf.pipeline import compile_pipeline

    path = compile_pipeline(config, step, folder / "pipeline.yaml")
    if cache is not None:
        docs = list(yaml.safe_load_all(path.read_text()))
        set_caching(docs[0], cache)
        path.write_text(yaml.safe_dump_all(docs, sort_keys=True))
    return path


def pipeline_arguments(config: TrainConfig) -> dict[str, Any]:
    """The run's parameter values: the pipeline's inputs, from the same flags as a local run."""
    return {
        "model": config.model,
        "data": config.data,
        "epochs": config.epochs,
        "imgsz": config.imgsz,
        "batch": config.batch,
        "device": config.device,
        "workers": config.workers,
        "seed": config.seed,
        "train_args": dict(config.extra),
    }


def submit(cluster: Cluster, config: TrainConfig, step: StepOptions, options: Submission) -> Submitted:
    """Compile, find or create the experiment, optionally register the pipeline, and create the run.

    When a later step fails, the error says what the earlier steps left on the cluster.
    """
    from yolokf.pipeline import PIPELINE_NAME

    run_name = options.run_name or default_run_name(config)
    done: list[str] = []
    with tempfile.TemporaryDirectory(prefix="yolokf-submit-") as tmp:
        package = write_package(config, step, options.cache, Path(tmp))
        try:
            experiment, created = _experiment(cluster, options.experiment)
            if created:
                done.append(f"created experiment {options.experiment!r}")
            pipeline_id = version_id = version_name = None
            if options.upload:
                pipeline_id, version_id, version_name, new_pipeline = _register(
                    cluster, package, PIPELINE_NAME, run_name, options.description
                )
                done.append(
                    f"registered pipeline {PIPELINE_NAME!r}"
                    if new_pipeline
                    else f"registered version {version_name!r} of pipeline {PIPELINE_NAME!r}"
                )
            run = _create_run(
                cluster,
                experiment.experiment_id,
                run_name,
                package,
                pipeline_arguments(config),
                options,
                pipeline_id,
                version_id,
            )
        except ClusterError as exc:
            if done:
                raise ClusterError(
                    f"{exc} No run was created; yolokf had already {', and '.join(done)}, which stay on the "
                    "cluster (rerunning reuses them)."
                ) from None
            raise
    return Submitted(
        run_id=run.run_id,
        run_name=run_name,
        url=cluster.run_url(run.run_id),
        experiment=options.experiment,
        experiment_id=experiment.experiment_id,
        created_experiment=created,
        pipeline_id=pipeline_id,
        version_id=version_id,
        version_name=version_name,
    )


def _experiment(cluster: Cluster, name: str) -> tuple[Any, bool]:
    client = cluster.client

    def find() -> Any:
        try:
            return client.get_experiment(experiment_name=name, namespace=cluster.namespace)
        except ValueError as exc:
            if str(exc).startswith("No experiment is found"):
                return None
            raise

    experiment = cluster.call(f"Looking up experiment {name!r}", find)
    if experiment is not None:
        return experiment, False
    experiment = cluster.call(
        f"Creating experiment {name!r}",
        client.create_experiment,
        name=name,
        namespace=cluster.namespace,
        _recover=find,
    )
    return experiment, True


def _name_filter(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def _register(
    cluster: Cluster, package: Path, name: str, version_name: str, description: str | None
) -> tuple[str, str, str, bool]:
    """Upload the pipeline, or a new version of it when it exists. Returns ids, version name, new?"""
    client = cluster.client
    namespace = cluster.namespace if cluster.multi_user else None

    def find_pipeline() -> Any:
        found = client.list_pipelines(filter=_name_filter(name), namespace=namespace, page_size=2)
        return found.pipelines[0] if found.pipelines else None

    def find_version(pipeline_id: str, version: str) -> Any:
        found = client.list_pipeline_versions(pipeline_id, filter=_name_filter(version), page_size=2)
        return found.pipeline_versions[0] if found.pipeline_versions else None

    pipeline = cluster.call(f"Looking up pipeline {name!r}", find_pipeline)
    if pipeline is None:
        pipeline = cluster.call(
            f"Registering pipeline {name!r}",
            client.upload_pipeline,
            str(package),
            pipeline_name=name,
            description=description,
            namespace=namespace,
            _recover=find_pipeline,
        )
        pipeline_id = pipeline.pipeline_id
        versions = cluster.call(
            f"Reading the versions of pipeline {name!r}", client.list_pipeline_versions, pipeline_id, page_size=1
        )
        if not versions.pipeline_versions:
            raise ClusterError(f"Registering pipeline {name!r} failed: the server made no version for it.")
        version = versions.pipeline_versions[0]
        return pipeline_id, version.pipeline_version_id, version.display_name or version.name or name, True
    pipeline_id = pipeline.pipeline_id
    version = cluster.call(
        f"Registering version {version_name!r} of pipeline {name!r}",
        client.upload_pipeline_version,
        str(package),
        pipeline_version_name=version_name,
        pipeline_id=pipeline_id,
        description=description,
        _recover=lambda: find_version(pipeline_id, version_name),
    )
    return pipeline_id, version.pipeline_version_id, version_name, False


def _create_run(
    cluster: Cluster,
    experiment_id: str,
    run_name: str,
    package: Path,
    params: dict[str, Any],
    options: Submission,
    pipeline_id: str | None,
    version_id: str | None,
) -> Any:
    client = cluster.client

    def runs_named() -> list[Any]:
        found = client.list_runs(
            experiment_id=experiment_id, filter=_name_filter(run_name), sort_by="created_at desc", page_size=50
        )
        return list(found.runs or [])

    # A create whose answer is lost may still have reached the server: before sending it again, look for a
    # run with this name that was not there before (names may repeat, e.g. a nightly --run-name).
    existing = {run.run_id for run in cluster.call(f"Looking up runs named {run_name!r}", runs_named)}

    def find_run() -> Any:
        return next((run for run in runs_named() if run.run_id not in existing), None)

    source: dict[str, Any] = (
        {"pipeline_id": pipeline_id, "version_id": version_id}
        if version_id
        else {"pipeline_package_path": str(package)}
    )
    return cluster.call(
        f"Creating run {run_name!r}",
        client.run_pipeline,
        experiment_id=experiment_id,
        job_name=run_name,
        params=params,
        pipeline_root=options.pipeline_root or None,
        service_account=options.service_account or None,
        _recover=find_run,
        **source,
    )


# -- following and reporting runs ----------------------------------------------------------------


@dataclass
class TaskState:
    name: str
    state: str
    seconds: float | None = None
    error: str | None = None
    outputs: dict[str, list[str]] = field(default_factory=dict)
    is_step: bool = True  # False for the run's own DAG task


@dataclass
class RunReport:
    """A run as `yolokf status` shows it."""

    run_id: str
    name: str
    state: str
    url: str
    experiment_id: str | None = None
    created_at: datetime.datetime | None = None
    finished_at: datetime.datetime | None = None
    error: str | None = None
    pipeline_root: str | None = None
    service_account: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    tasks: list[TaskState] = field(default_factory=list)

    @property
    def seconds(self) -> float | None:
        if not self.created_at:
            return None
        end = self.finished_at or datetime.datetime.now(datetime.timezone.utc)
        return max(0.0, (end - _aware(self.created_at)).total_seconds())

    @property
    def current_task(self) -> TaskState | None:
        steps = [t for t in self.tasks if t.is_step]
        running = [t for t in steps if t.state == "RUNNING"]
        candidates = running or steps
        return candidates[-1] if candidates else None


def _aware(moment: datetime.datetime) -> datetime.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def _error_text(error: Any) -> str | None:
    if error is None:
        return None
    message = getattr(error, "message", None) if not isinstance(error, dict) else error.get("message")
    return (message or "").strip() or None


def report(cluster: Cluster, run: Any) -> RunReport:
    """Summarise a kfp_server_api V2beta1Run."""
    tasks = []
    details = getattr(getattr(run, "run_details", None), "task_details", None) or []
    for task in details:
        start, end = task.start_time or task.create_time, task.end_time
        seconds = (_aware(end) - _aware(start)).total_seconds() if start and end else None
        outputs = {k: list(v.artifact_ids or []) for k, v in (task.outputs or {}).items()}
        tasks.append(
            TaskState(
                task.display_name or task.task_id,
                str(task.state or "PENDING"),
                seconds,
                _error_text(task.error),
                outputs,
                is_step=bool(task.parent_task_id) or not task.child_tasks,
            )
        )
    runtime = run.runtime_config
    return RunReport(
        run_id=run.run_id,
        name=run.display_name or run.run_id,
        state=str(run.state or "PENDING"),
        url=cluster.run_url(run.run_id),
        experiment_id=run.experiment_id,
        created_at=run.created_at,
        finished_at=run.finished_at if str(run.state) in TERMINAL_STATES else None,
        error=_error_text(run.error) or next((t.error for t in tasks if t.error), None),
        pipeline_root=getattr(runtime, "pipeline_root", None),
        service_account=run.service_account,
        parameters=dict(getattr(runtime, "parameters", None) or {}),
        tasks=tasks,
    )


def get_report(cluster: Cluster, run_id: str) -> RunReport:
    """The current state of run `run_id`."""
    run_id = run_id.strip()
    if not run_id:
        raise UsageError("RUN_ID is empty: give the id `yolokf run --host ...` printed.")
    return report(cluster, cluster.call(f"Reading run {run_id}", cluster.client.get_run, run_id))


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass
class Followed:
    """How following a run ended when it did not fail: succeeded, detached, or terminated."""

    report: RunReport
    outcome: str


def wait(
    cluster: Cluster,
    run_id: str,
    *,
    timeout: float | None = None,
    poll_interval: float = 5.0,
    on_interrupt: str = "ask",
    console: Console | None = None,
) -> Followed:
    """Poll the run until it ends, showing its state live. Raises RunFailedError on FAILED/CANCELED/timeout.

    kfp's `wait_for_run_completion` is not used: in kfp 2.17 it never returns on CANCELED. Ctrl-C
    asks whether to terminate the run or only stop following it (`on_interrupt`: ask, terminate,
    detach).
    """
    console = console or Console()
    started = time.monotonic()
    deadline = started + timeout if timeout else None
    current: RunReport | None = None
    try:
        with _Display(console) as display:
            while True:
                try:
                    run = cluster.call(f"Reading run {run_id}", cluster.client.get_run, run_id)
                except ClusterError as exc:
                    if current is None:
                        raise
                    raise ClusterError(
                        f"{exc} yolokf stopped following; the run itself is not affected: yolokf status {run_id}"
                    ) from None
                current = report(cluster, run)
                display.update(current)
                if current.state in TERMINAL_STATES:
                    break
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise RunFailedError(
                        f"Run {current.name} ({run_id}) is still {current.state} after --timeout "
                        f"{format_seconds(timeout)}; it keeps running on the cluster. Follow it with "
                        f"`yolokf status {run_id}` or {current.url}"
                    )
                time.sleep(poll_interval if deadline is None else max(0.0, min(poll_interval, deadline - now)))
    except KeyboardInterrupt:
        return _interrupted(cluster, run_id, current, on_interrupt, console)
    if current.state == "SUCCEEDED":
        return Followed(current, "succeeded")
    error = f": {current.error}" if current.error else " (the server gave no error message)"
    raise RunFailedError(
        f"Run {current.name} ({run_id}) {current.state} after {format_seconds(current.seconds)}{error}. "
        f"Details and logs: {current.url}"
    )


def _interrupted(
    cluster: Cluster, run_id: str, current: RunReport | None, on_interrupt: str, console: Console
) -> Followed:
    from rich.prompt import Confirm

    terminate = on_interrupt == "terminate"
    if on_interrupt == "ask":
        try:
            terminate = Confirm.ask(
                f"\nInterrupted. Terminate run {run_id} on the cluster? (no: stop following, it keeps running)",
                console=console,
                default=False,
            )
        except (EOFError, KeyboardInterrupt):
            terminate = False
    placeholder = RunReport(run_id, run_id, "UNKNOWN", cluster.run_url(run_id))
    if not terminate:
        console.print(f"Stopped following run {run_id}; it keeps running. Check it with: yolokf status {run_id}")
        return Followed(current or placeholder, "detached")
    cluster.call(f"Terminating run {run_id}", cluster.client.terminate_run, run_id)
    console.print(f"Asked the cluster to terminate run {run_id}. Check it with: yolokf status {run_id}")
    return Followed(current or placeholder, "terminated")


class _Display:
    """Live status on a terminal; one line per change elsewhere (CI logs, pipes)."""

    def __init__(self, console: Console):
        self.console = console
        self.live: Any = None
        self.last: tuple[str, str] | None = None

    def __enter__(self) -> _Display:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def update(self, run: RunReport) -> None:
        task = run.current_task
        task_text = f"task {task.name}: {task.state}" if task else "no task started yet"
        line = f"{run.state:<9} {format_seconds(run.seconds):>9}  {task_text}"
        if self.live is not None:
            from rich.spinner import Spinner

            done = run.state in TERMINAL_STATES
            self.live.update(line if done else Spinner("dots", text=line))
        elif self.last != (run.state, task_text):
            self.console.print(line, markup=False, highlight=False)
        self.last = (run.state, task_text)
