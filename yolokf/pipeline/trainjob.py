"""The Kubeflow Trainer `TrainJob` that trains a `--nodes N` job across nodes (issue 19), built from the
`kubeflow-trainer-api` models (Trainer v2.3's own generated API types).

The runtime (`torch-distributed` unless `--training-runtime`) starts `torchrun` on every node with `PET_NNODES`,
`PET_NPROC_PER_NODE`, `PET_NODE_RANK`, `PET_MASTER_ADDR` and `PET_MASTER_PORT`, which torchrun reads as its
defaults; the TrainJob gives the node count, the processes per node (`--gpus`, 1 on CPU), each node's resources,
the step's image, the command that starts yolokf's distributed worker, and a runtime patch (manager `yolokf`,
replicated job `node`) for what the step's pod settings give the one-pod step: /dev/shm, node selector,
tolerations, pull secrets and the data and checkpoint PVCs.

The generated models ignore a key they do not know (`from_dict`) and pydantic drops unknown keywords, so
`check_fields` walks an object against the models' own field names: a misspelt field fails here, before a cluster
would refuse it.
"""

from __future__ import annotations

import json
import types
import typing
from typing import TYPE_CHECKING, Any

from yolokf.core.errors import UsageError
from yolokf.core.mounts import CHECKPOINT_PVC_PATH, DATA_PVC_PATH, SHM_PATH
from yolokf.training.preflight import CHECKPOINT_VOLUME, DATA_VOLUME, RBAC_RULES

if TYPE_CHECKING:
    from yolokf.pipeline.job import Job

API_VERSION = "trainer.kubeflow.org/v1alpha1"
KIND = "TrainJob"
PATCH_MANAGER = "yolokf.kubeflow.org/launcher"
NODE_JOB = "node"  # the runtime's replicated job and its container, as in torch-distributed
RUN_NAME_PLACEHOLDER = "<run-name>"


def _models() -> Any:
    import kubeflow_trainer_api.models as models

    return models


def check_fields(model: Any, value: Any, where: str = "") -> None:
    """UsageError naming the first key in `value` (camelCase JSON) that `model` does not define."""
    import pydantic

    if isinstance(value, list):
        for index, item in enumerate(value):
            check_fields(model, item, f"{where}[{index}]")
        return
    if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)) or not isinstance(value, dict):
        return
    if "actual_instance" in model.model_fields:  # a oneOf wrapper such as Quantity: a plain value
        return
    fields = {(info.alias or name): info.annotation for name, info in model.model_fields.items()}
    for key, item in value.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise UsageError(f"{model.__name__} has no field {where}.{key}; known: {known}.".replace(" .", " "))
        check_fields(_inner(fields[key]), item, f"{where}.{key}" if where else key)


def _inner(annotation: Any) -> Any:
    """The model inside Optional[...], List[...] or Dict[str, ...]."""
    while typing.get_origin(annotation) in (typing.Union, types.UnionType, list, dict):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[-1] if args else None
    return annotation


