"""MLflow tracking, planned once: `--mlflow URI`, `--mlflow-experiment NAME` and `--mlflow-secret NAME` checked before
anything runs, and carried to the steps as one compile-time input (`Tracking.step_input`), beside the Secret that
the pipeline maps to MLflow's environment variables in the steps' pods (docs/mlflow.md).

Plain Python: the command line and the pipeline import it without mlflow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from yolokf.core.errors import UsageError

MLFLOW_REGISTRY = "mlflow"  # `--registry mlflow`: the registry of the MLflow server that --mlflow names
DEFAULT_EXPERIMENT = "yolokf"
# `--mlflow-secret NAME`: the Secret's keys -> the environment variables MLflow's client reads (each key optional:
# basic auth has the first two, a token server the third). The same names KFP's MLflow plugin injects.
SECRET_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


@dataclass(frozen=True)
class Tracking:
    """Where the steps log: the MLflow server (`uri`, not a secret), its experiment, and the Secret with the
    credentials (a name only: its values reach the pods' environment, never the YAML)."""

    uri: str | None = None
    experiment: str | None = None  # None: DEFAULT_EXPERIMENT; with --host alone, the KFP plugin's experiment
    secret: str | None = None

    def __post_init__(self) -> None:
        uri = (self.uri or "").strip().rstrip("/") or None
        object.__setattr__(self, "uri", uri)
        if uri is not None and not re.match(r"^https?://[^/\s]+", uri):
            raise UsageError(
                f"--mlflow {uri!r} is not an http(s) URL of an MLflow server; e.g. http://mlflow.mlflow.svc:5000."
            )
        if self.experiment is not None and not self.experiment.strip():
            raise UsageError("--mlflow-experiment is empty; give an experiment name, or leave it out for 'yolokf'.")
        if self.secret is not None:
            if len(self.secret) > 253 or not _K8S_NAME.fullmatch(self.secret):
                raise UsageError(
                    f"--mlflow-secret {self.secret!r} is not a Kubernetes name: lowercase letters, digits, '-' and '.'."
                )
            if uri is None:
                raise UsageError("--mlflow-secret needs --mlflow URI (or MLFLOW_TRACKING_URI): the server it is for.")

    @property
    def active(self) -> bool:
        """Whether yolokf's steps log to MLflow by themselves (KFP's plugin may still inject a run: `step`)."""
        return self.uri is not None

    @property
    def experiment_name(self) -> str:
        return self.experiment or DEFAULT_EXPERIMENT

    def step_input(self, kfp_ui: str = "") -> dict[str, Any]:
        """The steps' `mlflow` input, a constant of the compiled pipeline: {} when yolokf does not log itself.

        `kfp_ui`: the Kubeflow UI the run is submitted to (`run --host`), for the MLflow run's link back."""
        if not self.active:
            return {}
        return {"uri": self.uri, "experiment": self.experiment_name, **({"kfp_ui": kfp_ui} if kfp_ui else {})}

    def check_local(self) -> None:
        """Refuse what cannot work on this machine (the server itself is asked by `step.check_server`)."""
        if self.secret:
            raise UsageError(
                "--mlflow-secret maps a cluster Secret into the pods; locally, set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment."
            )


def run_link(uri: str, experiment_id: str, run_id: str) -> str:
    """An MLflow run's page in its UI."""
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
