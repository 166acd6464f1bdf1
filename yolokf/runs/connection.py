"""How to reach a Kubeflow Pipelines API, as the `--host` flags give it: what `yolokf.runs.kfp_api.connect` takes.

Apart from the client (kfp_api), so that the commands that take these flags load no client code until they connect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Connection:
    """How to reach a Kubeflow Pipelines API: the `--host` flags of `run` and `status`."""

    host: str | None = None
    namespace: str | None = None
    ca_bundle: Path | None = None
    insecure_skip_tls_verify: bool = False
    token_file: Path | None = None
    cookie_file: Path | None = None
