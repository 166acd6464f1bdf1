"""A failed KFP API call as one line that says what to do (401, 403, 404, TLS, DNS, redirects to a login page),
and whether trying again can help.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from yolokf.runs.credentials import SA_TOKEN_PATH_ENV


@dataclass
class Problem:
    message: str
    transient: bool


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


def classify(exc: BaseException, host: str, namespace: str | None, credential_source: str) -> Problem | None:
    """The one line for `exc` from the API at `host`; None when it is not an API or network failure."""
    import kfp_server_api
    import urllib3

    if isinstance(exc, kfp_server_api.ApiException):
        status = exc.status or 0
        message = _server_message(exc)
        if status == 0:
            if "SSLError" in message or "CERTIFICATE" in message.upper():
                return _tls_problem(host, message)
            return Problem(message or "the request could not be sent", False)
        detail = f" ({message})" if message else ""
        if 300 <= status < 400:
            location = (exc.headers or {}).get("Location", "") if hasattr(exc, "headers") else ""
            return Problem(
                f"{host} redirected to a login page ({location or status}): the cluster is behind Dex/OIDC. "
                "Pass your session cookie (export KFP_COOKIE='oauth2_proxy_kubeflow=...', copied from the "
                "browser, or --cookie-file) or a bearer token (KFP_TOKEN, --token-file).",
                False,
            )
        if status == 401:
            used = credential_source
            what = f"the {used} was refused" if used != "no credentials" else "no credentials were sent"
            return Problem(
                f"401 Unauthorized from {host}{detail}: {what}. Pass a valid token (KFP_TOKEN, --token-file, "
                f"{SA_TOKEN_PATH_ENV}) or, behind Dex/OIDC, a session cookie (KFP_COOKIE).",
                False,
            )
        if status == 403:
            namespace = f"namespace {namespace!r}" if namespace else "the default namespace"
            return Problem(
                f"403 Forbidden from {host}{detail}: your account may not use {namespace}. Check --namespace "
                "(your Kubeflow profile namespace) and that the profile grants you access.",
                False,
            )
        if status == 404:
            return Problem(
                f"404 Not Found from {host}{detail}. Check that --host is the Kubeflow Pipelines API "
                "(http://localhost:8080 for a port-forward of svc/ml-pipeline-ui, https://<kubeflow>/pipeline "
                "behind the Kubeflow gateway) and that the id and --namespace are right.",
                False,
            )
        if status == 429 or status >= 500:
            return Problem(
                f"{host} answered {status} {exc.reason or ''}{detail}. The KFP API server is failing or "
                "overloaded: try again later, or check its pods (kubectl -n kubeflow get pods).".replace("  ", " "),
                True,
            )
        return Problem(f"{host} rejected the request with {status}{detail}.", False)
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        exc = exc.reason or exc
    if isinstance(exc, urllib3.exceptions.NameResolutionError) or _is_dns_error(exc):
        name = urlsplit(host).hostname
        return Problem(f"cannot resolve the host name {name!r}: check the spelling of --host and your DNS/VPN.", False)
    if isinstance(exc, urllib3.exceptions.SSLError):
        return _tls_problem(host, str(exc))
    if isinstance(exc, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError):
        return Problem(
            f"cannot connect to {host} ({_short(exc)}). Is the API reachable? For a port-forward: "
            "kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80, then --host http://localhost:8080.",
            True,
        )
    if isinstance(exc, urllib3.exceptions.ProtocolError | urllib3.exceptions.ReadTimeoutError | ConnectionError):
        return Problem(f"the connection to {host} broke ({_short(exc)}).", True)
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return Problem(f"talking to {host} failed ({_short(exc)}).", True)
    if isinstance(exc, ValueError) and type(exc).__module__.startswith(("kfp", "builtins")):
        return Problem(str(exc), False)
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


def _tls_problem(host: str, message: str) -> Problem:
    reason = re.search(r"certificate verify failed: ([^(')]+)", message)
    why = reason[1].strip() if reason else _short(Exception(message))
    return Problem(
        f"TLS verification of {host} failed ({why}). If the cluster uses a private CA, pass --ca-bundle ca.pem; "
        "--insecure-skip-tls-verify skips the check (not recommended).",
        False,
    )
