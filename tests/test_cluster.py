"""Cluster flags compile into kfp's task settings and kfp-kubernetes' platform spec, parsed back and checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s
from kfp.pipeline_spec import pipeline_spec_pb2


def compiled(
    cli, tmp_path: Path, *args: str
) -> tuple[pipeline_spec_pb2.PipelineSpec, dict[str, k8s.KubernetesExecutorConfig]]:
    out = tmp_path / "p.yaml"
    result = cli(["compile", "--out", out, "--model", "yolov8n.yaml", "--image", "reg/yolokf:t1", *args])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(out.read_text()))
    spec = pipeline_spec_pb2.PipelineSpec()
    json_format.ParseDict(docs[0], spec)
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    configs = {}
    for name, value in platform.items():
        config = k8s.KubernetesExecutorConfig()
        json_format.ParseDict(value, config)
        configs[name] = config
    return spec, configs


def container(spec: pipeline_spec_pb2.PipelineSpec, executor: str):
    return spec.deployment_spec["executors"][executor]["container"]


def accelerator_count(spec: pipeline_spec_pb2.PipelineSpec, executor: str = "exec-yolo-train") -> int:
    return int(container(spec, executor)["resources"]["accelerator"]["resourceCount"])


def test_every_cluster_flag_lands_in_the_compiled_training_step(cli, tmp_path):
    spec, configs = compiled(
        cli,
        tmp_path,
        "--data", "data/pets.yaml",
        "--gpus", "3", "--accelerator-type", "amd.com/gpu", "--shm-size", "16Gi",
        "--cpu", "8", "--memory", "48Gi",
        "--node-selector", "cloud.google.com/gke-accelerator=nvidia-l4", "--node-selector", "pool=gpu",
        "--toleration", "nvidia.com/gpu=present:NoSchedule", "--toleration", "spot:NoExecute",
        "--toleration", "dedicated",
        "--image-pull-secret", "regcred", "--image-pull-policy", "Always",
        "--pod-label", "team=vision", "--pod-annotation", "example.com/owner=Ana B.",
        "--step-timeout", "1h30m", "--retries", "3",
        "--checkpoint-pvc", "yolo-ckpt", "--run-key", "pets-v1",
    )  # fmt: skip
    # The download step runs for every kind of data (decided at run time), but holds no GPU, PVC or shm.
    assert set(configs) == {"exec-yolo-train", "exec-fetch-dataset"}
    train, fetch = configs["exec-yolo-train"], configs["exec-fetch-dataset"]
    assert not fetch.pvc_mount and not fetch.empty_dir_mounts and not fetch.node_selector.labels
    assert "resources" not in container(spec, "exec-fetch-dataset")

    resources = container(spec, "exec-yolo-train")["resources"]
    assert resources["accelerator"]["resourceType"] == "amd.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "3"
    assert (resources["resourceCpuRequest"], resources["resourceCpuLimit"]) == ("8", "8")
    assert (resources["resourceMemoryRequest"], resources["resourceMemoryLimit"]) == ("48Gi", "48Gi")
    env = {e["name"]: e["value"] for e in container(spec, "exec-yolo-train")["env"]}
    assert env == {"MKL_THREADING_LAYER": "GNU", "YOLOKF_GPUS": "3"}

    # --gpus 3 makes ultralytics train on all three (DDP), as the pipeline parameter's default.
    device = spec.root.input_definitions.parameters["device"].default_value.string_value
    assert device == "0,1,2"

    (shm,) = train.empty_dir_mounts
    assert (shm.mount_path, shm.medium, shm.size_limit) == ("/dev/shm", "Memory", "16Gi")
    assert dict(train.node_selector.labels) == {"cloud.google.com/gke-accelerator": "nvidia-l4", "pool": "gpu"}
    tolerations = [(t.key, t.operator, t.value, t.effect) for t in train.tolerations]
    assert tolerations == [
        ("nvidia.com/gpu", "Equal", "present", "NoSchedule"),
        ("spot", "Exists", "", "NoExecute"),
        ("dedicated", "Exists", "", ""),
    ]
    assert [s.secret_name for s in train.image_pull_secret] == ["regcred"]
    assert train.image_pull_policy == "Always"
    assert dict(train.pod_metadata.labels) == {"team": "vision"}
    assert dict(train.pod_metadata.annotations) == {"example.com/owner": "Ana B."}
    assert train.active_deadline_seconds == 5400
    (pvc,) = train.pvc_mount
    assert (pvc.pvc_name_parameter.runtime_value.constant.string_value, pvc.mount_path) == (
        "yolo-ckpt",
        "/mnt/yolokf/checkpoints",
    )

    task = spec.root.dag.tasks["yolo-train"]
    assert task.retry_policy.max_retry_count == 3
    assert task.retry_policy.backoff_duration.seconds == 30
    assert task.retry_policy.backoff_factor == 2.0
    assert task.retry_policy.backoff_max_duration.seconds == 3600
    params = task.inputs.parameters
    assert params["checkpoint_dir"].runtime_value.constant.string_value == "/mnt/yolokf/checkpoints"
    assert params["run_key"].runtime_value.constant.string_value == "pets-v1"


def test_retries_restart_evaluation_and_exports_as_they_restart_training(cli, tmp_path):
    """Issue 24, item 12: a preempted evaluation or export was never retried. Every step that runs the model gets
    --retries' policy; the gate, registration and download do not (a retry cannot change a missed gate or refused
    credentials; the download and registration retry network errors in the step)."""
    spec, _ = compiled(
        cli, tmp_path, "--data", "data/pets.yaml", "--gpus", "1", "--retries", "2", "--export", "onnx,torchscript",
        "--gate", "mAP50>0.1", "--registry", "https://mr.kubeflow:8443", "--registered-model", "pets",
    )  # fmt: skip
    tasks = dict(spec.root.dag.tasks)
    (register,) = [c.dag.tasks["yolo-register"] for c in spec.components.values() if "yolo-register" in c.dag.tasks]
    policies = {
        name: (p.max_retry_count, p.backoff_duration.seconds, p.backoff_factor, p.backoff_max_duration.seconds)
        for name, task in [*tasks.items(), ("yolo-register", register)]
        if task.HasField("retry_policy")
        for p in [task.retry_policy]
    }
    retried = ("yolo-train", "yolo-evaluate", "yolo-export", "yolo-export-2")
    assert policies == dict.fromkeys(retried, (2, 30, 2.0, 3600))
    assert {"fetch-dataset", "quality-gate", "condition-1"} <= set(tasks)


def test_defaults_give_a_cpu_step_with_shm_and_nothing_else(cli, tmp_path):
    spec, configs = compiled(cli, tmp_path, "--data", "data/pets.yaml")
    train = configs["exec-yolo-train"]
    assert [(m.mount_path, m.medium, m.size_limit) for m in train.empty_dir_mounts] == [("/dev/shm", "Memory", "8Gi")]
    assert not train.tolerations and not train.node_selector.labels and not train.pvc_mount
    assert "resources" not in container(spec, "exec-yolo-train")
    assert spec.root.input_definitions.parameters["device"].default_value.string_value == ""
    assert not spec.root.dag.tasks["yolo-train"].HasField("retry_policy")


def test_gpus_zero_trains_on_cpu_and_shm_can_be_left_out(cli, tmp_path):
    spec, configs = compiled(cli, tmp_path, "--data", "data/pets.yaml", "--gpus", "0", "--shm-size", "0")
    assert spec.root.input_definitions.parameters["device"].default_value.string_value == "cpu"
    assert "resources" not in container(spec, "exec-yolo-train")
    assert not configs  # no platform spec at all


def test_one_gpu_uses_device_0_and_an_explicit_device_names_every_gpu_of_the_pod(cli, tmp_path):
    spec, _ = compiled(cli, tmp_path, "--data", "data/pets.yaml", "--gpus", "1")
    assert spec.root.input_definitions.parameters["device"].default_value.string_value == "0"
    env = {e["name"]: e["value"] for e in container(spec, "exec-yolo-train")["env"]}
    assert env == {"YOLOKF_GPUS": "1"}, "the step's GPU rule; DDP settings only for more than one GPU"
    spec, _ = compiled(cli, tmp_path, "--data", "data/pets.yaml", "--gpus", "2", "--device", "0,1")
    assert spec.root.input_definitions.parameters["device"].default_value.string_value == "0,1"
    assert accelerator_count(spec) == 2


def test_s3_dataset_adds_an_uncached_download_step_with_secret_env_and_no_credential_values(cli, tmp_path):
    spec, configs = compiled(
        cli,
        tmp_path,
        "--data", "s3://datasets/pets",
        "--data-secret", "s3-creds", "--s3-endpoint-url", "http://minio.minio.svc:9000",
        "--gpus", "1", "--node-selector", "pool=gpu", "--toleration", "spot:NoExecute", "--retries", "2",
        "--image-pull-secret", "regcred",
    )  # fmt: skip
    fetch = configs["exec-fetch-dataset"]
    required, optional = fetch.secret_as_env
    assert required.secret_name_parameter.runtime_value.constant.string_value == "s3-creds"
    assert not required.optional
    assert {(m.secret_key, m.env_var) for m in required.key_to_env} == {
        ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
        ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
    }
    assert optional.optional and [m.env_var for m in optional.key_to_env] == ["AWS_SESSION_TOKEN"]
    fetch_container = container(spec, "exec-fetch-dataset")
    assert fetch_container["image"] == "reg/yolokf:t1"
    assert {e["name"]: e["value"] for e in fetch_container["env"]} == {
        "AWS_ENDPOINT_URL": "http://minio.minio.svc:9000"
    }
    assert "resources" not in fetch_container, "the download holds no GPU"
    assert not fetch.node_selector.labels and not fetch.empty_dir_mounts
    assert [t.key for t in fetch.tolerations] == ["spot"]
    assert [s.secret_name for s in fetch.image_pull_secret] == ["regcred"]
    assert not configs["exec-yolo-train"].secret_as_env, "the training step needs no object-storage credentials"

    tasks = spec.root.dag.tasks
    assert tasks["fetch-dataset"].inputs.parameters["uri"].component_input_parameter == "data"
    assert not tasks["fetch-dataset"].caching_options.enable_cache, "reads the bucket every run (issue 24)"
    # --retries restarts training only; the download retries network errors itself and fails at once on 403.
    assert not tasks["fetch-dataset"].HasField("retry_policy")
    assert tasks["yolo-train"].retry_policy.max_retry_count == 2
    fetched = tasks["fetch-dataset"].inputs.parameters
    assert fetched["credentials"].runtime_value.constant.string_value == "s3-creds"
    assert fetched["data_pvc"].runtime_value.constant.string_value == ""
    dataset = tasks["yolo-train"].inputs.artifacts["dataset"].task_output_artifact
    assert (dataset.producer_task, dataset.output_artifact_key) == ("fetch-dataset", "dataset")
    assert list(tasks["yolo-train"].dependent_tasks) == ["fetch-dataset"]
    assert spec.components["comp-yolo-train"].input_definitions.artifacts["dataset"].is_optional


def test_pvc_dataset_is_mounted_not_downloaded(cli, tmp_path):
    for args in (["--data", "pvc://datasets/coco/data.yaml"], ["--data-pvc", "datasets", "--data", "coco/data.yaml"]):
        spec, configs = compiled(cli, tmp_path, *args)
        assert set(configs) == {"exec-yolo-train"}, "the download step mounts nothing and needs no settings"
        (pvc,) = configs["exec-yolo-train"].pvc_mount
        assert pvc.pvc_name_parameter.runtime_value.constant.string_value == "datasets"
        assert pvc.mount_path == "/mnt/yolokf/data"
        data = spec.root.input_definitions.parameters["data"].default_value.string_value
        assert data == "pvc://datasets/coco/data.yaml", "the run form shows the PVC dataset as given"
        fetched = spec.root.dag.tasks["fetch-dataset"].inputs.parameters
        assert fetched["data_pvc"].runtime_value.constant.string_value == "datasets", "the mount, compile-time"


def test_ambient_credentials_map_no_secret(cli, tmp_path):
    spec, configs = compiled(cli, tmp_path, "--data", "s3://datasets/pets.zip", "--data-secret", "-")
    assert "fetch-dataset" in spec.root.dag.tasks
    assert "exec-fetch-dataset" not in configs, "no Secret mapped: IRSA / Workload Identity / a public bucket"


def test_local_run_ignores_cluster_flags_and_keeps_retries(tmp_path):
    """Pod settings do not apply on this machine; --retries does (kfp.local restarts a failed step, as KFP does)."""
    from yolokf.pipeline.step_options import StepOptions, parse_toleration

    step = StepOptions(
        image="x",
        gpus=4,
        cpu="8",
        tolerations=(parse_toleration("a:NoSchedule"),),
        retries=3,
        checkpoint_dir="ckpt",
        run_key="k",
    )
    local = step.for_local()
    assert local == StepOptions(
        image="local",
        shm_size=None,
        data_secret="-",  # local credentials: this machine's environment
        checkpoint_dir=str(Path("ckpt").resolve()),
        run_key="k",
        retries=3,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "-1"], "--gpus must be a whole number of at least 0 (0 trains on CPU), got -1."),
        # A pod's GPUs are 0..N-1: device 1 does not exist in a 1-GPU pod, and a 2-GPU pod would idle one.
        (
            ["--gpus", "1", "--device", "1"],
            "--gpus 1 gives the step 1 GPU(s), numbered 0 inside its pod; --device 1 must name all of them (0)",
        ),
        (
            ["--gpus", "2", "--device", "1"],
            "--gpus 2 gives the step 2 GPU(s), numbered 0,1 inside its pod; --device 1 must name all of them (0,1)",
        ),
        (["--gpus", "2", "--device", "0,0"], "--device 0,0 must name all of them (0,1)"),
        (["--gpus", "0", "--device", "0"], "--gpus 0 trains on CPU, but --device 0 names another device"),
        (
            ["--gpus", "2", "--accelerator-type", "gpu"],
            "--accelerator-type 'gpu' is not a Kubernetes extended resource",
        ),
        (["--shm-size", "lots"], "--shm-size 'lots' is not a Kubernetes quantity kfp accepts"),
        (["--memory", "16GB"], "--memory '16GB' is not a Kubernetes quantity kfp accepts"),
        (["--cpu", "four"], "--cpu 'four' is not a CPU quantity"),
        (["--node-selector", "pool"], "--node-selector 'pool' is not KEY=VALUE"),
        (["--node-selector", "pool=a b"], "'a b' is not a Kubernetes label value"),
        (["--toleration", "a=b:Never"], "--toleration 'a=b:Never': effect must be one of NoSchedule"),
        (["--toleration", "a=b:"], "--toleration 'a=b:' has an empty effect"),
        (["--toleration", "bad key=x"], "--toleration 'bad key=x' is not a valid toleration"),
        (["--image-pull-policy", "Sometimes"], "--image-pull-policy must be one of Always, IfNotPresent, Never"),
        (["--image-pull-secret", "Reg_Cred"], "--image-pull-secret 'Reg_Cred' is not a Kubernetes object name"),
        (["--pod-label", "=x"], "--pod-label '=x' is not KEY=VALUE"),
        (["--step-timeout", "soon"], "--step-timeout 'soon' is not a duration"),
        (["--retries", "-2"], "--retries must be a whole number of at least 0, got -2."),
        (["--checkpoint-pvc", "a", "--checkpoint-dir", "/x"], "Give --checkpoint-pvc or --checkpoint-dir, not both."),
        (["--run-key", "../up"], "--run-key '../up' must be 1-128 letters"),
        (["--data", "s3://datasets/pets"], "--data s3://datasets/pets needs credentials: give --data-secret NAME"),
        (["--data", "s3:///pets", "--data-secret", "s"], "--data s3:///pets is not a s3:// URI"),
        (["--data", "ftp://host/pets.zip"], "unsupported scheme ftp://"),
        (["--data", "https:///pets.zip"], "--data https:///pets.zip has no host"),
        (["--data", "pvc://datasets/coco"], "pvc://datasets/coco does not name a dataset YAML"),
        (
            ["--data", "pvc://datasets"],
            "pvc://datasets is not a dataset in a PVC; use pvc://PVC_NAME/path/to/data.yaml.",
        ),
        (["--data-pvc", "ds", "--data", "s3://b/x"], "--data-pvc ds takes a path inside the PVC as --data"),
        (["--data", "https://h/p.zip", "--s3-endpoint-url", "http://m:9000"], "--s3-endpoint-url applies to s3://"),
        (["--s3-endpoint-url", "minio:9000"], "--s3-endpoint-url 'minio:9000' is not an http(s) URL"),
    ],
)
def test_bad_cluster_input_is_one_line_exit_2_and_no_file(cli, tmp_path, args, message):
    out = tmp_path / "p.yaml"
    result = cli(["compile", "--out", out, "--image", "x:1", "--data", "data/pets.yaml", *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: ") and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_bad_cluster_input_fails_run_before_training(cli, tmp_path):
    result = cli(["run", "--model", "yolov8n.yaml", "--data", "shapes", "--toleration", "x:Sometimes"])
    assert result.exit_code == 2, result.output
    assert "--toleration 'x:Sometimes': effect must be one of" in result.stderr


def test_accelerator_counts_kfp_rejects_are_rejected_first():
    """kubeflow/pipelines#12865: kfp 2.17 takes any whole count; negative or fractional ones never reach it."""
    from yolokf.core.errors import UsageError
    from yolokf.pipeline.step_options import StepOptions

    for gpus in (3, 5, 32):
        assert StepOptions(image="x", gpus=gpus).gpus == gpus
    for bad in (-1, 1.5, True):
        with pytest.raises(UsageError, match="--gpus must be a whole number"):
            StepOptions(image="x", gpus=bad)  # type: ignore[arg-type]
