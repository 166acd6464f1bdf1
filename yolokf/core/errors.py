"""The errors yolokf raises. Each message says what is wrong and what to do next.

The CLI turns them into one line on stderr and the exit code below (1 unless said otherwise: 2 bad input,
3 offline, 4 the run failed, 130 Ctrl-C); no traceback unless YOLOKF_DEBUG=1.
"""

from __future__ import annotations


class YolokfError(Exception):
    """Base class: a failure the user can act on."""

    exit_code = 1


class UsageError(YolokfError):
    """Bad arguments or input files (exit 2, like Typer's own usage errors)."""

    exit_code = 2


class OfflineError(YolokfError):
    """Something would need a download and the machine cannot reach the source."""

    exit_code = 3


class TrainingError(YolokfError):
    """The training step failed."""


class ImageBuildError(YolokfError):
    """Building or pushing the training image failed."""


class RegistryError(ImageBuildError):
    """The registry refused or could not be reached."""


class ClusterError(YolokfError):
    """The Kubeflow Pipelines API failed or refused a request."""


class ClusterUnavailableError(ClusterError):
    """The Kubeflow Pipelines API did not answer, or answered 5xx or 429, through every retry: later may work."""


class RunFailedError(ClusterError):
    """A pipeline run ended in FAILED, CANCELED or timed out."""

    exit_code = 4


class ModelRegistryError(YolokfError):
    """Kubeflow Model Registry refused a request or could not be reached."""


class TrackingError(YolokfError):
    """The MLflow server (`--mlflow`, `--registry mlflow`) refused a request or could not be reached."""


class QualityGateError(YolokfError):
    """The model missed a quality gate (`--gate`) or an export lost accuracy (`--export-tolerance`)."""


class DataError(YolokfError):
    """A dataset could not be fetched or does not look like a YOLO dataset (bad input: exit 2), wherever found."""

    exit_code = 2


class Interrupted(YolokfError):
    """The user pressed Ctrl-C (exit 130, as a shell reports SIGINT)."""

    exit_code = 130
