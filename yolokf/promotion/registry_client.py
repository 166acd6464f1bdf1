"""The Model Registry client as the registration step uses it: one connection (token, CA bundle, the pod's own
token kept out of plain-HTTP requests), coroutines run with a timeout, and the client's errors turned into one
line that says what to do. Runs inside the registration step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import warnings
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from yolokf.core.errors import ModelRegistryError

if TYPE_CHECKING:
    from model_registry import ModelRegistry


T = TypeVar("T")


# One request may take this long (the client's own limit is 5 minutes, too long for a preflight).
REQUEST_TIMEOUT_S = 60.0


def is_transient(cause: BaseException | None) -> bool:
    """A failure another try may not meet: no connection, no answer in time, a gateway's 502/503/504."""
    import aiohttp

    with _quiet_client_logging():
        from mr_openapi.exceptions import ApiException

    if isinstance(cause, ApiException):
        return cause.status in (502, 503, 504)
    if isinstance(cause, aiohttp.ClientSSLError):  # a certificate does not heal by waiting
        return False
    return isinstance(cause, aiohttp.ClientConnectionError | asyncio.TimeoutError | ConnectionError)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """The client's async_runner: run one request coroutine on a fresh event loop, with a deadline.

    The client's default runner patches the caller's event loop for re-entrance (nest_asyncio) and
    leaves it behind; each of its coroutines opens and closes its own aiohttp session, so a private
    loop per call is enough and leaks nothing. Inside a running loop (a notebook), use a worker thread.
    """

    async def bounded() -> T:
        return await asyncio.wait_for(coro, REQUEST_TIMEOUT_S)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(bounded())
    with ThreadPoolExecutor(1, thread_name_prefix="model-registry") as pool:
        return pool.submit(asyncio.run, bounded()).result()


def _split_url(url: str) -> tuple[str, int]:
    """(address for the client, port): the client appends the port itself unless the URL has one."""
    parts = urlsplit(url.strip().rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelRegistryError(
            f"--registry {url!r} is not an http:// or https:// URL; "
            "use e.g. https://model-registry-service.kubeflow.svc:8443."
        )
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}{parts.path}", port


@contextlib.contextmanager
def _quiet_client_logging() -> Iterator[None]:
    """Import the client without letting it configure the application's logging.

    model_registry._client calls logging.basicConfig() when imported, which adds a root handler
    unless one exists; a NullHandler during the import makes that call a no-op.
    """
    root = logging.getLogger()
    placeholder = logging.NullHandler()
    root.addHandler(placeholder)
    try:
        yield
    finally:
        root.removeHandler(placeholder)


def connect_registry(url: str, token: str | None, ca_bundle: str | None, *, author: str) -> ModelRegistry:
    """A connected client; its constructor already lists one registered model (the preflight request)."""
    address, port = _split_url(url)
    if ca_bundle and not Path(ca_bundle).is_file():
        raise ModelRegistryError(f"--registry-ca-bundle {ca_bundle}: no such file (a PEM file of CA certificates).")
    with _quiet_client_logging():
        from model_registry import ModelRegistry
    secure = address.startswith("https://")
    with warnings.catch_warnings(), _no_pod_token(not secure and not token) as envvar:
        # With no token the client reads the one at $KF_PIPELINES_SA_TOKEN_PATH (the KFP pipeline-runner's
        # projected token, set in the step's pod), else the pod's service-account token: over https only
        # (issue 16). An http registry that needs none works without, so its "token is missing" warning is noise.
        warnings.filterwarnings("ignore", message="User access token is missing")
        client = ModelRegistry(
            address,
            port,
            author=author,
            is_secure=secure,
            user_token=token.strip() if token else None,
            user_token_envvar=envvar,
            custom_ca=ca_bundle,
            # ERROR: its port hint ("port is not 443...") is wrong for a registry on any other port.
            log_level=logging.ERROR,
            async_runner=_run,
        )
    return client


_NO_TOKEN_ENV = "YOLOKF_REGISTRY_NO_TOKEN"


