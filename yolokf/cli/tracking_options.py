"""The MLflow options of `compile`, `run`, `tune` and `evaluate` (issue 25): `@tracking_options` replaces a command's
`tracking: Tracking` parameter with `--mlflow`, `--mlflow-experiment` and `--mlflow-secret`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from yolokf.cli.options import _replace_parameter
from yolokf.tracking.plan import Tracking

MLFLOW_PANEL = "MLflow"

TRACKING_OPTIONS: dict[str, tuple[Any, Any]] = {
    "mlflow": (
        Annotated[
            str | None,
            typer.Option(
                "--mlflow",
                envvar="MLFLOW_TRACKING_URI",
                metavar="URI",
                help="MLflow server the steps log every epoch, the evaluation and the exports to; --registry mlflow "
                "registers there. E.g. http://mlflow.mlflow.svc:5000.",
                rich_help_panel=MLFLOW_PANEL,
            ),
        ],
        None,
    ),
    "mlflow_experiment": (
        Annotated[
            str | None,
            typer.Option(
                "--mlflow-experiment",
                envvar="MLFLOW_EXPERIMENT_NAME",
                metavar="NAME",
                help="MLflow experiment (default yolokf); with --host also KFP's MLflow plugin's, when it has one.",
                rich_help_panel=MLFLOW_PANEL,
            ),
        ],
        None,
    ),
    "mlflow_secret": (
        Annotated[
            str | None,
            typer.Option(
                "--mlflow-secret",
                metavar="NAME",
                help="Secret with MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN for the steps' pods.",
                rich_help_panel=MLFLOW_PANEL,
            ),
        ],
        None,
    ),
}


def _build_tracking(mlflow: str | None, mlflow_experiment: str | None, mlflow_secret: str | None) -> Tracking:
    return Tracking(uri=mlflow, experiment=mlflow_experiment, secret=mlflow_secret)


def tracking_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Replace the command's `tracking: Tracking` parameter with the MLflow options."""
    return _replace_parameter(command, "tracking", TRACKING_OPTIONS, _build_tracking)
