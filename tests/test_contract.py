"""The training fields reach the step with the same values through `compile`, `run --host` and `run --dry-run`.

What the training step receives is resolved here as the KFP backend resolves it: each input of the yolo-train
task is a pipeline parameter (the run's argument, else the compiled default) or a constant.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from tests.loopback.kfp import KfpServer
from yolokf.core.settings import training_fields

IMAGE = "registry.example.com/ml/yolokf:0.1.0-abc"
TRAIN = ["--model", "yolov8n.yaml", "--data", "shapes", "--epochs", "3", "--imgsz", "64"]


def step_inputs(spec: dict[str, Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """The parameter values the yolo-train task receives when `spec` runs with `arguments`."""
    proto = pipeline_spec_pb2.PipelineSpec()
    json_format.ParseDict(spec, proto)
    defaults = {
        name: json_format.MessageToDict(p.default_value) for name, p in proto.root.input_definitions.parameters.items()
    }
    (train,) = [t for name, t in proto.root.dag.tasks.items() if name == "yolo-train"]
    received: dict[str, Any] = {}
    for name, value in train.inputs.parameters.items():
        if value.component_input_parameter:
            source = value.component_input_parameter
            received[name] = arguments.get(source, defaults[source])
        else:
            received[name] = json_format.MessageToDict(value.runtime_value.constant)
    return received


def training_values(received: dict[str, Any]) -> dict[str, Any]:
    """The training fields of what the step receives, with protobuf's floats for integers made whole again."""
    names = [f.name for f in training_fields()]
    assert set(names) <= set(received), received
    return {
        name: int(v) if isinstance(v, float) and v.is_integer() else v for name, v in received.items() if name in names
    }


def platform_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    if len(docs) < 2:
        return {}
    return docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"].get("exec-yolo-train", {})


def accelerator(spec: dict[str, Any]) -> dict[str, Any]:
    container = spec["deploymentSpec"]["executors"]["exec-yolo-train"]["container"]
    return container.get("resources", {}).get("accelerator", {})


@pytest.fixture
def kfp(monkeypatch):
    monkeypatch.setenv("YOLOKF_IMAGE", IMAGE)
    for name in ("KFP_HOST", "KF_PIPELINES_ENDPOINT", "KFP_NAMESPACE", "KFP_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    server = KfpServer().start()
    yield server
    server.stop()


def submitted(cli, kfp: KfpServer, args: list[str]) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """`run --host` with `args`: what the step receives, the run's arguments, the submitted spec documents."""
    result = cli(["run", "--host", kfp.url, *TRAIN, *args])
    assert result.exit_code == 0, result.output
    (create,) = kfp.calls("POST", r"/runs$")
    body = create.json()
    spec = body["pipeline_spec"]
    docs = [spec.get("pipeline_spec", spec)]
    if "platform_spec" in spec:
        docs.append(spec["platform_spec"])
    arguments = body["runtime_config"]["parameters"]
    return training_values(step_inputs(docs[0], arguments)), arguments, docs


def compiled(cli, tmp_path, args: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    out = tmp_path / "p.yaml"
    result = cli(["compile", "--out", out, *TRAIN, *args])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(out.read_text()))
    assert len(docs) in (1, 2), docs
    return training_values(step_inputs(docs[0], {})), docs


def dry_run(cli, kfp: KfpServer, args: list[str]) -> dict[str, Any]:
    result = cli(["run", "--host", kfp.url, "--dry-run", *TRAIN, *args])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.stdout)["parameters"]  # stdout is YAML (issue 26)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--gpus", "2"], {"device": "0,1"}),
        (["--gpus", "0"], {"device": "cpu"}),
        (["--gpus", "2", "--device", "1,0"], {"device": "1,0"}),
        (["--device", "cpu"], {"device": "cpu"}),
        (["--workers", "3"], {"workers": 3}),
        (["--set", "lr0=0.02", "--set", "cos_lr=true"], {"train_args": {"lr0": 0.02, "cos_lr": True}}),
        (["--data", "s3://datasets/pets.zip", "--data-secret", "s3-creds"], {"data": "s3://datasets/pets.zip"}),
        # A PVC dataset stays a pvc:// URI (the download step maps it onto the mount at run time).
        (["--data", "pvc://datasets/coco/data.yaml"], {"data": "pvc://datasets/coco/data.yaml"}),
        (["--data-pvc", "datasets", "--data", "coco/data.yaml"], {"data": "pvc://datasets/coco/data.yaml"}),
        (["--checkpoint-pvc", "ckpt"], {}),
    ],
)
def test_a_setting_reaches_the_step_the_same_through_compile_dry_run_and_host(cli, kfp, tmp_path, args, expected):
    received, arguments, _ = submitted(cli, kfp, args)
    for name, value in expected.items():
        assert received[name] == value, (name, received)
    from_yaml, _ = compiled(cli, tmp_path, args)
    assert from_yaml == received
    assert dry_run(cli, kfp, args) == arguments == received, "the run arguments are the step's values"


