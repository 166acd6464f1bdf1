"""One training job, resolved once: what `compile` writes, what a local run runs and what `run --host` submits.

`plan_job` turns the user's training fields and step settings into the values the training step will
receive: the ultralytics device for `--gpus`, a PVC dataset as its path inside the pod, a remote dataset as
a download step. The compiled pipeline's parameter defaults and the run arguments of `run --host` are both
`job.config.parameters()`, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from yolokf.core.devices import device_for_gpus
from yolokf.core.errors import UsageError
from yolokf.core.mounts import AMBIENT_CREDENTIALS
from yolokf.core.settings import PromoteOptions, TrainConfig
from yolokf.data.sources import DataSource, check_nodes_data, is_remote, parse_data_uri, pvc_source
from yolokf.pipeline.step_options import StepOptions
from yolokf.tracking.plan import MLFLOW_REGISTRY, Tracking

if TYPE_CHECKING:
    from yolokf.promotion.plan import Promotion
    from yolokf.sweeps.plan import Sweep

PIPELINE_NAME = "yolov8-train"
SWEEP_PIPELINE_NAME = "yolov8-tune"
EVALUATE_PIPELINE_NAME = "yolov8-evaluate"


@dataclass(frozen=True)
class Job:
    """A training job as every face of yolokf runs it."""

    config: TrainConfig  # the values the training step receives
    step: StepOptions  # how its pods run
    source: DataSource | None = None  # a dataset that is not on this machine: downloaded, or a mounted PVC
    sweep: Sweep | None = None  # `yolokf tune`: the trials and rounds the pipeline runs
    promotion: Promotion | None = None  # evaluate, export, gate, register after training (promote flags)
    evaluate_only: bool = False  # `yolokf evaluate`: `config.model` is existing weights, nothing trains
    tracking: Tracking = Tracking()  # --mlflow: where the steps log (issue 25); inactive by default
    # kfp.local on data on this machine: no download step, whose process would only pass the path on (issue 27:
    # a local run's seconds are the training's); a compiled pipeline always has it, since its run form may change
    # `data` to any kind of source.
    local_data: bool = False

    @property
    def stem(self) -> str:
        """`yolov8n-coco128`: the model's and the dataset's names, for run and registered-model names."""
        # Imported on use, for start-up time: `compile` of a plain training pipeline does not load it.
        from yolokf.promotion.plan import default_registered_model

        data = self.source.uri if self.source is not None else self.config.data
        return default_registered_model(self.config.model, data)

    @property
    def pipeline_name(self) -> str:
        if self.sweep:
            return SWEEP_PIPELINE_NAME
        return EVALUATE_PIPELINE_NAME if self.evaluate_only else PIPELINE_NAME

    def arguments(self) -> dict[str, Any]:
        """The pipeline's parameters: the compiled defaults, and the run arguments of `--host`."""
        trials = {"trials": [dict(t) for t in self.sweep.trials]} if self.sweep else {}
        return {**self.config.parameters(), **trials}

    def with_promotion(self, options: PromoteOptions) -> Job:
        """This job with the steps after training that `options` ask for (none: a plain training pipeline)."""
        if not (options.active or self.evaluate_only or options.champion or options.registered_model):
            return self  # a plain training pipeline; nothing to check or import
        # Imported on use, for start-up time: `compile` of a plain training pipeline does not load it.
        from yolokf.promotion.plan import plan_promotion, promoted_task

        local = self.step.image == "local"

        def gpu() -> bool:
            if not local:
                return bool(self.step.gpus)
            import torch

            return bool(torch.cuda.is_available())

        options = replace(options, evaluate=options.evaluate or self.evaluate_only)
        promotion = plan_promotion(options, task=promoted_task(self.config.model), stem=self.stem, gpu=gpu, local=local)
        return replace(self, promotion=promotion)

    def with_tracking(self, tracking: Tracking) -> Job:
        """This job logging to MLflow as `tracking` says; after `with_promotion` (`--registry mlflow` needs it).
        Locally the server is asked now, so a wrong password fails in one line before anything runs."""
        if self.promotion is not None and self.promotion.registry == MLFLOW_REGISTRY and not tracking.active:
            raise UsageError(
                "--registry mlflow needs --mlflow URI (or MLFLOW_TRACKING_URI): the server to register in."
            )
        if self.step.image == "local":
            tracking.check_local()
            if tracking.uri:
                # Imported on use, for start-up time: `yolokf --help` and the other commands do not load mlflow.
                from yolokf.tracking.step import check_server

                check_server(tracking.uri)
        return replace(self, tracking=tracking)

    def with_sweep(self, sweep: Sweep) -> Job:
        """This job as a sweep; refuses what a sweep cannot do with these step settings."""
        if self.step.image != "local" and not self.step.checkpoint_path:
            raise UsageError(
                "yolokf tune --host needs --checkpoint-pvc NAME: the trials keep their weights and checkpoints "
                "there for the selection steps and --halving (ReadWriteMany when trials run on several nodes); "
                "or --checkpoint-dir PATH for a volume every step's pod already mounts there."
            )
        # Across nodes (--nodes) yolokf's own distributed worker stops a round's trials on every rank together.
        if sweep.halving and "," in self.config.device and self.step.nodes == 1:
            raise UsageError(
                f"--halving stops each trial at its round's epochs, which ultralytics' multi-GPU (DDP) training "
                f"(device {self.config.device}) does not allow; give each trial one GPU and raise --parallel."
            )
        return replace(self, sweep=sweep)


