"""The `--nodes` launcher's checks before it creates its TrainJob (issue 19): one line for what would otherwise
fail late or silently.

- Trainer: the cluster serves Kubeflow Trainer v2's `trainjobs.trainer.kubeflow.org/v1alpha1` (API discovery, which
  every authenticated user may read), and the ClusterTrainingRuntime the TrainJob names exists (where the service
  account may read it: a cluster-scoped object needs a ClusterRole; else Trainer's webhook refuses the create, and
  the launcher reports that refusal as it is).

- Rights: one `SelfSubjectAccessReview` per verb the launcher needs (`RBAC_RULES`, from which `compile --nodes`
  writes its Role), so a service account missing some gets them all named at once, not a 403 on the watch after the
  TrainJob was created and left running.
- PVCs: the checkpoint PVC must be ReadWriteMany (and the dataset's ReadOnlyMany or ReadWriteMany): the nodes'
  pods land on different machines, and a pod whose ReadWriteOnce volume is attached elsewhere waits Pending,
  silently, until the step's timeout.
"""

from __future__ import annotations

from typing import Any

from yolokf.core.errors import TrainingError

RWX, ROX = "ReadWriteMany", "ReadOnlyMany"
# The rights the launcher needs; `compile --nodes` writes its Role from the same rules (yolokf.pipeline.trainjob).
RBAC_RULES = (
    # patch: a retried launcher adds its pod to the owners of the TrainJob it adopts (training/launch.py)
    ("trainer.kubeflow.org", "trainjobs", ("create", "get", "list", "watch", "delete", "patch")),
    ("", "pods", ("get", "list")),
    ("", "pods/log", ("get",)),
    ("", "persistentvolumeclaims", ("get",)),  # the preflight reads the PVCs' access modes
)
RBAC_ADVICE = (
    "apply yolokf's Role and RoleBinding: kubectl apply -f the -rbac.yaml that yolokf compile --nodes wrote "
    'next to the pipeline (docs/cluster.md, "Several nodes")'
)
# The TrainJob's runtime patch mounts the PVCs as these volumes; the preflight finds the claims by these names.
DATA_VOLUME, CHECKPOINT_VOLUME = "data", "checkpoints"
SHARED_STORAGE = "NFS, CephFS, Filestore, EFS..."


TRAINER_GROUP, TRAINER_VERSION = "trainer.kubeflow.org", "v1alpha1"
RUNTIME_ADVICE = (
    "name an installed one with --training-runtime (kubectl get clustertrainingruntimes), or install Trainer's "
    "runtimes (kubectl apply --server-side -k github.com/kubeflow/trainer.git/manifests/overlays/runtimes?ref=v2.3.0)"
)


def check_cluster(api_client: Any, namespace: str, body: dict[str, Any]) -> None:
    """TrainingError with one line when the cluster lacks Kubeflow Trainer or the runtime the TrainJob `body`
    names, when the service account lacks a right the launcher needs in `namespace`, or when a PVC that the
    TrainJob mounts is missing or cannot be mounted by every node."""
    check_trainer(api_client, body)
    check_rights(api_client, namespace)
    check_pvcs(api_client, namespace, body)


def check_trainer(api_client: Any, body: dict[str, Any]) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    custom = client.CustomObjectsApi(api_client)
    where = f"{TRAINER_GROUP}/{TRAINER_VERSION}"
    try:
        served = {resource.name for resource in custom.get_api_resources(TRAINER_GROUP, TRAINER_VERSION).resources}
    except ApiException as exc:
        if exc.status != 404:
            raise TrainingError(f"Asking the cluster for the {where} API failed: {exc.status} {exc.reason}.") from None
        served = set()
    if "trainjobs" not in served:
        raise TrainingError(
            f"This cluster does not serve TrainJobs ({where}): --nodes needs Kubeflow Trainer v2.3 installed "
            '(docs/cluster.md, "Several nodes"); compile without --nodes to train in one pod.'
        )
    ref = body["spec"].get("runtimeRef") or {}
    if ref.get("kind", "ClusterTrainingRuntime") != "ClusterTrainingRuntime":
        return
    try:
        custom.get_cluster_custom_object(TRAINER_GROUP, TRAINER_VERSION, "clustertrainingruntimes", ref["name"])
    except ApiException as exc:
        if exc.status == 404:
            raise TrainingError(f"ClusterTrainingRuntime {ref['name']} not found; {RUNTIME_ADVICE}.") from None
        if exc.status != 403:  # a Role cannot grant reading it: Trainer's webhook checks it at the create
            raise TrainingError(
                f"Reading ClusterTrainingRuntime {ref['name']} failed: {exc.status} {exc.reason}."
            ) from None


