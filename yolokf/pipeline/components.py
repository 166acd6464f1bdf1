"""The pipeline's components: the one training component (and its `--nodes` launcher twin), the download
component, the sweep's selection and report components, and the promote steps' components.

The training component is a lightweight component that installs nothing at start (the image holds yolokf, kfp and
ultralytics) and hands over to `yolokf.training.train.train_step`. Its training inputs, like the pipeline's
parameters, are generated from the training fields (`yolokf.core.settings.TrainConfig`), so a field is never
listed here. No `from __future__ import annotations`: kfp reads the components' annotations as types.
"""

import functools
import inspect
import linecache
from collections.abc import Callable
from typing import Any

from kfp import dsl
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
    OutputPath,
)

from yolokf import __version__
from yolokf.core.settings import training_fields

# Replaced per task by step_options.apply_step_options (the image build-image made, or --image).
PLACEHOLDER_IMAGE = f"yolokf:{__version__}"


# The component's source is what a pod runs (kfp embeds it in the container command), so its signature must be
# spelled out in text: it is generated from the training fields. Outputs and step inputs follow them.
_TRAINING_SOURCE = '''\
def {name}(
    {fields}
    {leading}weights: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    run_dir: Output[Artifact],
    summary: OutputPath(str),
    dataset: Input[Dataset] = None,
    checkpoint_dir: str = "",
    run_key: str = "",
    trial: dict = {{}},
    trials: list = [],
    sweep: dict = {{}},
    mlflow: dict = {{}},
    kfp_run: str = "",
    {trailing}
):
    """{doc}"""
    inputs = dict(locals())
    from {module} import {entry}

    {entry}(**inputs)
'''


def _generated_function(name: str, source: str) -> Any:
    """Define function `name` from `source` so that `inspect.getsource` (kfp's component factory) finds it."""
    filename = f"<yolokf.pipeline.pipelines {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = {
        "Output": Output,
        "Input": Input,
        "Model": Model,
        "Metrics": Metrics,
        "HTML": HTML,
        "Artifact": Artifact,
        "Dataset": Dataset,
        "OutputPath": OutputPath,
        "ClassificationMetrics": ClassificationMetrics,
        "Markdown": Markdown,
    }
    exec(compile(source, filename, "exec"), namespace)
    return namespace[name]


def _training_component(name: str, entry: str, doc: str, leading: str = "", trailing: str = "") -> Any:
    """A training component: the training fields, then the inputs and outputs every training step has, with the
    step's own `leading` (before the outputs) and `trailing` inputs; it hands them all to `entry` by name."""
    fields = "\n    ".join(f"{f.name}: {f.type.__name__}," for f in training_fields())
    module, _, function = entry.rpartition(".")
    source = _TRAINING_SOURCE.format(
        name=name, fields=fields, leading=leading, trailing=trailing, doc=doc, module=module, entry=function
    )
    return dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)(_generated_function(name, source))


yolo_train = _training_component(
    "yolo_train", "yolokf.training.train.train_step", "Train an Ultralytics YOLO model (yolokf)."
)


@functools.cache
def train_nodes_component() -> Any:
    """`--nodes N` (issue 19): `yolo_train_nodes`, the same training inputs and outputs (a sweep trial's included),
    and the node count, compiled in; the step starts yolokf's distributed worker on every node and hands rank 0's
    results to the same outputs. Built once, on use: a one-pod pipeline has no need of it (issue 27: compile's time).
    """
    return _training_component(
        "yolo_train_nodes",
        "yolokf.training.launch.launch_step",
        "Train an Ultralytics YOLO model across nodes (yolokf).",
        leading="nodes: int,\n    ",
        trailing="trainjob: dict = {},",
    )


@dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)
def fetch_dataset(
    uri: str, credentials: str, data_pvc: str, data_cache_pvc: str, dataset: Output[Dataset], nodes: int = 1
):
    """Download the run's dataset from s3://, gs:// or https://, or pass a local or PVC one on (yolokf)."""
    inputs = dict(locals())
    # Runs in the step's pod: kfp embeds this function's source, imports included.
    from yolokf.data.fetch import fetch_step

    fetch_step(**inputs)


# A sweep's two steps: plain functions here, made components by `sweep_components` (kfp names each component after
# its function and embeds the function's source).
def select_trials(
    results: list,
    history: list,
    metric: str,
    mode: str,
    trials: list,
    epochs: int,
    sweep: dict,
    records: OutputPath(list),  # type: ignore[valid-type]
) -> list:
    """Keep the best trials of a sweep round to continue (yolokf); returns them, the next round's items."""
    import json

    # Runs in the step's pod: kfp embeds this function's source, imports included.
    from yolokf.sweeps.select import select_step

    kept, merged = select_step(results, history, metric, mode, trials, epochs, sweep)
    with open(records, "w") as handle:
        json.dump(merged, handle)
    # The next round iterates over the return value: kfp.local (2.17) cannot loop over a named output.
    return kept


def sweep_report(
    results: list,
    history: list,
    metric: str,
    mode: str,
    rounds: int,
    best: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    table: Output[Markdown],
) -> list:
    """Pick a sweep's best trial and report every trial (yolokf)."""
    # Runs in the step's pod: kfp embeds this function's source, imports included.
    from yolokf.sweeps.select import report_step

    return report_step(results, history, metric, mode, rounds, best=best, metrics=metrics, report=report, table=table)


@functools.cache
def sweep_components() -> tuple[Any, Any]:
    """The `select_trials` and `sweep_report` components, built once, when a job is a sweep: compiling a training
    pipeline builds neither (issue 27: compile's time)."""
    component = dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)
    return component(select_trials), component(sweep_report)


def _step_component(name: str, step: Callable[..., Any]) -> Any:
    """A component whose signature is its step function's (issue 15): the source kfp embeds is generated from
    `inspect.signature(step)`, whose annotations are kfp's types written in the step module (`Input[Model]`,
    `OutputPath(str)`), and whose body hands every input and output on to `step` by name."""
    parameters = list(inspect.signature(step).parameters.values())
    # Inputs with defaults last, as Python requires of the generated function (the step's are keyword-only).
    parameters.sort(key=lambda p: p.default is not inspect.Parameter.empty)
    lines = [
        f"{p.name}: {p.annotation}" + ("" if p.default is inspect.Parameter.empty else f" = {p.default!r}")
        for p in parameters
    ]
    returns = inspect.signature(step).return_annotation
    arrow = "" if returns in ("None", None, inspect.Signature.empty) else f" -> {returns}"
    doc = (step.__doc__ or "").strip().splitlines()[0]
    source = (
        f"def {name}(\n    " + ",\n    ".join(lines) + f",\n){arrow}:\n"
        f'    """{doc}"""\n'
        "    inputs = dict(locals())\n"
        f"    from {step.__module__} import {step.__name__}\n\n"
        f"    return {step.__name__}(**inputs)\n"
    )
    return dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)(_generated_function(name, source))


@functools.cache
def promote_components() -> tuple[Any, Any, Any, Any]:
    """The evaluate, export, gate and register components, built once, when a job has promote steps: compiling a
    plain training pipeline imports none of the promote steps' modules (issue 27: compile's time)."""
    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.promotion.evaluate import evaluate_step
    from yolokf.promotion.export import export_step
    from yolokf.promotion.gate import gate_step
    from yolokf.promotion.publish import register_step

    return (
        _step_component("yolo_evaluate", evaluate_step),
        _step_component("yolo_export", export_step),
        _step_component("quality_gate", gate_step),
        _step_component("yolo_register", register_step),
    )
