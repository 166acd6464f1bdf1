"""The `--nodes N` TrainJob (issue 19): built from kubeflow-trainer-api's models, printed by `run --dry-run`."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

from yolokf.core.errors import UsageError
from yolokf.pipeline.trainjob import check_fields

CLUSTER = ["--host", "http://localhost:1", "--image", "reg.example.com/yolokf:1", "--model", "yolov8n.pt"]
CLUSTER += ["--data", "pvc://datasets/coco/data.yaml", "--epochs", "50", "--checkpoint-pvc", "ckpt"]


def _dry_run(cli, *args: str) -> dict:
    result = cli(["run", *CLUSTER, "--dry-run", *args])
    assert result.exit_code == 0, result.stderr
    header, _, body = result.stdout.partition("\n")
    assert (
        header
        == f"# The training step's TrainJob ({args[args.index('--nodes') + 1]} nodes; the run's name as a placeholder):"
    )
    assert yaml.safe_load(result.stdout) == yaml.safe_load(body), "`--dry-run > trainjob.yaml` is what kubectl reads"
    return yaml.safe_load(body)


def test_dry_run_prints_the_trainjob_the_models_define(cli):
    flags = ["--nodes", "4", "--gpus", "8", "--cpu", "32", "--memory", "256Gi", "--shm-size", "16Gi"]
    flags += ["--toleration", "nvidia.com/gpu=present:NoSchedule", "--node-selector", "pool=h100"]
    flags += ["--image-pull-secret", "regcred", "--step-timeout", "12h"]
    trainjob = _dry_run(cli, *flags)
    check_fields(TrainerV1alpha1TrainJob, trainjob)  # every key is one the models define
    assert TrainerV1alpha1TrainJob.from_dict(trainjob).to_dict() == trainjob
    assert (trainjob["apiVersion"], trainjob["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert trainjob["metadata"] == {"name": "<run-name>"}
    spec = trainjob["spec"]
    assert spec["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "torch-distributed",
    }
    assert spec["activeDeadlineSeconds"] == 12 * 3600
    trainer = spec["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"], trainer["image"]) == (4, 8, "reg.example.com/yolokf:1")
    quantities = {"nvidia.com/gpu": "8", "cpu": "32", "memory": "256Gi"}
    assert trainer["resourcesPerNode"] == {"limits": quantities, "requests": quantities}
    assert "env" not in trainer  # the runtime sets PET_*; a TrainJob that sets them is refused
    assert trainer["command"] == ["torchrun"]
    assert trainer["args"][:2] == ["-m", "yolokf.training.node"]
    request = json.loads(trainer["args"][2])
    assert request["parameters"]["device"] == "0,1,2,3,4,5,6,7"  # LOCAL_RANK picks each process's GPU
    assert request["parameters"]["epochs"] == 50
    assert request["data"] == "/mnt/yolokf/data/coco/data.yaml"
    assert request["checkpoint_dir"] == "/mnt/yolokf/checkpoints"
    assert request["result"].startswith("/mnt/yolokf/checkpoints/yolov8n-")
    assert len(spec["runtimePatches"]) == 1
    patch = spec["runtimePatches"][0]
    assert patch["manager"] == "yolokf.kubeflow.org/launcher"
    jobs = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert [job["name"] for job in jobs] == ["node"]
    pod = jobs[0]["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "h100"}
    assert pod["tolerations"] == [
        {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}
    ]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["volumes"] == [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "datasets"}},
        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "ckpt"}},
    ]
    assert pod["containers"] == [
        {
            "name": "node",
            "volumeMounts": [
                {"name": "dshm", "mountPath": "/dev/shm"},
                {"name": "data", "mountPath": "/mnt/yolokf/data"},
                {"name": "checkpoints", "mountPath": "/mnt/yolokf/checkpoints"},
            ],
        }
    ]


def test_cpu_nodes_and_another_runtime(cli):
    trainjob = _dry_run(cli, "--nodes", "2", "--gpus", "0", "--training-runtime", "torch-cpu", "--shm-size", "0")
    trainer = trainjob["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 1)
    assert json.loads(trainer["args"][2])["parameters"]["device"] == "cpu"
    assert "resourcesPerNode" not in trainer
    assert trainjob["spec"]["runtimeRef"]["name"] == "torch-cpu"


def test_a_misspelt_field_fails():
    with pytest.raises(UsageError, match=r"TrainerV1alpha1Trainer has no field spec\.trainer\.numNode; known: args, "):
        check_fields(TrainerV1alpha1TrainJob, {"spec": {"runtimeRef": {"name": "x"}, "trainer": {"numNode": 2}}})
    with pytest.raises(
        UsageError,
        match=re.escape(
            "TrainerV1alpha1PodSpecPatch has no field spec.runtimePatches[0].trainingRuntimeSpec.template.spec."
            "replicatedJobs[0].template.spec.template.spec.nodeSelectors; known: affinity, containers,"
        ),
    ):
        check_fields(
            TrainerV1alpha1TrainJob,
            {
                "spec": {
                    "runtimePatches": [
                        {
                            "manager": "m",
                            "trainingRuntimeSpec": {
                                "template": {
                                    "spec": {
                                        "replicatedJobs": [
                                            {
                                                "name": "node",
                                                "template": {"spec": {"template": {"spec": {"nodeSelectors": {}}}}},
                                            }
                                        ]
                                    }
                                }
                            },
                        }
                    ]
                }
            },
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["compile", "--nodes", "2"],
            "--nodes 2 needs --checkpoint-pvc NAME, a ReadWriteMany PVC that every node mounts",
        ),
        (
            ["compile", "--nodes", "2", "--checkpoint-pvc", "c", "--data", "s3://b/d.zip", "--data-secret", "s"],
            "--nodes 2: every node reads the dataset itself",
        ),
        (["compile", "--training-runtime", "Torch_X"], "--training-runtime 'Torch_X' is not a Kubernetes object name"),
    ],
)
def test_refused(cli, tmp_path, args, message):
    result = cli([*args, "--image", "reg.example.com/yolokf:1", "--out", str(tmp_path / "p.yaml")])
    assert result.exit_code == 2, result.stdout
    assert message in result.stderr
    assert not (tmp_path / "p.yaml").exists()


def test_compile_nodes_gives_the_launcher_its_trainjob_and_no_gpu(cli, tmp_path):
    out = tmp_path / "p.yaml"
    args = ["compile", "--nodes", "3", "--gpus", "4", "--checkpoint-pvc", "ckpt", "--image", "reg.example.com/yolokf:1"]
    result = cli([*args, "--model", "yolov8n.pt", "--data", "shapes", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    documents = list(yaml.safe_load_all(out.read_text()))
    spec = documents[0]
    task = spec["root"]["dag"]["tasks"]["yolo-train-nodes"]
    assert task["inputs"]["parameters"]["nodes"]["runtimeValue"]["constant"] == 3
    trainjob = task["inputs"]["parameters"]["trainjob"]["runtimeValue"]["constant"]
    check_fields(TrainerV1alpha1TrainJob, trainjob)
    assert (trainjob["spec"]["trainer"]["numNodes"], trainjob["spec"]["trainer"]["numProcPerNode"]) == (3, 4)
    assert trainjob["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    executor = spec["deploymentSpec"]["executors"]["exec-yolo-train-nodes"]["container"]
    assert "resources" not in executor  # the launcher's pod holds no GPU, CPU or memory of the nodes
    platform = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-yolo-train-nodes"]
    assert [m["mountPath"] for m in platform["pvcMount"]] == ["/mnt/yolokf/checkpoints"]

    rbac = list(yaml.safe_load_all((tmp_path / "p-rbac.yaml").read_text()))
    assert f"Wrote {tmp_path / 'p-rbac.yaml'}" in result.stdout
    assert [d["kind"] for d in rbac] == ["Role", "RoleBinding"]
    trainjobs = [r for r in rbac[0]["rules"] if r["resources"] == ["trainjobs"]]
    assert len(trainjobs) == 1
    assert trainjobs[0]["apiGroups"] == ["trainer.kubeflow.org"]
    assert set(trainjobs[0]["verbs"]) >= {"create", "get", "delete"}
    assert rbac[1]["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}]
    assert rbac[1]["roleRef"]["name"] == rbac[0]["metadata"]["name"]


def test_tune_nodes_compiles_every_round_s_trials_to_launchers(cli, tmp_path):
    """`yolokf tune --nodes 2 --halving 2`: each round's trial is the launcher component with the compiled
    TrainJob, the trial, the run's trials and its round; the launcher's pod holds no GPU; the Role is written."""
    out = tmp_path / "sweep.yaml"
    args = ["tune", "--nodes", "2", "--gpus", "8", "--checkpoint-pvc", "ckpt", "--image", "reg.example.com/yolokf:1"]
    args += ["--model", "yolov8n.pt", "--data", "shapes", "--epochs", "4", "--set", "optimizer=SGD"]
    result = cli([*args, "--space", "lr0=loguniform:1e-4:1e-1", "--trials", "4", "--halving", "2", "--out", out])
    assert result.exit_code == 0, result.stderr
    documents = list(yaml.safe_load_all(out.read_text()))
    spec = documents[0]
    loops = sorted(
        (task for task in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in task),
        key=lambda task: task["taskInfo"]["name"],
    )
    assert len(loops) == 3
    for index, loop in enumerate(loops):
        (trial,) = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"].values()
        assert trial["componentRef"]["name"].startswith("comp-yolo-train-nodes")
        inputs = trial["inputs"]["parameters"]
        assert inputs["nodes"]["runtimeValue"]["constant"] == 2
        assert inputs["sweep"]["runtimeValue"]["constant"] == {"round": index, "rounds": 3, "eta": 2, "name": ""}
        assert inputs["trials"]["componentInputParameter"] == "pipelinechannel--trials"
        trainjob = inputs["trainjob"]["runtimeValue"]["constant"]
        check_fields(TrainerV1alpha1TrainJob, trainjob)
        assert (trainjob["spec"]["trainer"]["numNodes"], trainjob["spec"]["trainer"]["numProcPerNode"]) == (2, 8)
    assert "resources" not in spec["deploymentSpec"]["executors"]["exec-yolo-train-nodes"]["container"]
    assert (tmp_path / "sweep-rbac.yaml").is_file() and f"Wrote {tmp_path / 'sweep-rbac.yaml'}" in result.stdout


def test_tune_nodes_dry_run_prints_each_trial_s_trainjob(cli):
    args = ["tune", "--host", "http://127.0.0.1:9", "--image", "r/y:1", "--nodes", "2", "--checkpoint-pvc", "ckpt"]
    args += ["--model", "yolov8n.pt", "--data", "shapes", "--set", "optimizer=SGD", "--space", "lr0=uniform:0.001:0.01"]
    result = cli([*args, "--trials", "2", "--dry-run"])
    assert result.exit_code == 0, result.stderr
    title = "Each trial's TrainJob (the step puts in the trial's values and folder) (2 nodes; the run's name as a"
    assert title in result.stdout
    documents = list(yaml.safe_load_all(result.stdout))  # stdout is YAML: the TrainJob, then the submission
    assert len(documents) == 2 and "# Would submit run" in result.stdout
    body = documents[0]
    assert body["kind"] == "TrainJob" and body["spec"]["trainer"]["numNodes"] == 2


@pytest.mark.parametrize(("timeout", "trainjob_deadline"), [("1h", 3600), (None, None)])
def test_the_launcher_pod_outlives_its_trainjob_s_deadline(cli, tmp_path, timeout, trainjob_deadline):
    """Issue 24, item 4: the launcher starts before its TrainJob and times it from its create; its pod's deadline is
    the TrainJob's and LAUNCHER_GRACE more, so its own timeout branch deletes the TrainJob before the kubelet kills
    it (with the same deadline, the kubelet killed the launcher first)."""
    from yolokf.pipeline.step_options import LAUNCHER_GRACE

    out = tmp_path / "p.yaml"
    args = ["compile", "--nodes", "2", "--gpus", "8", "--checkpoint-pvc", "ckpt", "--image", "reg.example.com/yolokf:1"]
    args += ["--step-timeout", timeout] if timeout else []
    result = cli([*args, "--model", "yolov8n.pt", "--data", "pvc://datasets/coco/data.yaml", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    spec, platform = list(yaml.safe_load_all(out.read_text()))[:2]
    trainjob = spec["root"]["dag"]["tasks"]["yolo-train-nodes"]["inputs"]["parameters"]["trainjob"]["runtimeValue"]
    launcher = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-yolo-train-nodes"]
    if trainjob_deadline is None:
        assert "activeDeadlineSeconds" not in trainjob["constant"]["spec"] and "activeDeadlineSeconds" not in launcher
        return
    # The TrainJob's deadline is --step-timeout, and the launcher's own timeout is the TrainJob's (launch_step).
    assert trainjob["constant"]["spec"]["activeDeadlineSeconds"] == trainjob_deadline
    assert int(launcher["activeDeadlineSeconds"]) == trainjob_deadline + LAUNCHER_GRACE
    assert LAUNCHER_GRACE >= 300, "the launcher's image pull and start, a watch window and the delete"
