"""From weights to a shippable model: evaluation, exports with their parity check, the quality gate, Model Registry
and the serving layout, through the CLI (compile, and real local runs through kfp.local)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from google.protobuf import json_format

from tests.model_registry_server import ModelRegistryServer
from tests.test_bad_input import assert_one_clear_line
from tests.test_compile import load_spec
from tests.test_serving import model_config_pb2
from yolokf.errors import QualityGateError, UsageError
from yolokf.promote import parse_gate
from yolokf.steps.gate import PASS, SKIP, gate_step

TRAIN = ["--model", "yolov8n.yaml", "--data", "shapes"]
CLUSTER = ["--image", "r/y:1"]


# --- gates --------------------------------------------------------------------------------------------------------


def test_gates_parse_and_say_how_they_miss():
    gate = parse_gate("mAP50-95 >= 0.45")
    assert (gate.metric, gate.op, gate.threshold) == ("mAP50-95", ">=", 0.45)
    assert gate.passes(0.45) and not gate.passes(0.41)
    assert gate.miss(0.41) == "mAP50-95 0.4100 misses >=0.45 (by 0.0400)"
    assert parse_gate("top1_accuracy>.9").passes(0.95)
    with pytest.raises(UsageError, match=r"--gate 'mAP50-95=>0.4' is not METRIC OP VALUE"):
        parse_gate("mAP50-95=>0.4")


def test_the_gate_step_passes_skips_or_fails(capsys):
    evaluation = json.dumps({"split": "test", "metrics": {"mAP50-95": 0.41, "mAP50": 0.9}})
    assert gate_step(evaluation, ["mAP50>=0.5"], "skip") == PASS
    assert gate_step(evaluation, ["mAP50-95>=0.45", "mAP50>=0.5"], "skip") == SKIP
    assert (
        "Quality gate missed on the test split: mAP50-95 0.4100 misses >=0.45 (by 0.0400)." in capsys.readouterr().out
    )
    with pytest.raises(QualityGateError, match=r"mAP50-95 0.4100 misses >=0.45 \(by 0.0400\)\. The run fails"):
        gate_step(evaluation, ["mAP50-95>=0.45"], "fail")


# --- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--export", "onnx,tflite2"], "--export 'tflite2' is not a format yolokf exports; use onnx, openvino,"),
        (["--gate", "mAP50-95=>0.4"], "--gate 'mAP50-95=>0.4' is not METRIC OP VALUE"),
        (["--gate", "mask_mAP50-95>=0.4"], "--gate mask_mAP50-95>=0.4: a detect model reports precision, recall,"),
        (["--gate", "mAP50>=0.5", "--gate-action", "abort"], "--gate-action 'abort': use skip"),
        (["--export", "engine"], "--export engine (TensorRT) needs a GPU in the step: this machine has no CUDA GPU"),
        (["--champion"], "--champion needs --registry URL."),
        (["--registry", "model-registry:8080"], "--registry 'model-registry:8080' is not a URL"),
        (["--export", "onnx", "--export-tolerance", "2"], "--export-tolerance must be between 0 and 1, got 2.0."),
    ],
)
def test_bad_promote_flags_are_one_line_before_anything_runs(cli, tmp_path, args, text):
    root = tmp_path / "root"
    result = cli(["run", *TRAIN, *args, "--pipeline-root", root])
    assert_one_clear_line(result, 2, text)
    assert not root.exists()


def test_engine_on_a_cluster_needs_gpus(cli, tmp_path):
    out = tmp_path / "p.yaml"
    result = cli(["compile", *TRAIN, *CLUSTER, "--export", "engine", "--out", out])
    assert_one_clear_line(result, 2, "--export engine (TensorRT) needs a GPU in the step: add --gpus 1.")
    assert not out.exists()
    assert cli(["compile", *TRAIN, *CLUSTER, "--export", "engine", "--gpus", "1", "--out", out]).exit_code == 0


def test_an_unreachable_registry_is_one_line_before_training(cli, tmp_path):
    from tests.test_remote import closed_port

    root = tmp_path / "root"
    result = cli(["run", *TRAIN, "--registry", f"http://127.0.0.1:{closed_port()}", "--pipeline-root", root])
    assert result.exit_code == 1, result.output
    assert_one_clear_line(result, 1, "Cannot reach Model Registry at http://127.0.0.1:")
    assert not root.exists()


# --- the compiled pipeline ----------------------------------------------------------------------------------------


def compiled(cli, tmp_path: Path, *args) -> tuple[dict, dict]:
    out = tmp_path / "p.yaml"
    result = cli(["compile", *TRAIN, *CLUSTER, "--gpus", "1", *args, "--out", out])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(out.read_text()))
    return json_format.MessageToDict(load_spec(out)), docs[1]


def test_promote_steps_follow_training_in_the_same_pipeline(cli, tmp_path):
    registry = ["--registry", "https://model-registry.kubeflow:8443", "--registered-model", "pets-detector"]
    spec, platform = compiled(
        cli, tmp_path, "--export", "onnx,openvino", "--export", "torchscript", "--export-imgsz", "320", "--dynamic",
        "--gate", "mAP50-95>=0.45", "--gate", "recall>0.5", "--gate-action", "fail", *registry,
    )  # fmt: skip
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(tasks) == [
        "condition-1", "fetch-dataset", "quality-gate", "yolo-evaluate", "yolo-export", "yolo-export-2",
        "yolo-export-3", "yolo-train",
    ]  # fmt: skip
    evaluate = tasks["yolo-evaluate"]["inputs"]
    assert evaluate["artifacts"]["weights"]["taskOutputArtifact"] == {
        "producerTask": "yolo-train",
        "outputArtifactKey": "weights",
    }
    assert evaluate["parameters"]["imgsz"]["componentInputParameter"] == "imgsz"
    chain = [tasks[name]["inputs"]["parameters"] for name in ("yolo-export", "yolo-export-2", "yolo-export-3")]
    assert [p["fmt"]["runtimeValue"]["constant"] for p in chain] == ["onnx", "openvino", "torchscript"]
    assert all(
        p["imgsz"]["runtimeValue"]["constant"] == 320 and p["dynamic"]["runtimeValue"]["constant"] for p in chain
    )
    assert chain[0]["previous"]["runtimeValue"]["constant"] == []
    assert chain[1]["previous"]["taskOutputParameter"] == {
        "producerTask": "yolo-export",
        "outputParameterKey": "Output",
    }
    assert chain[0]["serving_name"]["runtimeValue"]["constant"] == "pets-detector"
    gate = tasks["quality-gate"]["inputs"]["parameters"]
    assert gate["gates"]["runtimeValue"]["constant"] == ["mAP50-95>=0.45", "recall>0.5"]
    assert gate["action"]["runtimeValue"]["constant"] == "fail"
    condition = tasks["condition-1"]
    assert "quality-gate" in condition["dependentTasks"]
    assert "== 'pass'" in condition["triggerPolicy"]["condition"]
    register = spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]["yolo-register"]["inputs"]
    params = register["parameters"]
    assert params["registry"]["runtimeValue"]["constant"] == "https://model-registry.kubeflow:8443"
    assert params["registered_model"]["runtimeValue"]["constant"] == "pets-detector"
    assert params["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert params["image"]["runtimeValue"]["constant"] == "r/y:1"
    assert params["exports"]["componentInputParameter"].startswith("pipelinechannel--yolo-export-3-Output")
    outputs = set(spec["root"]["outputDefinitions"]["artifacts"])
    assert outputs == {"weights", "metrics", "report", "run_dir", "evaluation", "confusion", "classes", "onnx",
                       "openvino", "torchscript", "exports"}  # fmt: skip
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert "exec-yolo-evaluate" in executors and "exec-yolo-export" in executors  # same pod settings as training
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"r/y:1"}


def test_a_plain_run_has_only_the_training_step_and_tune_hands_its_best_on(cli, tmp_path):
    spec, _ = compiled(cli, tmp_path)
    assert sorted(spec["root"]["dag"]["tasks"]) == ["fetch-dataset", "yolo-train"]
    out = tmp_path / "tune.yaml"
    args = [*TRAIN, *CLUSTER, "--set", "optimizer=SGD", "--space", "lr0=uniform:0.001:0.01", "--checkpoint-pvc", "c"]
    result = cli(["tune", *args, "--export", "onnx", "--out", out])
    assert result.exit_code == 0, result.output
    tasks = json_format.MessageToDict(load_spec(out))["root"]["dag"]["tasks"]
    assert tasks["yolo-evaluate"]["inputs"]["artifacts"]["weights"]["taskOutputArtifact"] == {
        "producerTask": "sweep-report",
        "outputArtifactKey": "best",
    }


# --- real local runs ----------------------------------------------------------------------------------------------


@pytest.fixture
def registry():
    server = ModelRegistryServer().start()
    yield server
    server.stop()
    assert not server.bugs, server.bugs


@pytest.fixture(scope="session")
def best_pt(trained) -> Path:
    """The shared trained model's weights (conftest's `trained`: the README quickstart's arguments)."""
    result, root = trained
    assert result.exit_code == 0, result.output
    (weights,) = root.glob("yolov8-train-*/yolo-train/weights/best.pt")
    return weights


