"""The one training component, the download component, the `yolov8-train` pipeline, and `compile`.

`compile`, local `run`, remote `run` and the image all use `yolo_train`: a lightweight component that installs
nothing at start (the image holds yolokf, kfp and ultralytics) and hands over to
`yolokf.steps.train.train_step`. Its training inputs, like the pipeline's parameters, are generated from the
training fields (`yolokf.settings.TrainConfig`), so a field is never listed here.
"""

import inspect
import linecache
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from kfp import compiler, dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from yolokf import __version__
from yolokf.errors import UsageError
from yolokf.job import Job
from yolokf.settings import training_fields
from yolokf.step_options import apply_fetch_options, apply_step_options

PIPELINE_NAME = "yolov8-train"
# Replaced per task by step_options.apply_step_options (the image build-image made, or --image).
PLACEHOLDER_IMAGE = f"yolokf:{__version__}"

# The component's source is what a pod runs (kfp embeds it in the container command), so its signature must be
# spelled out in text: it is generated from the training fields. Outputs and step inputs follow them.
_TRAIN_SOURCE = '''\
def yolo_train(
    {fields}
    weights: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    run_dir: Output[Artifact],
    dataset: Input[Dataset] = None,
    checkpoint_dir: str = "",
    run_key: str = "",
):
    """Train an Ultralytics YOLO model (yolokf)."""
    inputs = dict(locals())
    from yolokf.steps.train import train_step

    train_step(**inputs)
'''


def _generated_function(name: str, source: str) -> Any:
    """Define function `name` from `source` so that `inspect.getsource` (kfp's component factory) finds it."""
    filename = f"<yolokf.pipeline {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = {
        "Output": Output,
        "Input": Input,
        "Model": Model,
        "Metrics": Metrics,
        "HTML": HTML,
        "Artifact": Artifact,
        "Dataset": Dataset,
    }
    exec(compile(source, filename, "exec"), namespace)
    return namespace[name]


yolo_train = dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)(
    _generated_function(
        "yolo_train",
        _TRAIN_SOURCE.format(fields="\n    ".join(f"{f.name}: {f.type.__name__}," for f in training_fields())),
    )
)


@dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)
def fetch_dataset(uri: str, dataset: Output[Dataset]):
    """Download a dataset from s3://, gs:// or https:// (yolokf); cached by KFP for the same URI."""
    from yolokf.steps.fetch import fetch_step

    fetch_step(uri=uri, dataset=dataset)


class PipelineOutputs(NamedTuple):
    weights: Model
    metrics: Metrics
    report: HTML
    run_dir: Artifact


def build_pipeline(job: Job) -> Any:
    """The `yolov8-train` pipeline: one parameter per training field, `job.config`'s values as the defaults.

    A remote dataset adds a download step (s3://, gs://, https://); a PVC dataset is mounted (step options).
    """
    fields = training_fields()
    defaults = job.config.parameters()

    def yolov8_train(*values: Any) -> PipelineOutputs:
        params = dict(zip((f.name for f in fields), values, strict=True))
        inputs: dict[str, Any] = {}
        if job.fetches_data:
            fetched = fetch_dataset(uri=params["data"])
            apply_fetch_options(fetched, job.step)
            inputs["dataset"] = fetched.outputs["dataset"]
        task = yolo_train(**params, checkpoint_dir=job.step.checkpoint_path, run_key=job.step.run_key or "", **inputs)
        apply_step_options(task, job.step)
        return PipelineOutputs(
            weights=task.outputs["weights"],
            metrics=task.outputs["metrics"],
            report=task.outputs["report"],
            run_dir=task.outputs["run_dir"],
        )

    # kfp reads the pipeline's parameters, types and defaults from the function's signature, and calls it with
    # them in that order.
    yolov8_train.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=defaults[f.name], annotation=f.type
            )
            for f in fields
        ],
        return_annotation=PipelineOutputs,
    )
    return dsl.pipeline(
        name=PIPELINE_NAME,
        description=f"Train an Ultralytics YOLO model (yolokf {__version__}).",
    )(yolov8_train)


def compile_pipeline(job: Job, out: Path) -> Path:
    """Write the pipeline YAML to `out` atomically: on failure no partial file is left."""
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name such as {out / 'yolov8_train.yaml'}")
    if not parent.is_dir():
        raise UsageError(f"Cannot write {out}: folder {parent} does not exist. Create it or choose another --out.")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"Cannot write {out}: folder {parent} is not writable. Choose another --out.")
    pipeline = build_pipeline(job)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp.yaml", dir=parent)
    except OSError as exc:  # the folder takes no new files (read-only mount, quota, sticky dir of another user)
        raise UsageError(f"Cannot write {out}: {exc.strerror}. Choose another --out.") from None
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