def build_trainjob(job: Job, name: str = RUN_NAME_PLACEHOLDER) -> Any:
    """The TrainJob the launcher creates for `job` (a `--nodes N` job planned for a cluster)."""
    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.training.launch import cluster_request
    from yolokf.training.train import Attempt

    models = _models()
    step = job.step
    # The compiled request: the job's training values (the launcher puts in the run's own) and checkpoint folder.
    attempt = Attempt(CHECKPOINT_PVC_PATH, step.run_key or "")
    request = cluster_request(job.config, attempt, step.nodes)
    quantities: dict[str, Any] = {}
    if step.gpus:
        quantities[step.accelerator_type] = models.IoK8sApimachineryPkgApiResourceQuantity(str(step.gpus))
    if step.cpu:
        quantities["cpu"] = models.IoK8sApimachineryPkgApiResourceQuantity(step.cpu)
    if step.memory:
        quantities["memory"] = models.IoK8sApimachineryPkgApiResourceQuantity(step.memory)
    volumes, mounts = [], []
    if step.shm_size:
        volumes.append(
            models.IoK8sApiCoreV1Volume(
                name="dshm",
                empty_dir=models.IoK8sApiCoreV1EmptyDirVolumeSource(
                    medium="Memory", size_limit=models.IoK8sApimachineryPkgApiResourceQuantity(step.shm_size)
                ),
            )
        )
        mounts.append(models.IoK8sApiCoreV1VolumeMount(name="dshm", mount_path=SHM_PATH))
    for volume, claim, path in (
        (DATA_VOLUME, step.data_pvc, DATA_PVC_PATH),
        (CHECKPOINT_VOLUME, step.checkpoint_pvc, CHECKPOINT_PVC_PATH),
    ):
        if claim:
            source = models.IoK8sApiCoreV1PersistentVolumeClaimVolumeSource(claim_name=claim)
            volumes.append(models.IoK8sApiCoreV1Volume(name=volume, persistent_volume_claim=source))
            mounts.append(models.IoK8sApiCoreV1VolumeMount(name=volume, mount_path=path))
    pod = models.TrainerV1alpha1PodSpecPatch(
        containers=[models.TrainerV1alpha1ContainerPatch(name=NODE_JOB, volume_mounts=mounts or None)],
        volumes=volumes or None,
        node_selector=dict(step.node_selector) or None,
        tolerations=[
            models.IoK8sApiCoreV1Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect)
            for t in step.tolerations
        ]
        or None,
        image_pull_secrets=[models.IoK8sApiCoreV1LocalObjectReference(name=s) for s in step.image_pull_secrets] or None,
    )
    patch = models.TrainerV1alpha1RuntimePatch(
        manager=PATCH_MANAGER,
        training_runtime_spec=models.TrainerV1alpha1TrainingRuntimeSpecPatch(
            template=models.TrainerV1alpha1JobSetTemplatePatch(
                spec=models.TrainerV1alpha1JobSetSpecPatch(
                    replicated_jobs=[
                        models.TrainerV1alpha1ReplicatedJobPatch(
                            name=NODE_JOB,
                            template=models.TrainerV1alpha1JobTemplatePatch(
                                spec=models.TrainerV1alpha1JobSpecPatch(
                                    template=models.TrainerV1alpha1PodTemplatePatch(spec=pod)
                                )
                            ),
                        )
                    ]
                )
            )
        ),
    )
    trainer = models.TrainerV1alpha1Trainer(
        image=step.image,
        command=["torchrun"],  # its --nnodes, --node-rank, --master-addr... come from the runtime's PET_* variables
        args=["-m", "yolokf.training.node", json.dumps(request, sort_keys=True)],
        num_nodes=step.nodes,
        num_proc_per_node=step.gpus or 1,
        resources_per_node=models.IoK8sApiCoreV1ResourceRequirements(limits=quantities, requests=quantities)
        if quantities
        else None,
    )
    return models.TrainerV1alpha1TrainJob(
        api_version=API_VERSION,
        kind=KIND,
        metadata=models.IoK8sApimachineryPkgApisMetaV1ObjectMeta(name=name),
        spec=models.TrainerV1alpha1TrainJobSpec(
            runtime_ref=models.TrainerV1alpha1RuntimeRef(
                name=step.training_runtime, api_group="trainer.kubeflow.org", kind="ClusterTrainingRuntime"
            ),
            trainer=trainer,
            runtime_patches=[patch],
            active_deadline_seconds=step.step_timeout,
        ),
    )


def trainjob_dict(trainjob: Any) -> dict[str, Any]:
    """The TrainJob as the API takes it (camelCase, no unset fields), checked field by field against the models."""
    value = trainjob.to_dict()
    check_fields(_models().TrainerV1alpha1TrainJob, value)
    return value


def trainjob_yaml(job: Job, name: str = RUN_NAME_PLACEHOLDER) -> str:
    import yaml

    return yaml.safe_dump(trainjob_dict(build_trainjob(job, name)), sort_keys=False)


def rbac_yaml(namespace: str = "kubeflow", service_account: str = "pipeline-runner") -> str:
    """The Role and RoleBinding that let the pipeline's service account run the `--nodes` launcher: standalone
    KFP's `pipeline-runner` has no rights on trainer.kubeflow.org (Kubeflow's `default-editor` has them through
    `kubeflow-edit`). Built from the official client's models."""
    import yaml
    from kubernetes import client

    name = "yolokf-trainjobs"
    role = client.V1Role(
        api_version="rbac.authorization.k8s.io/v1",
        kind="Role",
        metadata=client.V1ObjectMeta(name=name, namespace=namespace),
        rules=[client.V1PolicyRule(api_groups=[g], resources=[r], verbs=list(v)) for g, r, v in RBAC_RULES],
    )
    binding = client.V1RoleBinding(
        api_version="rbac.authorization.k8s.io/v1",
        kind="RoleBinding",
        metadata=client.V1ObjectMeta(name=name, namespace=namespace),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=name),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name=service_account, namespace=namespace)],
    )
    serialize = client.ApiClient().sanitize_for_serialization
    return yaml.safe_dump_all([serialize(role), serialize(binding)], sort_keys=False)