def executor_output(run: Path, task: str) -> dict:
    return json.loads((run / task / "executor_output.json").read_text())


@pytest.mark.slow
def test_evaluate_export_gate_register_and_serve_a_trained_model(cli, tmp_path, best_pt, registry):
    root = tmp_path / "root"
    args = ["--data", "shapes", "--imgsz", "128", "--export", "onnx,openvino,torchscript", "--dynamic"]
    args += ["--gate", "mAP50-95>=0.5", "--registry", registry.url, "--registered-model", "shapes-detector"]
    result = cli(["evaluate", "--model", best_pt, *args, "--pipeline-root", root])
    assert result.exit_code == 0, result.output
    (run,) = root.glob("yolov8-evaluate-*")

    # Evaluation on the held-out test split; the confusion matrix as KFP ClassificationMetrics.
    summary = json.loads((run / "yolo-evaluate" / "summary").read_text())
    assert summary["split"] == "test"
    # Measured: 0.725 mAP50-95 on the test split (the shared 15-epoch model); the gate above asks 0.5.
    assert summary["metrics"]["mAP50-95"] >= 0.6
    artifacts = executor_output(run, "yolo-evaluate")["artifacts"]
    matrix = artifacts["confusion"]["artifacts"][0]["metadata"]["confusionMatrix"]
    labels = [spec["displayName"] for spec in matrix["annotationSpecs"]]
    assert labels == ["circle", "square", "triangle", "background"]
    classes = (run / "yolo-evaluate" / "classes").read_text()
    instances = {m[0]: int(m[1]) for m in re.findall(r"^\| (circle|square|triangle) \| \d+ \| (\d+) \|", classes, re.M)}
    assert len(instances) == 3
    for label, row in zip(labels, matrix["rows"], strict=False):
        if label in instances:  # every true box of a class is counted once: found, confused or missed
            assert sum(row["row"]) == instances[label], (label, row)

    # Every export loads in its real runtime and passed the parity check; one table has them all.
    records = executor_output(run, "yolo-export-3")["parameterValues"]["Output"]
    assert [r["format"] for r in records] == ["onnx", "openvino", "torchscript"]
    assert all(abs(r["difference"]) <= 0.01 and r["latency_ms"] > 0 for r in records)
    onnx_dir, openvino_dir, torchscript_dir = (
        run / t / "model" for t in ("yolo-export", "yolo-export-2", "yolo-export-3")
    )
    import onnxruntime
    import openvino
    import torch

    batch = np.zeros((2, 3, 128, 128), dtype=np.float32)  # dynamic batch
    session = onnxruntime.InferenceSession(str(onnx_dir / "model.onnx"))
    (boxes,) = session.run(None, {session.get_inputs()[0].name: batch})
    assert boxes.shape[:2] == (2, 4 + 3)  # xywh + 3 classes
    (xml,) = openvino_dir.glob("*_openvino_model/*.xml")
    compiled_model = openvino.Core().compile_model(str(xml), "CPU")
    assert compiled_model(batch[:1])[0].shape[1] == 7
    assert torch.jit.load(str(torchscript_dir / "model.torchscript"))(torch.zeros(1, 3, 128, 128)).shape[1] == 7
    table = (run / "yolo-export-3" / "table").read_text().splitlines()
    assert len([line for line in table if line.startswith("| ") and "format" not in line]) == 4  # .pt + 3

    # The Triton repository and the InferenceService next to the ONNX export.
    config = model_config_pb2.ModelConfig()
    from google.protobuf import text_format

    text_format.Parse((onnx_dir / "triton" / "shapes-detector" / "config.pbtxt").read_text(), config)
    assert [i.name for i in config.input] == [session.get_inputs()[0].name]
    assert [o.name for o in config.output] == [o.name for o in session.get_outputs()]
    assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
    manifest = yaml.safe_load((onnx_dir / "inference-service.yaml").read_text())
    storage_uri = manifest["spec"]["predictor"]["model"]["storageUri"]
    assert storage_uri == (onnx_dir / "triton").resolve().as_uri()

    # Registered: one version, one artifact per format, the ONNX one at the served repository.
    (model,) = registry.registered_models.values()
    assert model["name"] == "shapes-detector"
    (version,) = registry.versions.values()
    properties = version["customProperties"]
    assert properties["evaluation_split"]["string_value"] == "test"
    assert properties["dataset_hash"]["string_value"].startswith("sha256:")
    uris = {a["modelFormatName"]: a["uri"] for a in registry.artifacts.values()}
    assert sorted(uris) == ["onnx", "openvino", "pytorch", "torchscript"]
    assert uris["onnx"] == storage_uri
    assert "Registered shapes-detector version" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("action", ["skip", "fail"])
