"""A strict loopback Kubernetes API server for Kubeflow Trainer's `trainjobs` (issue 19), driven by the official
`kubernetes` client in tests.

It speaks the paths and Status objects of the real API server for what the launcher step uses: create, get and
delete of `trainjobs.trainer.kubeflow.org/v1alpha1` (bodies checked key by key against kubeflow-trainer-api's
models, as a server with strict field validation does: an unknown field is a 400; a `PET_*` variable in
`spec.trainer.env` is refused as Trainer's webhook refuses it), listing pods by label selector and reading a pod's
log, reading a PersistentVolumeClaim, and `SelfSubjectAccessReview`s (bodies checked against the official client's
`V1SelfSubjectAccessReview`). RBAC is a set of granted (group, resource, verb) rules, in every namespace: a request
outside them is answered 403 Forbidden as RBAC answers, and a review answers from them. And it runs a TrainJob as the
`torch-distributed` runtime would: `numNodes` processes of `spec.trainer.command + args`, each with the
`PET_NNODES`, `PET_NPROC_PER_NODE`, `PET_NODE_RANK`, `PET_MASTER_ADDR` and `PET_MASTER_PORT` that torchrun reads,
on the loopback address; the TrainJob's condition becomes `Complete` or `Failed` when they end.

The modules: server (settings, authentication, routes, Status errors), trainjobs, runtime (the torch-distributed
runtime), core_v1 (pods, their logs, PVCs), authorization (RBAC, SelfSubjectAccessReview), decoding (strict bodies).
"""

from tests.loopback.kube.decoding import check_model
from tests.loopback.kube.runtime import TrainJobRun
from tests.loopback.kube.server import ALL_RIGHTS, PVCS, TRAINER, KubeServer

__all__ = ["ALL_RIGHTS", "PVCS", "TRAINER", "KubeServer", "TrainJobRun", "check_model"]
