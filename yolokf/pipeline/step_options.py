"""How the pipeline's steps run as pods: image, GPUs, /dev/shm, resources, scheduling, data, checkpoints.

All step settings are checked and applied here, in one place, for compile and remote run alike
(docs/cluster.md). kfp.local ignores them, so local runs are unaffected; only the checkpoint folder and run
key reach the training code itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from yolokf.core.devices import GPUS_ENV
from yolokf.core.errors import UsageError
from yolokf.core.mounts import (
    AMBIENT_CREDENTIALS,
    CHECKPOINT_PVC_PATH,
    DATA_CACHE_PATH,
    DATA_PVC_PATH,
    SHM_PATH,
    WORKERS_ENV,
)

DEFAULT_ACCELERATOR = "nvidia.com/gpu"
DEFAULT_SHM_SIZE = "8Gi"
DEFAULT_TRAINING_RUNTIME = "torch-distributed"  # Kubeflow Trainer's ClusterTrainingRuntime for torchrun
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# Secret keys (as `kubectl create secret generic NAME --from-literal=KEY=...` writes them) -> environment
# variables boto3 reads. MinIO's console creates the same AWS_* keys.
SECRET_ENV = {
    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
}
OPTIONAL_SECRET_ENV = {"AWS_SESSION_TOKEN": "AWS_SESSION_TOKEN"}
# Retry backoff: 30 s, 60 s, 120 s ... capped at one hour in total (kfp's set_retry).
RETRY_BACKOFF = "30s"
LOCAL_RETRY_BACKOFF = "1s"  # kfp.local: no node to wait for, the step restarts at once
RETRY_BACKOFF_FACTOR = 2.0
RETRY_BACKOFF_MAX = "3600s"
# The `--nodes` launcher pod outlives its TrainJob's deadline by this much: its image pull and start before it
# creates the TrainJob, then a watch window and the delete of a TrainJob past its deadline (launcher_timeout).
LAUNCHER_GRACE = 600

# Patterns, compiled on first use by re's cache (compiling all at import cost 10 ms of every start).
# kfp's own checks (kfp/dsl/pipeline_task.py), narrowed to what Kubernetes also accepts ("K" is not a
# Kubernetes suffix although kfp takes it): whole numbers with a binary or decimal unit.
_MEMORY = r"^[1-9][0-9]*(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
_CPU = r"^(([0-9]*\.)?[0-9]+|[0-9]+m)$"
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_QUALIFIED_NAME = rf"^({_DNS_SUBDOMAIN}/)?{_NAME}$"
_RESOURCE_NAME = rf"^{_DNS_SUBDOMAIN}/{_NAME}$"
_LABEL_VALUE = rf"^({_NAME})?$"
_OBJECT_NAME = rf"^{_DNS_SUBDOMAIN}$"
_RUN_KEY = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


@dataclass(frozen=True)
class Toleration:
    """One pod toleration, parsed from kubectl-taint syntax."""

    key: str | None
    operator: str
    value: str | None
    effect: str | None


@dataclass(frozen=True)
class StepOptions:
    """Kubernetes-side settings of the pipeline's steps, plus where the training step keeps checkpoints.

    Field names are the CLI flags' (`--node-selector` -> node_selector); the CLI's parsers hand over typed
    values (pairs, tolerations, seconds), and `__post_init__` refuses what Kubernetes or kfp would refuse.
    """

    image: str = ""  # "" until the job is planned: the image build-image made, --image, or "local"
    gpus: int | None = None  # None: no accelerator request, ultralytics picks the device
    nodes: int = 1  # --nodes: training nodes, each with `gpus` (issue 19); fixed at compile time
    training_runtime: str = DEFAULT_TRAINING_RUNTIME  # --training-runtime: the TrainJob's runtimeRef
    accelerator_type: str = DEFAULT_ACCELERATOR
    shm_size: str | None = DEFAULT_SHM_SIZE  # None: no memory-backed /dev/shm
    cpu: str | None = None
    memory: str | None = None
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    image_pull_secrets: tuple[str, ...] = ()
    image_pull_policy: str | None = None
    pod_labels: tuple[tuple[str, str], ...] = ()
    pod_annotations: tuple[tuple[str, str], ...] = ()
    step_timeout: int | None = None  # seconds, the pod's activeDeadlineSeconds
    retries: int = 0
    data_secret: str | None = None
    s3_endpoint_url: str | None = None
    data_pvc: str | None = None  # the PVC mounted at DATA_PVC_PATH (--data-pvc, or pvc:// in --data)
    data_cache_pvc: str | None = None  # the dataset cache, mounted at DATA_CACHE_PATH (yolokf.data.cache)
    fetch_workers: int | None = None  # objects the download step fetches at once; None: its default
    checkpoint_pvc: str | None = None
    checkpoint_dir: str | None = None
    run_key: str | None = None

    def __post_init__(self) -> None:
        for name in ("node_selector", "tolerations", "image_pull_secrets", "pod_labels", "pod_annotations"):
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))  # repeatable flags come as lists
        if self.shm_size in ("", "0"):
            object.__setattr__(self, "shm_size", None)
        check_step_options(self)

    @property
    def checkpoint_path(self) -> str:
        """Where the training step keeps `<run key>/weights/last.pt`; '' when checkpoints are off."""
        if self.checkpoint_pvc:
            return CHECKPOINT_PVC_PATH
        return self.checkpoint_dir or ""

    def for_local(self) -> StepOptions:
        """What a kfp.local run keeps: the checkpoint folder and run key; cluster settings do not apply there."""
        local_dir = str(Path(self.checkpoint_dir).expanduser().resolve()) if self.checkpoint_dir else None
        # Object-store credentials come from this machine's environment (boto3's usual chain).
        return StepOptions(
            image="local",
            shm_size=None,
            data_secret=AMBIENT_CREDENTIALS,
            s3_endpoint_url=self.s3_endpoint_url,
            checkpoint_dir=local_dir,
            run_key=self.run_key,
            nodes=self.nodes,  # locally: torchrun processes on the loopback address (yolokf.training.launch)
            retries=self.retries,  # kfp.local restarts a failed step too (a lost node, a killed process)
        )


def parse_pair(item: str, flag: str) -> tuple[str, str]:
    """One `KEY=VALUE` item of a repeatable flag; Kubernetes label syntax is checked by StepOptions."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"{flag} {item!r} is not KEY=VALUE; for example {flag} cloud.google.com/gke-spot=true")
    return key.strip(), value.strip()


