"""The KFP API's credentials, resolved once: a bearer token (flag, environment, the pod's service-account token)
or a Dex/OIDC session cookie, never printed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from yolokf.core.errors import UsageError

# kfp's own variables, honoured as kfp.Client does.
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"


SA_TOKEN_DEFAULT_PATH = Path("/var/run/secrets/kubeflow/pipelines/token")


TOKEN_ENVS = ("YOLOKF_KFP_TOKEN", "KFP_TOKEN")


COOKIE_ENVS = ("YOLOKF_KFP_COOKIE", "KFP_COOKIE")


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