@contextlib.contextmanager
def _no_pod_token(active: bool) -> Iterator[str | None]:
    """The `user_token_envvar` that keeps the client from reading the pod's token: one naming an empty file.

    The client reads a token file whenever none is given (model_registry/_client.py, ModelRegistry.__init__ and
    _get_user_token); an empty one leaves it without.
    """
    if not active:
        yield None
        return
    previous = os.environ.get(_NO_TOKEN_ENV)
    os.environ[_NO_TOKEN_ENV] = os.devnull
    try:
        yield _NO_TOKEN_ENV
    finally:
        if previous is None:
            os.environ.pop(_NO_TOKEN_ENV, None)
        else:
            os.environ[_NO_TOKEN_ENV] = previous


@contextlib.contextmanager
def registry_errors(url: str, token: str | None) -> Iterator[None]:
    """Turn the client's failures into one ModelRegistryError line; the token never appears in it."""
    try:
        yield
    except ModelRegistryError:
        raise
    except Exception as exc:
        message = _explain(exc, url, token)
        if message is None:
            raise
        if token and len(token.strip()) >= 8:  # never in a message by construction; a short one would garble it
            message = message.replace(token.strip(), "***")
        raise ModelRegistryError(message) from exc


def _error_message(exc: Any) -> str:
    """The message of the registry's Error body, else the first line of whatever came back."""
    import json

    message = getattr(exc.data, "message", None)  # the Error model, for the statuses the API declares
    if message:
        return str(message)
    body = (exc.body or "").strip()
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(body)["message"])
    return body.splitlines()[0][:200] if body else (exc.reason or "no details")


def _explain(exc: Exception, url: str, token: str | None) -> str | None:
    """One line for a failure of the client, or None when `exc` is not one (a bug: let it show)."""
    import ssl

    import aiohttp
    from pydantic import ValidationError

    with _quiet_client_logging():
        from model_registry.exceptions import StoreError
        from mr_openapi.exceptions import ApiException

    where = f"Model Registry at {url}"
    if isinstance(exc, ApiException):
        status = exc.status or 0
        if status in (401, 403):
            what = "the token" if token else "the request without a valid token"  # none, or the pod's
            return (
                f"{where} refused {what} (HTTP {status}): give a valid token with --registry-token-file, "
                "or run the step with a service account that may use the registry."
            )
        detail = _error_message(exc)
        if status == 404:
            return f"{where} answered HTTP 404 ({detail}): is --registry the Model Registry service's URL?"
        return f"{where} failed (HTTP {status}): {detail}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | ssl.SSLCertVerificationError):
        reason = getattr(exc, "certificate_error", exc)
        return (
            f"Cannot verify the TLS certificate of {where}: {reason}. Give the CA that signed it with "
            "--registry-ca-bundle (a PEM file)."
        )
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return f"TLS with {where} failed: {exc}. Check --registry (https or http?) and --registry-ca-bundle."
    if isinstance(exc, asyncio.TimeoutError):  # TimeoutError from 3.11 on
        return (
            f"Cannot reach Model Registry at {url}: no answer within {REQUEST_TIMEOUT_S:g} s. Check --registry "
            "and that the service is up and reachable from here."
        )
    if isinstance(exc, aiohttp.ClientError | OSError):
        reason = getattr(exc, "os_error", None) or exc
        return (
            f"Cannot reach Model Registry at {url}: {reason}. Check --registry and that the service is up "
            "and reachable from here."
        )
    if isinstance(exc, StoreError):
        text = str(exc)
        if "token must be provided" in text:
            return (
                f"{where} is https and needs a token: give one with --registry-token-file, or run the step "
                "with a service account that may use the registry."
            )
        if "Unable read user token" in text:  # $KF_PIPELINES_SA_TOKEN_PATH names a file that is not there
            return f"{text} ($KF_PIPELINES_SA_TOKEN_PATH): give a token with --registry-token-file instead."
        return f"{where}: {text}"
    if isinstance(exc, ValidationError | ValueError):
        first = str(exc).strip().splitlines()[0]
        return f"{where} answered something that is not the Model Registry API ({first}): check --registry."
    return None