def parse_toleration(text: str) -> Toleration:
    """kubectl-taint syntax: `key=value:Effect` (Equal), `key:Effect` or `key` (Exists), `:Effect` / `*` (all)."""
    spec, _, effect = text.partition(":") if ":" in text else (text, "", "")
    hint = "use KEY=VALUE:EFFECT, KEY:EFFECT or KEY, for example --toleration nvidia.com/gpu=present:NoSchedule"
    if ":" in text and not effect:
        raise UsageError(f"--toleration {text!r} has an empty effect; {hint}.")
    if effect and effect not in TAINT_EFFECTS:
        raise UsageError(f"--toleration {text!r}: effect must be one of {', '.join(TAINT_EFFECTS)}; {hint}.")
    key, sep, value = spec.partition("=")
    key, value = key.strip(), value.strip()
    if key in ("", "*") and not sep:
        return Toleration(key=None, operator="Exists", value=None, effect=effect or None)
    if not key or not re.match(_QUALIFIED_NAME, key) or (sep and not re.match(_LABEL_VALUE, value)):
        raise UsageError(f"--toleration {text!r} is not a valid toleration; {hint}.")
    if sep:
        return Toleration(key=key, operator="Equal", value=value, effect=effect or None)
    return Toleration(key=key, operator="Exists", value=None, effect=effect or None)


