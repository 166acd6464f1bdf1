"""Run the pipeline on this machine through kfp.local, with the same component a cluster runs.

kfp.local's SubprocessRunner executes the step in this Python environment (`use_venv=False`, so
nothing is installed), and writes outputs under the pipeline root, where they stay after the run.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yolokf.cluster import StepOptions
from yolokf.datasets import is_remote, resolve_data
from yolokf.errors import TrainingError, UsageError
from yolokf.offline import check_model
from yolokf.settings import TrainConfig

DEFAULT_PIPELINE_ROOT = Path("yolokf-runs")
METRIC_ORDER = ("precision", "recall", "mAP50", "mAP50-95", "fitness")


@dataclass
class LocalRun:
    """Where a local run left its outputs."""

    pipeline_root: Path
    metrics: dict[str, float]
    artifacts: dict[str, Path]
    seconds: float


def preflight(config: TrainConfig) -> None:
    """Fail before starting kfp.local when the model or dataset cannot work here."""
    check_model(config.model)
    if config.data.startswith("pvc://"):
        raise UsageError(
            f"{config.data} is on a cluster volume; locally, pass the dataset's folder or YAML, or run with --host."
        )
    if not is_remote(config.data):  # s3://, gs://, https:// go through the pipeline's download step
        resolve_data(config.data)


def run_local(
    config: TrainConfig, pipeline_root: Path = DEFAULT_PIPELINE_ROOT, step: StepOptions | None = None
) -> LocalRun:
    """Train `config` through kfp.local and return the outputs' locations and final metrics.

    Of `step` only the checkpoint folder and run key apply here (cluster settings mean nothing locally).
    """
    from kfp import local

    from yolokf.pipeline import build_pipeline

    preflight(config)
    pipeline_root = Path(pipeline_root).resolve()
    try:
        pipeline_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"Cannot create --pipeline-root {pipeline_root}: {exc.strerror}.") from None
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    pipeline = build_pipeline(config, (step or StepOptions(image="local")).for_local())
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # kfp.local says, rightly, that cluster settings and the image do not apply here.
            warnings.filterwarnings("ignore", message=r".*(have no effect|non-Python base image)", category=Warning)
            task = pipeline()
    except RuntimeError as exc:
        raise TrainingError(f"The local training step failed: {exc}. See the step log above.") from None
    outputs: dict[str, Any] = task.outputs
    logged = outputs["metrics"].metadata
    first = [name for name in METRIC_ORDER if name in logged]
    metrics = {name: float(logged[name]) for name in first + sorted(set(logged) - set(first))}
    # Output[Metrics] is metadata only under kfp.local: list the artifacts that are files or folders.
    artifacts = {name: Path(a.path) for name, a in outputs.items() if Path(a.path).exists()}
    return LocalRun(pipeline_root, metrics, artifacts, time.perf_counter() - started)
