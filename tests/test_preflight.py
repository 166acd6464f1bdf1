"""The `--nodes` launcher's preflight (issue 19): the service account's rights, asked with SelfSubjectAccessReviews,
and the PVCs every node mounts, against the strict loopback Kubernetes API server (tests/loopback/kube) driven by
the official `kubernetes` client. Nothing here trains: each run is refused before its create, or runs `true`."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.loopback.kube import ALL_RIGHTS, KubeServer
from tests.test_launcher import NAMESPACE, _body
from yolokf.core.errors import TrainingError
from yolokf.pipeline.trainjob import RBAC_RULES, rbac_yaml
from yolokf.training.launch import run_trainjob

RBAC_ADVICE_START = "apply yolokf's Role and RoleBinding: kubectl apply -f the -rbac.yaml"


@pytest.fixture
def server(tmp_path):
    servers: list[KubeServer] = []

    def start(**options) -> KubeServer:
        servers.append(KubeServer(tmp_path / "kube", **options))
        return servers[-1]

    (tmp_path / "kube").mkdir()
    yield start
    for kube in servers:
        kube.close()


def _run(kube: KubeServer, body: dict) -> None:
    run_trainjob(body, namespace=NAMESPACE, api_client=kube.api_client(), timeout=60, poll=0.2)


def _instant(body: dict) -> dict:
    """The TrainJob with a command that succeeds at once on every node: the launcher's path, without a training."""
    body["spec"]["trainer"]["command"], body["spec"]["trainer"]["args"] = ["true"], []
    return body


def test_missing_rights_are_named_in_one_line_and_nothing_is_created(server, tmp_path):
    lacking = {("trainer.kubeflow.org", "trainjobs", "watch"), ("", "pods/log", "get")}
    kube = server(granted=ALL_RIGHTS - lacking)
    with pytest.raises(TrainingError) as refused:
        _run(kube, _body(tmp_path, "yolo-rights", epochs=1))
    assert str(refused.value) == (
        f"The step's service account lacks these rights in namespace {NAMESPACE}: watch "
        f"trainjobs.trainer.kubeflow.org; get pods/log; {RBAC_ADVICE_START} that yolokf compile --nodes wrote next "
        'to the pipeline (docs/cluster.md, "Several nodes").'
    )
    assert kube.trainjobs == {}
    # One review per verb of the Role yolokf writes, each for this namespace; pods/log as resource + subresource.
    asked = {(r.get("group", ""), r["resource"], r.get("subresource", ""), r["verb"]) for r in kube.reviews}
    assert len(kube.reviews) == len(ALL_RIGHTS) == sum(len(verbs) for _, _, verbs in RBAC_RULES)
    assert ("", "pods", "log", "get") in asked and ("", "persistentvolumeclaims", "", "get") in asked
    assert {r["namespace"] for r in kube.reviews} == {NAMESPACE}


def test_a_readwriteonce_checkpoint_pvc_fails_before_anything_is_created(server, tmp_path):
    kube = server(pvcs={"ckpt": ["ReadWriteOnce"]})
    with pytest.raises(TrainingError) as refused:
        _run(kube, _body(tmp_path, "yolo-rwo", epochs=1))
    assert str(refused.value) == (
        f"PVC ckpt in namespace {NAMESPACE} is ReadWriteOnce, not ReadWriteMany: the 2 nodes' pods on different "
        "machines cannot all mount it (they would wait Pending until the step's timeout); use a ReadWriteMany PVC "
        "for --checkpoint-pvc: every node resumes from it (NFS, CephFS, Filestore, EFS...)."
    )
    assert kube.trainjobs == {}


def test_a_missing_checkpoint_pvc_fails_before_anything_is_created(server, tmp_path):
    kube = server(pvcs={})
    with pytest.raises(TrainingError) as refused:
        _run(kube, _body(tmp_path, "yolo-nopvc", epochs=1))
    assert str(refused.value) == (
        f"PVC ckpt not found in namespace {NAMESPACE}; create a ReadWriteMany PVC for --checkpoint-pvc: every node "
        "resumes from it (NFS, CephFS, Filestore, EFS...), or name an existing one."
    )
    assert kube.trainjobs == {}


def test_a_readwriteonce_dataset_pvc_fails_too(server, tmp_path):
    kube = server(pvcs={"ckpt": ["ReadWriteMany"], "datasets": ["ReadWriteOnce"]})
    with pytest.raises(TrainingError) as refused:
        _run(kube, _body(tmp_path, "yolo-data", epochs=1, data="pvc://datasets/shapes/data.yaml"))
    assert str(refused.value).startswith(
        f"PVC datasets in namespace {NAMESPACE} is ReadWriteOnce, not ReadOnlyMany or ReadWriteMany: the 2 nodes' pods"
    )
    assert kube.trainjobs == {}


def test_a_good_run_passes_the_preflight_and_starts(server, tmp_path, capsys):
    kube = server()
    _run(kube, _instant(_body(tmp_path, "yolo-good", epochs=1)))
    # What the preflight asks is what the Role that yolokf writes grants (the PVC read included).
    role = next(yaml.safe_load_all(rbac_yaml()))
    granted = {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }
    asked = {
        (r.get("group", ""), "/".join(filter(None, (r["resource"], r.get("subresource")))), r["verb"])
        for r in kube.reviews
    }
    assert len(kube.reviews) == len(asked) == len(granted)
    assert asked == granted and ("", "persistentvolumeclaims", "get") in asked
    assert list(kube.trainjobs) == [(NAMESPACE, "yolo-good")]
    assert f"created TrainJob {NAMESPACE}/yolo-good" in capsys.readouterr().out


