"""Run the pipeline on this machine through kfp.local, with the same component a cluster runs.

kfp.local's SubprocessRunner executes the step in this Python environment (`use_venv=False`, so
nothing is installed), and writes outputs under the pipeline root, where they stay after the run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yolokf.cluster import StepOptions
from yolokf.datasets import is_remote, resolve_data
from yolokf.errors import TrainingError, UsageError
from yolokf.offline import check_model
from yolokf.settings import TrainConfig

DEFAULT_PIPELINE_ROOT = Path("yolokf-runs")


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
    if is_remote(config.data):
        raise UsageError(
            f"{config.data} is a remote dataset; local runs take a local dataset. "
            "Download it first, or submit to a cluster with --host."
        )
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
        task = pipeline()
    except RuntimeError as exc:
        raise TrainingError(f"The local training step failed: {exc}. See the step log above.") from None
    outputs: dict[str, Any] = task.outputs
    metrics = {name: float(value) for name, value in outputs["metrics"].metadata.items()}
    artifacts = {name: Path(artifact.path) for name, artifact in outputs.items()}
    return LocalRun(pipeline_root, metrics, artifacts, time.perf_counter() - started)