def _resource(group: str, resource: str) -> str:
    return f"{resource}.{group}" if group else resource


def missing_rights(api_client: Any, namespace: str) -> list[tuple[str, str, str]] | None:
    """The (group, resource, verb) of RBAC_RULES that the service account lacks in `namespace`; None when the
    cluster has no review API to ask (it answers 403 or 404; the create's 403 still guards)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = client.AuthorizationV1Api(api_client)
    missing = []
    for group, resource, verbs in RBAC_RULES:
        name, _, subresource = resource.partition("/")
        for verb in verbs:
            review = client.V1SelfSubjectAccessReview(
                api_version="authorization.k8s.io/v1",
                kind="SelfSubjectAccessReview",
                spec=client.V1SelfSubjectAccessReviewSpec(
                    resource_attributes=client.V1ResourceAttributes(
                        namespace=namespace, verb=verb, group=group, resource=name, subresource=subresource or None
                    )
                ),
            )
            try:
                answer = api.create_self_subject_access_review(review)
            except ApiException as exc:
                if exc.status in (403, 404):
                    return None
                raise TrainingError(
                    f"Checking the step's rights in namespace {namespace} failed: {exc.status} {exc.reason}."
                ) from None
            if not (answer.status and answer.status.allowed):
                missing.append((group, resource, verb))
    return missing


def check_rights(api_client: Any, namespace: str) -> None:
    missing = missing_rights(api_client, namespace)
    if not missing:
        return
    by_resource: dict[str, list[str]] = {}
    for group, resource, verb in missing:
        by_resource.setdefault(_resource(group, resource), []).append(verb)
    rights = "; ".join(f"{', '.join(verbs)} {resource}" for resource, verbs in by_resource.items())
    raise TrainingError(
        f"The step's service account lacks these rights in namespace {namespace}: {rights}; {RBAC_ADVICE}."
    )


def claims(body: dict[str, Any]) -> dict[str, str]:
    """The PVC claim names the TrainJob's runtime patches mount, by volume name."""
    found = {}
    for patch in body["spec"].get("runtimePatches") or []:
        jobset = ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}
        for job in jobset.get("replicatedJobs") or []:
            pod = (((job.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
            for volume in pod.get("volumes") or []:
                claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
                if claim:
                    found[volume["name"]] = claim
    return found


def check_pvcs(api_client: Any, namespace: str, body: dict[str, Any]) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client)
    nodes = body["spec"].get("trainer", {}).get("numNodes") or 1
    mounted = claims(body)
    for volume, modes, use in (
        (CHECKPOINT_VOLUME, (RWX,), "ReadWriteMany PVC for --checkpoint-pvc: every node resumes from it"),
        (DATA_VOLUME, (ROX, RWX), "ReadOnlyMany or ReadWriteMany PVC holding the dataset: every node reads it"),
    ):
        claim = mounted.get(volume)
        if claim is None:
            continue
        try:
            pvc = core.read_namespaced_persistent_volume_claim(claim, namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise TrainingError(
                    f"PVC {claim} not found in namespace {namespace}; create a {use} ({SHARED_STORAGE}), or name "
                    "an existing one."
                ) from None
            if exc.status == 403:  # no review API answered above, and an older Role: the pods will tell
                continue
            raise TrainingError(f"Reading PVC {namespace}/{claim} failed: {exc.status} {exc.reason}.") from None
        have = list((pvc.spec and pvc.spec.access_modes) or [])
        if not set(have) & set(modes):
            raise TrainingError(
                f"PVC {claim} in namespace {namespace} is {', '.join(have) or 'without access modes'}, not "
                f"{' or '.join(modes)}: the {nodes} nodes' pods on different machines cannot all mount it (they "
                f"would wait Pending until the step's timeout); use a {use} ({SHARED_STORAGE})."
            )