def plan_job(config: TrainConfig, step: StepOptions, *, image: str) -> Job:
    """Resolve `config` and `step` for a cluster (or a compiled pipeline) running `image`."""
    if not image.strip():
        raise UsageError("--image is empty; give a tag or digest such as registry.example.com/ml/yolokf@sha256:...")
    step = replace(step, image=image)
    if step.nodes > 1 and not step.checkpoint_pvc:
        raise UsageError(
            f"--nodes {step.nodes} needs --checkpoint-pvc NAME, a ReadWriteMany PVC that every node mounts: rank 0 "
            "keeps the checkpoints and its results there for the training step and for a resume after a lost node."
        )
    check_nodes_data(config.data, step.nodes)
    source = _data_source(config.data, step)
    if source is not None and source.scheme == "pvc":
        # The run parameter stays a pvc:// URI (the download step maps it onto the mount); the mount is fixed.
        step = replace(step, data_pvc=source.bucket)
        config = config.with_overrides(data=source.uri)
    config = config.with_overrides(device=device_for_gpus(step.gpus, config.device))
    return Job(config, step, source)


def plan_local_job(config: TrainConfig, step: StepOptions) -> Job:
    """Resolve `config` and `step` for kfp.local on this machine: cluster settings do not apply."""
    local = step.for_local()
    check_nodes_data(config.data, local.nodes)  # what a cluster refuses, refused here too, before any download
    if local.nodes > 1:
        if config.device.strip().lower() not in ("", "cpu"):
            raise UsageError(
                f"yolokf run --nodes {local.nodes} without --host trains on this machine's CPU (Gloo, one process "
                f"per node); leave --device {config.device} out, or run with --host for GPU nodes."
            )
        config = config.with_overrides(device="cpu")
    source = _data_source(config.data, replace(local, data_pvc=step.data_pvc))  # pvc:// in --data, or --data-pvc
    if source is not None and source.scheme == "pvc":
        raise UsageError(
            f"{source.uri} is on a cluster volume; locally, pass the dataset's folder or YAML, or run with --host."
        )
    return Job(config, local, source, local_data=source is None)


def _data_source(data: str, step: StepOptions) -> DataSource | None:
    """The parsed `--data` when it is not on this machine; refuses what cannot work with `step`."""
    if step.data_pvc:
        return pvc_source(step.data_pvc, data)
    if not is_remote(data):
        return None
    source = parse_data_uri(data)
    if source.scheme in ("s3", "gs") and not step.data_secret:
        raise UsageError(
            f"--data {data} needs credentials: give --data-secret NAME (a Secret with AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY), or --data-secret {AMBIENT_CREDENTIALS} when the pod has them already "
            "(IRSA, Workload Identity, a public bucket)."
        )
    if source.scheme in ("http", "https", "gs") and step.s3_endpoint_url:
        raise UsageError(f"--s3-endpoint-url applies to s3:// datasets only, not {data}.")
    return source