def parse_duration(text: str | None, flag: str = "--step-timeout") -> int | None:
    """`90`, `45s`, `30m`, `12h`, `2d` or `1h30m` as seconds; None for no limit."""
    if text is None or text.strip() == "":
        return None
    raw = text.strip()
    if raw.isdigit():
        seconds = int(raw)
    else:
        parts = re.fullmatch(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", raw)
        if not parts or not any(parts.groups()):
            raise UsageError(f"{flag} {text!r} is not a duration; use seconds or units, for example 90m, 12h or 1h30m.")
        d, h, m, s = (int(g or 0) for g in parts.groups())
        seconds = ((d * 24 + h) * 60 + m) * 60 + s
    if seconds < 1:
        raise UsageError(f"{flag} must be at least one second; leave it out for no limit.")
    return seconds


def check_step_options(options: StepOptions) -> None:
    """Raise a UsageError for any setting Kubernetes or kfp would refuse, before anything is written."""
    if options.gpus is not None:
        if isinstance(options.gpus, bool) or not isinstance(options.gpus, int) or options.gpus < 0:
            # kubeflow/pipelines#12865: kfp before 2.17 took only 0, 1, 2, 4, 8 or 16; 2.17 takes any count >= 0.
            raise UsageError(f"--gpus must be a whole number of at least 0 (0 trains on CPU), got {options.gpus!r}.")
        if options.gpus > 0 and not re.match(_RESOURCE_NAME, options.accelerator_type):
            raise UsageError(
                f"--accelerator-type {options.accelerator_type!r} is not a Kubernetes extended resource name "
                "(DOMAIN/NAME); use the name your device plugin advertises, such as nvidia.com/gpu or amd.com/gpu."
            )
    if isinstance(options.nodes, bool) or not isinstance(options.nodes, int) or options.nodes < 1:
        raise UsageError(f"--nodes must be a whole number of at least 1, got {options.nodes!r}.")
    if not re.match(_OBJECT_NAME, options.training_runtime):
        raise UsageError(
            f"--training-runtime {options.training_runtime!r} is not a Kubernetes object name; give the name of a "
            "ClusterTrainingRuntime, such as torch-distributed (kubectl get clustertrainingruntimes)."
        )
    if options.shm_size is not None:
        _check_quantity(options.shm_size, "--shm-size", "8Gi")
    if options.memory is not None:
        _check_quantity(options.memory, "--memory", "32Gi")
    if options.cpu is not None and (not re.match(_CPU, options.cpu) or float(options.cpu.rstrip("m")) == 0):
        raise UsageError(
            f"--cpu {options.cpu!r} is not a CPU quantity; use cores or millicores, such as 4, 0.5 or 500m."
        )
    for flag, pairs, key_only in (
        ("--node-selector", options.node_selector, False),
        ("--pod-label", options.pod_labels, False),
        ("--pod-annotation", options.pod_annotations, True),
    ):
        for key, value in pairs:
            if not re.match(_QUALIFIED_NAME, key) or len(key.rpartition("/")[2]) > 63:
                raise UsageError(f"{flag} {key}={value}: {key!r} is not a Kubernetes label key (PREFIX/NAME).")
            if not key_only and (not re.match(_LABEL_VALUE, value) or len(value) > 63):
                raise UsageError(
                    f"{flag} {key}={value}: {value!r} is not a Kubernetes label value "
                    "(at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)."
                )
    if options.image_pull_policy is not None and options.image_pull_policy not in PULL_POLICIES:
        raise UsageError(
            f"--image-pull-policy must be one of {', '.join(PULL_POLICIES)}, got {options.image_pull_policy!r}."
        )
    for flag, name in (
        *(("--image-pull-secret", s) for s in options.image_pull_secrets),
        ("--data-secret", None if options.data_secret == AMBIENT_CREDENTIALS else options.data_secret),
        ("--data-pvc", options.data_pvc),
        ("--data-cache-pvc", options.data_cache_pvc),
        ("--checkpoint-pvc", options.checkpoint_pvc),
    ):
        if name is not None and not re.match(_OBJECT_NAME, name):
            raise UsageError(f"{flag} {name!r} is not a Kubernetes object name (lowercase letters, digits, '-', '.').")
    if options.fetch_workers is not None and options.fetch_workers < 1:
        raise UsageError(f"--fetch-workers must be at least 1, got {options.fetch_workers}.")
    if options.step_timeout is not None and options.step_timeout < 1:
        raise UsageError("--step-timeout must be at least one second; leave it out for no limit.")
    if isinstance(options.retries, bool) or not isinstance(options.retries, int) or options.retries < 0:
        raise UsageError(f"--retries must be a whole number of at least 0, got {options.retries!r}.")
    if options.s3_endpoint_url is not None and not re.match(r"^https?://[^/\s]+", options.s3_endpoint_url):
        raise UsageError(
            f"--s3-endpoint-url {options.s3_endpoint_url!r} is not an http(s) URL; "
            "for MinIO in the cluster use e.g. http://minio.minio.svc:9000."
        )
    if options.checkpoint_pvc and options.checkpoint_dir:
        raise UsageError("Give --checkpoint-pvc or --checkpoint-dir, not both.")
    if options.run_key is not None and not re.match(_RUN_KEY, options.run_key):
        raise UsageError(
            f"--run-key {options.run_key!r} must be 1-128 letters, digits, '.', '_' or '-' (it names a folder)."
        )


def _check_quantity(value: str, flag: str, example: str) -> None:
    if not re.match(_MEMORY, value):
        raise UsageError(
            f"{flag} {value!r} is not a Kubernetes quantity kfp accepts; "
            f"use a whole number with a unit, such as {example}, 512Mi or 1G."
        )


def apply_step_options(task: Any, options: StepOptions, name: str = "train") -> None:
    """Apply `options` to a task that trains or runs the model (train, evaluate, export) with kfp's task methods
    and kfp-kubernetes, its retries (`apply_retries`) included."""
    from kfp import kubernetes

    _apply_common(task, options)
    task.set_display_name(name)
    apply_retries(task, options)
    if options.gpus:
        task.set_accelerator_type(options.accelerator_type)
        task.set_accelerator_limit(options.gpus)
        task.set_env_variable(GPUS_ENV, str(options.gpus))  # the step's own GPU rule (yolokf.core.devices)
        if options.gpus > 1:
            # torch.distributed.run (ultralytics' DDP launcher) with MKL's Intel threading layer next to
            # libgomp fails at import ("MKL_THREADING_LAYER=INTEL is incompatible with libgomp").
            task.set_env_variable("MKL_THREADING_LAYER", "GNU")
    if options.shm_size:
        # kubeflow/pipelines#9893: /dev/shm is 64 MB in pods; DataLoader workers and NCCL need more.
        kubernetes.empty_dir_mount(
            task, volume_name="dshm", mount_path=SHM_PATH, medium="Memory", size_limit=options.shm_size
        )
    if options.cpu:
        task.set_cpu_request(options.cpu)
        task.set_cpu_limit(options.cpu)
    if options.memory:
        task.set_memory_request(options.memory)
        task.set_memory_limit(options.memory)
    for key, value in options.node_selector:
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    if options.step_timeout:
        kubernetes.set_timeout(task, seconds=options.step_timeout)
    if options.data_pvc:
        kubernetes.mount_pvc(task, pvc_name=options.data_pvc, mount_path=DATA_PVC_PATH)
    if options.data_cache_pvc:  # the dataset is read in place where the download step left it
        kubernetes.mount_pvc(task, pvc_name=options.data_cache_pvc, mount_path=DATA_CACHE_PATH)
    if options.checkpoint_pvc:
        kubernetes.mount_pvc(task, pvc_name=options.checkpoint_pvc, mount_path=CHECKPOINT_PVC_PATH)


def launcher_timeout(step_timeout: int | None) -> int | None:
    """The `--nodes N` launcher pod's activeDeadlineSeconds: the TrainJob's (`--step-timeout`) and LAUNCHER_GRACE
    more. The launcher starts before its TrainJob and times it from its create, so with the same deadline the
    kubelet would kill the launcher first and its own timeout branch, which deletes the TrainJob, would never run."""
    return step_timeout + LAUNCHER_GRACE if step_timeout else None


def launcher_options(options: StepOptions) -> StepOptions:
    """A `--nodes N` launcher step's pod: the step's pulls, metadata, tolerations and checkpoint PVC (where rank 0
    leaves its result), the TrainJob's timeout and a grace to clean up (`launcher_timeout`); no accelerators, CPU,
    memory or node selector: the TrainJob's nodes get those."""
    return replace(
        options,
        gpus=None,
        cpu=None,
        memory=None,
        node_selector=(),
        shm_size=None,
        step_timeout=launcher_timeout(options.step_timeout),
    )


def apply_fetch_options(task: Any, options: StepOptions) -> None:
    """Apply `options` to the dataset download task: image, pulls, pod metadata, tolerations, credentials, the
    dataset cache and how many objects it fetches at once; never KFP's cache.

    No GPUs, shm, node selector or time limit: the download needs none, and should not hold a GPU node.
    """
    from kfp import kubernetes

    _apply_common(task, options)
    task.set_display_name("fetch-dataset")
    # KFP's cache keys a task on its inputs: the same s3:// prefix or https:// URL would hand back the last run's
    # download after the objects under it changed. So the step reads its source every run (with --data-cache-pvc
    # only a listing and the changed objects), and `run --cache` leaves it off (yolokf.runs.submit.disable_caching).
    task.set_caching_options(False)
    if options.data_secret and options.data_secret != AMBIENT_CREDENTIALS:
        kubernetes.use_secret_as_env(task, secret_name=options.data_secret, secret_key_to_env=SECRET_ENV)
        # A session token only exists for temporary credentials: an optional second mapping.
        kubernetes.use_secret_as_env(
            task, secret_name=options.data_secret, secret_key_to_env=OPTIONAL_SECRET_ENV, optional=True
        )
    if options.s3_endpoint_url:
        task.set_env_variable("AWS_ENDPOINT_URL", options.s3_endpoint_url)
    if options.data_cache_pvc:
        kubernetes.mount_pvc(task, pvc_name=options.data_cache_pvc, mount_path=DATA_CACHE_PATH)
    if options.fetch_workers:
        task.set_env_variable(WORKERS_ENV, str(options.fetch_workers))


def apply_select_options(task: Any, options: StepOptions, name: str) -> None:
    """Apply `options` to a sweep's selection step: image, pulls, pod metadata, tolerations, the checkpoint PVC
    (where the trials left their weights). No GPUs: it only ranks trials and copies the best weights."""
    from kfp import kubernetes

    _apply_common(task, options)
    task.set_display_name(name)
    if options.checkpoint_pvc:
        kubernetes.mount_pvc(task, pvc_name=options.checkpoint_pvc, mount_path=CHECKPOINT_PVC_PATH)


def _apply_common(task: Any, options: StepOptions) -> None:
    from kfp import kubernetes

    # = task.set_container_image(image) for a static image, without its inspect.stack() call, which costs
    # 0.4 s under the CLI's call stack (kfp 2.17 PipelineTask._ensure_container_spec_exists).
    task.container_spec.image = options.image
    if options.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(options.image_pull_secrets))
    if options.image_pull_policy:
        kubernetes.set_image_pull_policy(task, options.image_pull_policy)
    for key, value in options.pod_labels:
        kubernetes.add_pod_label(task, label_key=key, label_value=value)
    for key, value in options.pod_annotations:
        kubernetes.add_pod_annotation(task, annotation_key=key, annotation_value=value)
    for tol in options.tolerations:
        kubernetes.add_toleration(task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect)  # type: ignore[arg-type]


def apply_retries(task: Any, options: StepOptions) -> None:
    """`--retries`: restart a pod that runs the model after a failure (a reclaimed or preempted node, an OOM kill, a
    network error): training, resuming from its checkpoint, and evaluation and exports, which start again. Not the
    quality gate or registration: a retry cannot fix a missed gate or refused credentials, so those fail at once;
    the download and registration steps retry network errors themselves, in the step (docs/cluster.md,
    "Retries")."""
    if options.retries:
        task.set_retry(
            num_retries=options.retries,
            backoff_duration=LOCAL_RETRY_BACKOFF if options.image == "local" else RETRY_BACKOFF,
            backoff_factor=RETRY_BACKOFF_FACTOR,
            backoff_max_duration=RETRY_BACKOFF_MAX,
        )
