"""The one training component and the pipeline around it.

`compile`, local `run`, remote `run` and the image all use `yolo_train`. It is a lightweight
component that installs nothing at start (the image holds yolokf, kfp and ultralytics) and hands
over to `yolokf.train.train_step`.
"""

import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from kfp import compiler, dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from yolokf import __version__
from yolokf.cluster import StepOptions, apply_fetch_options, apply_step_options, ultralytics_device
from yolokf.errors import UsageError
from yolokf.settings import TrainConfig

PIPELINE_NAME = "yolov8-train"
# Replaced per task by cluster.apply_step_options (the image build-image made, or --image).
PLACEHOLDER_IMAGE = f"yolokf:{__version__}"


@dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)
def yolo_train(
    model: str,
    data: str,
    epochs: int,
    imgsz: int,
    batch: int,
    device: str,
    workers: int,
    seed: int,
    train_args: dict,
    weights: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    run_dir: Output[Artifact],
    dataset: Input[Dataset] = None,
    checkpoint_dir: str = "",
    run_key: str = "",
):
    """Train an Ultralytics YOLO model (yolokf)."""
    from yolokf.train import train_step

    train_step(
        model=model,
        data=data,
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        device=device,
        workers=workers,
        seed=seed,
        train_args=train_args,
        weights=weights,
        metrics=metrics,
        report=report,
        run_dir=run_dir,
        dataset=dataset,
        checkpoint_dir=checkpoint_dir,
        run_key=run_key,
    )


@dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)
def fetch_dataset(uri: str, dataset: Output[Dataset]):
    """Download a dataset from s3://, gs:// or https:// (yolokf); cached by KFP for the same URI."""
    from yolokf.fetch import fetch_step

    fetch_step(uri=uri, dataset=dataset)


class PipelineOutputs(NamedTuple):
    weights: Model
    metrics: Metrics
    report: HTML
    run_dir: Artifact


def build_pipeline(config: TrainConfig, step: StepOptions) -> Any:
    """The `yolov8-train` pipeline, with `config`'s values as its parameter defaults.

    A remote `config.data` adds a download step (s3://, gs://, https://) or a PVC mount (pvc://).
    """
    from yolokf.fetch import check_data_source

    # Any URI, so that ftp://... is refused rather than taken for a folder inside the image.
    source = check_data_source(config.data, step) if "://" in config.data else None
    config = config.with_overrides(device=ultralytics_device(step.gpus, config.device))
    if source is not None and not source.fetched:
        step = replace(step, data_pvc=source.bucket)

    def yolov8_train(
        model: str = config.model,
        data: str = config.data,
        epochs: int = config.epochs,
        imgsz: int = config.imgsz,
        batch: int = config.batch,
        device: str = config.device,
        workers: int = config.workers,
        seed: int = config.seed,
        train_args: dict = config.extra,  # noqa: B008 - a default the KFP UI shows
    ) -> PipelineOutputs:
        inputs: dict[str, Any] = {}
        if source is not None and source.fetched:
            fetched = fetch_dataset(uri=data)
            apply_fetch_options(fetched, step)
            inputs["dataset"] = fetched.outputs["dataset"]
        task = yolo_train(
            model=model,
            data=data,
            epochs=epochs,
            imgsz=imgsz,
            batch=batch,
            device=device,
            workers=workers,
            seed=seed,
            train_args=train_args,
            checkpoint_dir=step.checkpoint_path,
            run_key=step.run_key or "",
            **inputs,
        )
        apply_step_options(task, step)
        return PipelineOutputs(
            weights=task.outputs["weights"],
            metrics=task.outputs["metrics"],
            report=task.outputs["report"],
            run_dir=task.outputs["run_dir"],
        )

    return dsl.pipeline(
        name=PIPELINE_NAME,
        description=f"Train an Ultralytics YOLO model (yolokf {__version__}).",
    )(yolov8_train)


def compile_pipeline(config: TrainConfig, step: StepOptions, out: Path) -> Path:
    """Write the pipeline YAML to `out` atomically: on failure no partial file is left."""
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name such as {out / 'yolov8_train.yaml'}")
    if not parent.is_dir():
        raise UsageError(f"Cannot write {out}: folder {parent} does not exist. Create it or choose another --out.")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"Cannot write {out}: folder {parent} is not writable. Choose another --out.")
    pipeline = build_pipeline(config, step)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp.yaml", dir=parent)
    os.close(fd)
    try:
        compiler.Compiler().compile(pipeline, package_path=tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
