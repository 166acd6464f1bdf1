"""The pipelines (`yolov8-train`, `yolov8-evaluate`, `yolov8-tune`) built from a planned `Job`, and `compile`.

`compile`, local `run`, remote `run` and the image all use the same components (`yolokf.pipeline.components`);
the pods' settings are applied in one place (`yolokf.pipeline.step_options`).
"""

import contextlib
import dataclasses
import inspect
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from kfp import compiler, dsl
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Markdown,
    Metrics,
    Model,
)

from yolokf import __version__
from yolokf.core.errors import UsageError
from yolokf.core.mounts import NO_CREDENTIALS
from yolokf.pipeline.components import (
    fetch_dataset,
    promote_components,
    sweep_components,
    train_nodes_component,
    yolo_train,
)
from yolokf.pipeline.contract import run_parameters
from yolokf.pipeline.job import EVALUATE_PIPELINE_NAME, PIPELINE_NAME, SWEEP_PIPELINE_NAME, Job
from yolokf.pipeline.step_options import (
    apply_fetch_options,
    apply_select_options,
    apply_step_options,
    launcher_options,
)
from yolokf.tracking.plan import SECRET_ENV

if TYPE_CHECKING:
    from yolokf.sweeps.plan import Sweep


class PipelineOutputs(NamedTuple):
    weights: Model
    metrics: Metrics
    report: HTML
    run_dir: Artifact


class SweepOutputs(NamedTuple):
    best: Model
    metrics: Metrics
    report: HTML
    table: Markdown
    trials: list


def _dataset_inputs(job: Job, data: Any) -> dict[str, Any]:
    """The `dataset` input of the steps that read data: the download step's output, which says what to read.

    The step runs whatever `data` was compiled with, so a run whose `data` is edited (Kubeflow UI) to another
    kind of source still works: the kind is decided from the run's value, in the step (docs/cluster.md).
    A local run on local data has none: the steps read `data` where it is.
    """
    if job.local_data:
        return {}
    fetched = fetch_dataset(
        uri=data,
        credentials=job.step.data_secret or NO_CREDENTIALS,
        data_pvc=job.step.data_pvc or "",
        data_cache_pvc=job.step.data_cache_pvc or "",
        nodes=job.step.nodes,  # a run's `data` the nodes could not read is refused before any download
    )
    apply_fetch_options(fetched, job.step)
    return {"dataset": fetched.outputs["dataset"]}


def _pipeline(job: Job, body: Callable[[dict[str, Any]], Any], name: str, returns: type, description: str) -> Any:
    """A KFP pipeline whose parameters are `job`'s run parameters (`yolokf.pipeline.contract`), its values as defaults;
    `body` gets them as one dict, by name."""
    parameters = [
        inspect.Parameter(parameter, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=kind)
        for parameter, (kind, default) in run_parameters(job).items()
    ]

    def pipeline(*values: Any) -> Any:
        return body(dict(zip((p.name for p in parameters), values, strict=True)))

    # kfp reads the pipeline's parameters, types and defaults from the signature, and calls it with them in order.
    pipeline.__name__ = body.__name__
    pipeline.__signature__ = inspect.Signature(parameters, return_annotation=returns)  # type: ignore[attr-defined]
    return dsl.pipeline(name=name, description=description)(pipeline)


def _outputs(name: str, base: type, job: Job) -> Any:
    """The pipeline's outputs: `base`'s, then the promote steps' (evaluation, confusion, classes, each export)."""
    fields = list(base.__annotations__.items())
    if job.promotion is not None:
        fields += [("evaluation", Metrics), ("confusion", ClassificationMetrics), ("classes", Markdown)]
        fields += [(fmt, Model) for fmt in job.promotion.formats]
        fields += [("exports", Markdown)] if job.promotion.formats else []
    return NamedTuple(name, fields)  # type: ignore[misc]