def test_a_missed_gate_registers_nothing(cli, tmp_path, best_pt, registry, action):
    args = ["--data", "shapes", "--imgsz", "128", "--gate", "mAP50-95>=0.99", "--gate-action", action]
    result = cli(["evaluate", "--model", best_pt, *args, "--registry", registry.url, "--pipeline-root", tmp_path])
    assert not registry.registered_models and not registry.versions
    missed = re.search(
        r"Quality gate missed on the test split: mAP50-95 0\.\d{4} misses >=0.99 \(by 0\.\d{4}\)", result.output
    )
    assert missed, result.output
    if action == "skip":
        assert result.exit_code == 0, result.output
        assert "Nothing is registered (--gate-action skip)." in result.stdout
    else:
        assert result.exit_code == 1
        assert result.stderr.startswith("Error: A local step failed: yolokf.errors.QualityGateError: Quality gate")


def test_a_refused_registry_token_is_one_line_without_the_token(cli, tmp_path):
    server = ModelRegistryServer(token="the-right-token").start()
    url = server.url
    try:
        token = tmp_path / "token"
        token.write_text("wrong-token-5b2e\n")
        root = tmp_path / "root"
        args = ["--registry", url, "--registry-token-file", token, "--pipeline-root", root]
        result = cli(["run", *TRAIN, *args])
    finally:
        server.stop()
    assert_one_clear_line(result, 1, f"Model Registry at {url} refused the token (HTTP 401)")
    assert "wrong-token-5b2e" not in result.output
    assert not root.exists()
    missing = cli(["run", *TRAIN, "--registry", url, "--registry-token-file", tmp_path / "nope"])
    assert_one_clear_line(missing, 2, f"--registry-token-file {tmp_path / 'nope'}: no such file.")


@pytest.mark.slow
def test_a_training_run_goes_on_to_evaluation_and_export(cli, tmp_path):
    """The promote steps after the training step of `yolokf run` (a one-epoch model: the wiring, not the score)."""
    args = ["--epochs", "1", "--imgsz", "64", "--workers", "0", "--set", "plots=false", "--export", "onnx"]
    args += ["--gate", "mAP50-95>=0.9", "--pipeline-root", tmp_path]
    result = cli(["run", *TRAIN, *args])
    assert result.exit_code == 0, result.output
    (run,) = tmp_path.glob("yolov8-train-*")
    assert json.loads((run / "yolo-evaluate" / "summary").read_text())["split"] == "test"
    (record,) = executor_output(run, "yolo-export")["parameterValues"]["Output"]
    assert record["format"] == "onnx" and abs(record["difference"]) <= 0.01
    assert (run / "yolo-export" / "model" / "model.onnx").is_file()
    assert "Nothing is registered (--gate-action skip)." in result.stdout
    assert "| onnx |" in result.stdout  # the exports table, printed at the end