def test_gpus_2_submitted_trains_on_both_gpus_the_pod_requests(cli, kfp):
    received, arguments, docs = submitted(cli, kfp, ["--gpus", "2"])
    assert arguments["device"] == "0,1", "kubeflow/pipelines: a run argument overrides the compiled default"
    assert received["device"] == "0,1"
    requested = accelerator(docs[0])
    assert (requested["resourceType"], requested["resourceCount"]) == ("nvidia.com/gpu", "2")
    env = docs[0]["deploymentSpec"]["executors"]["exec-yolo-train"]["container"]["env"]
    assert {"name": "MKL_THREADING_LAYER", "value": "GNU"} in env


def test_checkpoint_pvc_submitted_mounts_the_volume_and_points_the_step_at_it(cli, kfp):
    _, _, docs = submitted(cli, kfp, ["--checkpoint-pvc", "ckpt", "--run-key", "pets-1"])
    inputs = step_inputs(docs[0], {})
    assert inputs["checkpoint_dir"] == "/mnt/yolokf/checkpoints" and inputs["run_key"] == "pets-1"
    mounts = platform_config(docs)["pvcMount"]
    assert len(mounts) == 1
    assert mounts[0]["mountPath"] == "/mnt/yolokf/checkpoints"
    assert mounts[0]["pvcNameParameter"]["runtimeValue"]["constant"] == "ckpt"


def test_s3_data_submitted_downloads_first_and_hands_the_dataset_to_training(cli, kfp):
    _, _, docs = submitted(cli, kfp, ["--data", "s3://datasets/pets.zip", "--data-secret", "s3-creds"])
    tasks = docs[0]["root"]["dag"]["tasks"]
    assert sorted(tasks) == ["fetch-dataset", "yolo-train"]
    assert tasks["fetch-dataset"]["inputs"]["parameters"]["uri"]["componentInputParameter"] == "data"
    artifact = tasks["yolo-train"]["inputs"]["artifacts"]["dataset"]["taskOutputArtifact"]
    assert artifact == {"producerTask": "fetch-dataset", "outputArtifactKey": "dataset"}
    fetch = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-fetch-dataset"]
    assert len(fetch["secretAsEnv"]) == 2
    assert fetch["secretAsEnv"][0]["secretNameParameter"]["runtimeValue"]["constant"] == "s3-creds"


def test_the_component_signature_is_the_training_fields():
    """Adding a training field adds a component input and a pipeline parameter, in the same order."""
    from yolokf.core.settings import TrainConfig
    from yolokf.pipeline.components import yolo_train
    from yolokf.pipeline.job import plan_job
    from yolokf.pipeline.pipelines import build_pipeline
    from yolokf.pipeline.step_options import StepOptions

    names = [f.name for f in training_fields()]
    component_inputs = list(yolo_train.component_spec.inputs)
    assert component_inputs[: len(names)] == names
    assert component_inputs[len(names) :] == [
        *("dataset", "checkpoint_dir", "run_key", "trial", "trials", "sweep"),
        *("mlflow", "kfp_run"),  # --mlflow (issue 25)
    ]
    pipeline = build_pipeline(plan_job(TrainConfig(epochs=7), StepOptions(), image=IMAGE))
    assert list(pipeline.component_spec.inputs) == names
    assert pipeline.component_spec.inputs["epochs"].default == 7
    assert re.search(
        r"def yolo_train\(\n    model: str,", yolo_train.component_spec.implementation.container.command[-1]
    )


def _whole(value: Any) -> Any:
    """Protobuf Structs carry every number as a float: 16.0 for 16."""
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    return int(value) if isinstance(value, float) and value.is_integer() else value


@pytest.mark.slow
def test_local_compiled_and_submitted_runs_give_the_step_the_same_values(cli, kfp, tmp_path, trained):
    """One command line (the quickstart's), three ways: kfp.local, the YAML `compile` writes, and `run --host`."""
    from tests.conftest import TRAINED_ARGS

    result, root = trained
    assert result.exit_code == 0, result.output
    (executor_output,) = root.glob("yolov8-train-*/yolo-train/executor_output.json")
    (weights,) = json.loads(executor_output.read_text())["artifacts"]["weights"]["artifacts"]
    local = weights["metadata"]["parameters"]  # what the step built its TrainConfig from, as it recorded it

    out = tmp_path / "p.yaml"
    assert cli(["compile", "--out", out, *TRAINED_ARGS]).exit_code == 0
    from_yaml = training_values(step_inputs(next(yaml.safe_load_all(out.read_text())), {}))

    host = cli(["run", "--host", kfp.url, *TRAINED_ARGS])
    assert host.exit_code == 0, host.output
    (create,) = kfp.calls("POST", r"/runs$")
    body = create.json()
    spec = body["pipeline_spec"].get("pipeline_spec", body["pipeline_spec"])
    submitted_values = training_values(step_inputs(spec, body["runtime_config"]["parameters"]))

    assert len(local) == len(training_fields())
    assert local["train_args"] == {"nbs": 16} and local["epochs"] == 15
    assert _whole(local) == _whole(from_yaml) == _whole(submitted_values)