def _promote(job: Job, weights: Any, params: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """The steps after training: evaluate, export each format (one after another), gate, register; their outputs.

    Names, the champion metric and the image size are the steps' to derive from the run's values and the weights
    (issues 15, 16). Evaluation and exports that need one hold one accelerator, whatever the training held: device
    '0' in a pod with one GPU, the CPU for formats that need none (onnx, openvino, torchscript).
    """
    promotion = job.promotion
    if promotion is None:
        return {}
    yolo_evaluate, yolo_export, quality_gate, yolo_register = promote_components()
    common = {"data": params["data"], "batch": params["batch"], **inputs}
    tracked = {"mlflow": {}, "kfp_run": "", **_tracking_inputs(job)}
    evaluation = yolo_evaluate(weights=weights, device=_one_device(job, True, params), **common, **tracked)
    apply_step_options(evaluation, _one_gpu(job, True), "evaluate")
    _tracking_secret(evaluation, job)
    outputs = {name: evaluation.outputs[name] for name in ("confusion", "classes")}
    outputs["evaluation"] = evaluation.outputs["metrics"]
    exports: Any = []
    for fmt in promotion.formats:
        gpu = fmt in GPU_FORMATS or promotion.half
        export = yolo_export(
            weights=weights,
            fmt=fmt,
            imgsz=promotion.export_imgsz or 0,  # 0: the weights' own training imgsz
            device=_one_device(job, gpu, params),
            dynamic=promotion.dynamic,
            half=promotion.half,
            simplify=promotion.simplify,
            tolerance=promotion.tolerance,
            agreement=promotion.agreement,
            previous=exports,
            evaluation=evaluation.outputs["summary"],  # the .pt's one evaluation: the exports' reference
            serving_name=promotion.serving_name,
            serving_service_account=promotion.serving_service_account,
            serving_max_batch=promotion.serving_max_batch,
            run_model=params["model"],
            **common,
            **tracked,
        )
        apply_step_options(export, _one_gpu(job, gpu), f"export {fmt}")
        _tracking_secret(export, job)
        # After the evaluation, not beside it: a failed export's run still has its evaluation, in any runner's
        # order (kfp.local picks one of two independent tasks by chance).
        export.after(evaluation)
        exports, outputs[fmt], outputs["exports"] = (
            export.outputs["Output"],
            export.outputs["model"],
            export.outputs["table"],
        )
    if promotion.gates:
        gate = quality_gate(
            evaluation=evaluation.outputs["summary"],
            gates=[g.text for g in promotion.gates],
            action=promotion.gate_action,
        )
        apply_select_options(gate, job.step, "quality gate")
    if promotion.registry:
        passed = dsl.If(gate.output == "pass", name="gate-passed") if promotion.gates else contextlib.nullcontext()
        with passed:
            register = yolo_register(
                weights=weights,
                evaluation=evaluation.outputs["summary"],
                exports=exports,
                registry=promotion.registry,
                registered_model=promotion.registered_model,
                run_model=params["model"],
                token_file=promotion.token_file,
                ca_bundle=promotion.ca_bundle,
                champion=promotion.champion,
                champion_margin=promotion.champion_margin,
                data=params["data"],
                image=job.step.image,
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                pipeline_name=job.pipeline_name,
                **tracked,
            )
            apply_select_options(register, job.step, "register")
            _mount_registry_credentials(register, promotion)
            _tracking_secret(register, job)
    return outputs


def _mount_registry_credentials(task: Any, promotion: Any) -> None:
    """--registry-token-secret and --registry-ca-configmap, mounted where the step's token_file and ca_bundle
    point (yolokf.promotion.plan), so no YAML needs editing."""
    from kfp import kubernetes

    # Imported on use, for start-up time: a pipeline without a register step does not load it.
    from yolokf.promotion.plan import CA_CONFIGMAP_PATH, TOKEN_SECRET_PATH

    if promotion.token_secret:
        kubernetes.use_secret_as_volume(task, secret_name=promotion.token_secret, mount_path=TOKEN_SECRET_PATH)
    if promotion.ca_configmap:
        kubernetes.use_config_map_as_volume(task, config_map_name=promotion.ca_configmap, mount_path=CA_CONFIGMAP_PATH)


def _tracking_inputs(job: Job) -> dict[str, Any]:
    """The steps' MLflow inputs (issue 25): `--mlflow`'s settings, compiled in, and the KFP run's id. Only with
    --mlflow: the run id makes each run's inputs its own, so KFP's cache never hands back a step that logged nothing
    to this run's MLflow run."""
    if not job.tracking.active:
        return {}
    return {"mlflow": job.tracking.step_input(), "kfp_run": dsl.PIPELINE_JOB_ID_PLACEHOLDER}


def _tracking_secret(task: Any, job: Job) -> None:
    """--mlflow-secret: its keys as MLflow's credential variables in the step's pod (each optional); never values."""
    from kfp import kubernetes

    for name in SECRET_ENV if job.tracking.secret else ():
        kubernetes.use_secret_as_env(
            task, secret_name=job.tracking.secret, secret_key_to_env={name: name}, optional=True
        )


# ultralytics' export formats that need a CUDA device (TensorRT); the others export and run on the CPU.
GPU_FORMATS = ("engine",)


def _one_gpu(job: Job, needs_gpu: bool) -> Any:
    """The step options of a promote step: one accelerator when the training held any and the step can use it."""
    return dataclasses.replace(job.step, gpus=1 if needs_gpu and job.step.gpus else None)


def _one_device(job: Job, needs_gpu: bool, params: dict[str, Any]) -> Any:
    """The ultralytics device of a promote step: the run's own when the pipeline decides no GPUs (--gpus unset)."""
    if job.step.gpus is None:
        return params["device"]
    return "0" if needs_gpu and job.step.gpus else "cpu"


def _trainjob(job: Job) -> dict[str, Any]:
    """The TrainJob a cluster's launcher creates (the run's name and values put in by the step); none locally."""
    if job.step.image == "local":
        return {}
    # Imported on use, for start-up time: a one-pod pipeline does not load it.
    from yolokf.pipeline.trainjob import build_trainjob, trainjob_dict

    return trainjob_dict(build_trainjob(job))


def _training_task(job: Job, **inputs: Any) -> Any:
    """The training task with its pod settings and retries: one pod, or with `--nodes N` the launcher, which
    holds no GPU itself (the TrainJob's nodes get them, yolokf.pipeline.trainjob)."""
    if job.step.nodes > 1:
        task = train_nodes_component()(nodes=job.step.nodes, trainjob=_trainjob(job), **inputs)
        apply_step_options(task, launcher_options(job.step))
    else:
        task = yolo_train(**inputs)
        apply_step_options(task, job.step)
    _tracking_secret(task, job)
    return task


def build_pipeline(job: Job) -> Any:
    """The `yolov8-train` pipeline: one parameter per training field, `job.config`'s values as the defaults.

    The download step comes first and decides from the run's `data` what the steps read (`_dataset_inputs`).
    With promote flags, evaluation, exports, a quality gate and registration follow the training step.
    """
    returns = _outputs("Outputs", PipelineOutputs, job)

    def yolov8_train(params: dict[str, Any]) -> Any:
        inputs = _dataset_inputs(job, params["data"])
        task = _training_task(
            job,
            **params,
            checkpoint_dir=job.step.checkpoint_path,
            run_key=job.step.run_key or "",
            **inputs,
            **_tracking_inputs(job),
        )
        promoted = _promote(job, task.outputs["weights"], params, inputs)
        return returns(
            weights=task.outputs["weights"],
            metrics=task.outputs["metrics"],
            report=task.outputs["report"],
            run_dir=task.outputs["run_dir"],
            **promoted,
        )

    description = f"Train an Ultralytics YOLO model (yolokf {__version__})."
    return _pipeline(job, yolov8_train, PIPELINE_NAME, returns, description)


class EvaluateOutputs(NamedTuple):
    pass


def build_evaluate_pipeline(job: Job) -> Any:
    """The `yolov8-evaluate` pipeline: the promote steps on existing weights (`--model`, imported by URI)."""
    returns = _outputs("Outputs", EvaluateOutputs, job)

    def yolov8_evaluate(params: dict[str, Any]) -> Any:
        inputs = _dataset_inputs(job, params["data"])
        weights = dsl.importer(artifact_uri=params["model"], artifact_class=Model, reimport=False)
        weights.set_display_name("weights")
        return returns(**_promote(job, weights.output, params, inputs))

    description = f"Evaluate, export and register an Ultralytics YOLO model (yolokf {__version__})."
    return _pipeline(job, yolov8_evaluate, EVALUATE_PIPELINE_NAME, returns, description)


def build_sweep_pipeline(job: Job, sweep: "Sweep") -> Any:
    """The `yolov8-tune` pipeline: the training fields and `trials` (the drawn trials) as parameters; each round
    a ParallelFor of the training component over the trials still in, limited to `sweep.parallel` at once, and
    a selection step; the last round's report step hands on the best weights."""
    rounds = sweep.rounds
    returns = _outputs("Outputs", SweepOutputs, job)
    select_trials, sweep_report = sweep_components()

    def yolov8_tune(params: dict[str, Any]) -> Any:
        trials: Any = params.pop("trials")
        history: Any
        items, history = trials, []
        inputs = _dataset_inputs(job, params["data"])
        for index in range(len(rounds)):
            last = index == len(rounds) - 1
            with dsl.ParallelFor(items, parallelism=sweep.parallel) as item:
                task = _training_task(
                    job,
                    **params,
                    trial=item,
                    trials=trials,
                    sweep=sweep.round_spec(index),
                    checkpoint_dir=job.step.checkpoint_path,
                    **inputs,
                    **_tracking_inputs(job),
                )
                task.set_display_name(f"trial round {index + 1}" if sweep.halving else "trial")
            results = dsl.Collected(task.outputs["summary"])
            if last:
                break
            selection = select_trials(
                results=results,
                history=history,
                metric=sweep.metric,
                mode=sweep.mode,
                trials=trials,
                epochs=params["epochs"],
                sweep=sweep.round_spec(index),
            )
            apply_select_options(selection, job.step, f"select round {index + 1}")
            items, history = selection.outputs["Output"], selection.outputs["records"]
        summary = sweep_report(
            results=results, history=history, metric=sweep.metric, mode=sweep.mode, rounds=len(rounds)
        )
        apply_select_options(summary, job.step, "best trial")
        return returns(
            best=summary.outputs["best"],
            metrics=summary.outputs["metrics"],
            report=summary.outputs["report"],
            table=summary.outputs["table"],
            trials=summary.outputs["Output"],
            **_promote(job, summary.outputs["best"], params, inputs),
        )

    description = f"Tune an Ultralytics YOLO model: {len(sweep.trials)} trials (yolokf {__version__})."
    return _pipeline(job, yolov8_tune, SWEEP_PIPELINE_NAME, returns, description)


def build(job: Job) -> Any:
    """The pipeline `job` runs: a sweep's, an evaluation's of existing weights, or the training pipeline."""
    if job.sweep:
        return build_sweep_pipeline(job, job.sweep)
    return build_evaluate_pipeline(job) if job.evaluate_only else build_pipeline(job)


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
    pipeline = build(job)
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


def pipeline_yaml(job: Job) -> str:
    """The pipeline YAML as text (`--out -`)."""
    with tempfile.TemporaryDirectory(prefix="yolokf-compile-") as tmp:
        return compile_pipeline(job, Path(tmp) / "pipeline.yaml").read_text()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