def test_without_the_review_api_a_good_run_still_starts(server, tmp_path):
    from kubernetes import client

    kube = server(reviews=False)
    _run(kube, _instant(_body(tmp_path, "yolo-noreview", epochs=1)))
    assert kube.reviews == []
    assert list(kube.trainjobs) == [(NAMESPACE, "yolo-noreview")]
    client.CustomObjectsApi(kube.api_client()).delete_namespaced_custom_object(
        "trainer.kubeflow.org", "v1alpha1", NAMESPACE, "trainjobs", "yolo-noreview"
    )
    assert kube.trainjobs == {} and kube.deleted == ["yolo-noreview"]


def test_without_the_review_api_the_creates_403_still_guards(server, tmp_path):
    """An old Role without the PVC right on a cluster without the review API: the PVC check gives way, and the
    create's 403 is the one line."""
    kube = server(reviews=False, allowed=False, granted=ALL_RIGHTS - {("", "persistentvolumeclaims", "get")})
    with pytest.raises(TrainingError) as refused:
        _run(kube, _body(tmp_path, "yolo-old", epochs=1))
    assert str(refused.value).startswith(
        f"The step's service account may not create trainjobs.trainer.kubeflow.org in namespace {NAMESPACE} "
        "(403 Forbidden); apply yolokf's Role and RoleBinding"
    )
    assert kube.trainjobs == {}


def test_the_server_answers_reviews_as_the_api_server_does(server):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    kube = server(granted=frozenset({("", "pods/log", "get")}))
    api = client.AuthorizationV1Api(kube.api_client())

    def ask(resource: str, subresource: str | None = None) -> client.V1SubjectAccessReviewStatus:
        attributes = client.V1ResourceAttributes(
            namespace=NAMESPACE, verb="get", resource=resource, subresource=subresource
        )
        review = client.V1SelfSubjectAccessReview(
            spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attributes)
        )
        return api.create_self_subject_access_review(review).status

    allowed, denied = ask("pods", "log"), ask("pods")
    assert allowed.allowed is True and allowed.reason
    assert denied.allowed is False and denied.reason is None
    with pytest.raises(ApiException) as misspelt:
        api.create_self_subject_access_review({"spec": {"resourceAttribute": {"verb": "get", "resource": "pods"}}})
    assert misspelt.value.status == 400
    assert 'unknown field "spec.resourceAttribute"' in json.loads(misspelt.value.body)["message"]
    with pytest.raises(ApiException) as empty:
        api.create_self_subject_access_review({"spec": {}})
    assert empty.value.status == 422
    with pytest.raises(ApiException) as forbidden:  # the PVC read is under RBAC too
        client.CoreV1Api(kube.api_client()).read_namespaced_persistent_volume_claim("ckpt", NAMESPACE)
    assert forbidden.value.status == 403


def test_a_cluster_without_kubeflow_trainer_is_named_before_anything_is_created(server, tmp_path):
    kube = server(trainer=False)
    with pytest.raises(TrainingError) as refused:
        _run(kube, _instant(_body(tmp_path, "yolo-notrainer", epochs=1)))
    assert str(refused.value) == (
        "This cluster does not serve TrainJobs (trainer.kubeflow.org/v1alpha1): --nodes needs Kubeflow Trainer v2.3 "
        'installed (docs/cluster.md, "Several nodes"); compile without --nodes to train in one pod.'
    )
    assert not [r for r in kube.requests if r.method == "POST" and r.path.endswith("/trainjobs")]


def test_a_missing_runtime_is_named_where_the_service_account_may_read_runtimes(server, tmp_path):
    kube = server(granted=ALL_RIGHTS | {("trainer.kubeflow.org", "clustertrainingruntimes", "get")}, runtimes=())
    with pytest.raises(TrainingError) as refused:
        _run(kube, _instant(_body(tmp_path, "yolo-noruntime", epochs=1)))
    assert str(refused.value).startswith(
        "ClusterTrainingRuntime torch-distributed not found; name an installed one with --training-runtime "
        "(kubectl get clustertrainingruntimes), or install Trainer's runtimes"
    )
    assert kube.trainjobs == {} and kube.deleted == []


def test_a_missing_runtime_refused_by_trainers_webhook_is_not_blamed_on_rights(server, tmp_path):
    """A Role cannot grant reading a cluster-scoped runtime (403 here), so the create meets Trainer's webhook,
    which answers 403 too (controller-runtime's admission.Denied); the launcher says what the webhook said."""
    kube = server(runtimes=("deepspeed-distributed",))
    with pytest.raises(TrainingError) as refused:
        _run(kube, _instant(_body(tmp_path, "yolo-webhook", epochs=1)))
    message = str(refused.value)
    assert message.startswith(
        f"Kubeflow Trainer refused TrainJob {NAMESPACE}/yolo-webhook: admission webhook "
        '"validator.trainjob.trainer.kubeflow.org" denied the request: spec.RuntimeRef: Invalid value:'
    )
    assert 'clustertrainingruntimes.trainer.kubeflow.org "torch-distributed" not found' in message
    assert "RoleBinding" not in message and "--training-runtime" in message
    assert kube.trainjobs == {}
