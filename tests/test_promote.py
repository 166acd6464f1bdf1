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

from tests.loopback.model_registry import ModelRegistryServer
from tests.test_bad_input import assert_one_clear_line
from tests.test_compile import load_spec
from tests.test_serving import model_config_pb2
from yolokf.core.errors import QualityGateError, UsageError
from yolokf.promotion.gate import PASS, SKIP, gate_step
from yolokf.promotion.plan import parse_gate

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
    evaluation = json.dumps({"split": "test", "metrics": {"mAP50-95": 0.41, "mAP50": 0.9}, "task": "detect"})
    assert gate_step(evaluation=evaluation, gates=["mAP50>=0.5"], action="skip") == PASS
    assert gate_step(evaluation=evaluation, gates=["mAP50-95>=0.45", "mAP50>=0.5"], action="skip") == SKIP
    assert (
        "Quality gate missed on the test split: mAP50-95 0.4100 misses >=0.45 (by 0.0400)." in capsys.readouterr().out
    )
    with pytest.raises(QualityGateError, match=r"mAP50-95 0.4100 misses >=0.45 \(by 0.0400\)\. The run fails"):
        gate_step(evaluation=evaluation, gates=["mAP50-95>=0.45"], action="fail")
    # The gate's metric is checked against the task the evaluated weights have, not the compiled model's name.
    with pytest.raises(QualityGateError, match=r"a detect model does not report mask_mAP50-95 \(it reports precision,"):
        gate_step(evaluation=evaluation, gates=["mask_mAP50-95>=0.1"], action="fail")


# --- datasets -----------------------------------------------------------------------------------------------------


def test_the_dataset_hash_is_its_content_not_its_place_or_yaml(tmp_path):
    """issue 16: names, images and labels make the hash; where the folder is and how its YAML says so do not."""
    import shutil

    from yolokf.data.datasets import dataset_hash
    from yolokf.data.shapes import write_dataset

    first = tmp_path / "a" / "shapes"
    write_dataset(first, train=4, val=2, test=2, imgsz=64)
    second = Path(shutil.copytree(first, tmp_path / "b" / "elsewhere"))
    spec = yaml.safe_load((second / "data.yaml").read_text())
    spec["path"] = str(second)  # a downloaded dataset's YAML is rewritten: another path, another key order
    (second / "data.yaml").write_text(yaml.safe_dump(dict(reversed(list(spec.items()))), sort_keys=False))
    (second / "labels" / "train" / "junk.cache").write_text("ultralytics' label cache")
    digest = dataset_hash(str(first / "data.yaml"))
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    assert dataset_hash(str(second / "data.yaml")) == digest

    label = sorted((second / "labels" / "val").iterdir())[0]
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")
    assert dataset_hash(str(second / "data.yaml")) != digest
    spec["names"] = {0: "ring", 1: "square", 2: "triangle"}
    (first / "data.yaml").write_text(yaml.safe_dump(spec | {"path": str(first)}))
    assert dataset_hash(str(first / "data.yaml")) != digest


def test_a_dataset_ultralytics_cannot_find_is_one_line(tmp_path):
    from yolokf.core.errors import DataError
    from yolokf.data.datasets import dataset_spec

    with pytest.raises(DataError, match=r"^Dataset no-such-set\.yaml: .*'no-such-set\.yaml' does not exist"):
        dataset_spec("no-such-set.yaml")


def _results(task: str, boxes: list[list[float]], shift: float = 0.0, classes: list[int] | None = None):
    """ultralytics' own Results for one 100x100 image, as a model of `task` would return them: `boxes` are
    x1, y1, x2, y2 (moved right by `shift` px), confidence 0.9, the given classes (default 0)."""
    import torch
    from ultralytics.engine.results import Results

    image = np.zeros((100, 100, 3), dtype=np.uint8)
    names = {0: "circle", 1: "square"}
    if task == "classify":
        return Results(image, "x.png", names, probs=torch.tensor([0.2, 0.8] if classes == [1] else [0.8, 0.2]))
    classes = classes or [0] * len(boxes)
    xyxy = torch.tensor([[x1 + shift, y1, x2 + shift, y2] for x1, y1, x2, y2 in boxes], dtype=torch.float32)
    rows = torch.cat([xyxy, torch.full((len(boxes), 1), 0.9), torch.tensor(classes, dtype=torch.float32)[:, None]], 1)
    if task == "obb":
        cx, cy = (xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2
        w, h = xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]
        xywhr = torch.stack([cx, cy, w, h, torch.full_like(cx, 0.3)], 1)
        return Results(image, "x.png", names, obb=torch.cat([xywhr, rows[:, 4:]], 1))
    if task == "segment":
        masks = torch.zeros((len(boxes), 100, 100))
        for index, (x1, y1, x2, y2) in enumerate(xyxy.int().tolist()):
            masks[index, y1:y2, x1:x2] = 1
        return Results(image, "x.png", names, boxes=rows, masks=masks)
    if task == "pose":  # the box corners as keypoints, visible
        kpts = torch.stack([xyxy[:, [0, 1]], xyxy[:, [2, 1]], xyxy[:, [2, 3]], xyxy[:, [0, 3]]], 1)
        return Results(image, "x.png", names, boxes=rows, keypoints=torch.cat([kpts, torch.ones(len(boxes), 4, 1)], 2))
    return Results(image, "x.png", names, boxes=rows)


@pytest.mark.parametrize("task", ["detect", "segment", "pose", "obb"])
def test_prediction_agreement_matches_the_tasks_own_outputs(task):
    """issue 16: an export's boxes (masks, keypoints, rotated boxes) count as the .pt's only when they overlap at
    IoU (OKS) >= 0.5 with the same class; what the export adds or misses lowers the rate."""
    from yolokf.promotion.parity import prediction_agreement

    boxes = [[10, 10, 40, 40], [50, 50, 90, 90]]
    same = prediction_agreement([_results(task, boxes)], [_results(task, boxes)], task)
    assert same == (1.0, 2, 2)
    nudged = prediction_agreement([_results(task, boxes)], [_results(task, boxes, shift=3)], task)
    assert nudged == (1.0, 2, 2)  # a few pixels off still overlaps
    moved = prediction_agreement([_results(task, boxes)], [_results(task, boxes, shift=25)], task)
    assert moved[0] < 0.5 and moved[1:] == (2, 2)  # a quarter of the image off: not the same objects
    relabelled = prediction_agreement([_results(task, boxes)], [_results(task, boxes, classes=[0, 1])], task)
    assert relabelled == (0.5, 2, 2)
    missing = prediction_agreement([_results(task, boxes)], [_results(task, boxes[:1])], task)
    assert missing == (0.5, 2, 1)
    extra = prediction_agreement([_results(task, boxes[:1])], [_results(task, boxes)], task)
    assert extra == (0.5, 1, 2)


def test_prediction_agreement_of_classifiers_is_the_same_top1():
    from yolokf.promotion.parity import prediction_agreement

    reference = [_results("classify", [], classes=[c]) for c in (0, 1, 1, 0)]
    exported = [_results("classify", [], classes=[c]) for c in (0, 1, 0, 0)]
    assert prediction_agreement(reference, exported, "classify") == (0.75, 4, 4)


def test_a_classification_folder_hashes_the_same_wherever_it_is(tmp_path):
    import shutil

    from yolokf.data.datasets import builtin_dataset, dataset_hash

    folder = builtin_dataset("shapes-cls")
    moved = shutil.copytree(folder, tmp_path / "moved")
    assert dataset_hash(str(moved)) == dataset_hash(str(folder))
    (sorted((moved / "val").rglob("*.png"))[0]).unlink()
    assert dataset_hash(str(moved)) != dataset_hash(str(folder))


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
    from yolokf.training.launch import free_port

    root = tmp_path / "root"
    result = cli(["run", *TRAIN, "--registry", f"http://127.0.0.1:{free_port()}", "--pipeline-root", root])
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
    assert "imgsz" not in evaluate["parameters"]  # the weights' own, read in the step (issue 16)
    assert evaluate["parameters"]["device"]["runtimeValue"]["constant"] == "0"  # one GPU in its pod (issue 15)
    chain = [tasks[name]["inputs"]["parameters"] for name in ("yolo-export", "yolo-export-2", "yolo-export-3")]
    assert [p["fmt"]["runtimeValue"]["constant"] for p in chain] == ["onnx", "openvino", "torchscript"]
    assert len(chain) == 3 and all(
        p["imgsz"]["runtimeValue"]["constant"] == 320 and p["dynamic"]["runtimeValue"]["constant"] for p in chain
    )
    # CPU formats export and are timed on the CPU: no accelerator, device cpu.
    assert [p["device"]["runtimeValue"]["constant"] for p in chain] == ["cpu", "cpu", "cpu"]
    assert all(p["run_model"]["componentInputParameter"] == "model" for p in chain)
    resources = {
        name: executor["container"].get("resources", {}).get("accelerator", {}).get("resourceCount")
        for name, executor in spec["deploymentSpec"]["executors"].items()
    }
    assert resources["exec-yolo-train"] == "1" and resources["exec-yolo-evaluate"] == "1"
    assert [resources[f"exec-yolo-export{s}"] for s in ("", "-2", "-3")] == [None, None, None]
    assert resources["exec-yolo-register"] is None and resources["exec-quality-gate"] is None
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
    assert params["champion"]["runtimeValue"]["constant"] is False
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


def test_the_serving_and_registry_settings_land_in_the_compiled_steps(cli, tmp_path):
    """issue 16: the registry's token Secret and CA ConfigMap are mounted into the registration step where its
    token_file and ca_bundle point; the InferenceService's service account and Triton's batch reach the export."""
    args = ["--export", "onnx,engine", "--dynamic", "--registry", "https://mr.kubeflow:8443"]
    args += ["--registry-token-secret", "mr-token", "--registry-ca-configmap", "mr-ca"]
    args += ["--serving-service-account", "kserve-minio", "--serving-max-batch", "32", "--gpus", "2"]
    spec, platform = compiled(cli, tmp_path, *args)
    tasks = spec["root"]["dag"]["tasks"]
    onnx, engine = (tasks[name]["inputs"]["parameters"] for name in ("yolo-export", "yolo-export-2"))
    assert onnx["serving_service_account"]["runtimeValue"]["constant"] == "kserve-minio"
    assert onnx["serving_max_batch"]["runtimeValue"]["constant"] == 32
    assert onnx["serving_name"]["runtimeValue"]["constant"] == ""  # the run's <model>-<data>, named in the step
    # TensorRT needs CUDA: one of the two training GPUs, as device 0; ONNX runs on the CPU.
    assert (onnx["device"]["runtimeValue"]["constant"], engine["device"]["runtimeValue"]["constant"]) == ("cpu", "0")
    executors = spec["deploymentSpec"]["executors"]
    accelerators = {k: v["container"].get("resources", {}).get("accelerator", {}) for k, v in executors.items()}
    assert accelerators["exec-yolo-train"]["resourceCount"] == "2"
    assert accelerators["exec-yolo-export-2"]["resourceCount"] == "1" and accelerators["exec-yolo-export"] == {}
    register = tasks["yolo-register"]["inputs"]["parameters"]
    assert register["token_file"]["runtimeValue"]["constant"] == "/var/run/secrets/yolokf/registry-token/token"
    assert register["ca_bundle"]["runtimeValue"]["constant"] == "/var/run/secrets/yolokf/registry-ca/ca.crt"
    mounts = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-yolo-register"]
    assert mounts["secretAsVolume"] == [
        {"secretName": "mr-token", "mountPath": "/var/run/secrets/yolokf/registry-token", "optional": False,
         "secretNameParameter": {"runtimeValue": {"constant": "mr-token"}}},
    ]  # fmt: skip
    assert [(m["configMapName"], m["mountPath"]) for m in mounts["configMapAsVolume"]] == [
        ("mr-ca", "/var/run/secrets/yolokf/registry-ca")
    ]


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--registry-token-secret", "Bad_Name"], "--registry-token-secret 'Bad_Name' is not a Kubernetes name"),
        (["--registry-token-secret", "t", "--registry-token-file", "/t"], "Give --registry-token-secret or --regis"),
        (["--serving-max-batch", "0"], "--serving-max-batch must be at least 1, got 0."),
    ],
)
def test_bad_serving_and_registry_settings_are_one_line(cli, tmp_path, args, text):
    out = tmp_path / "p.yaml"
    result = cli(["compile", *TRAIN, *CLUSTER, "--registry", "https://mr:8443", *args, "--out", out])
    assert_one_clear_line(result, 2, text)
    assert not out.exists()


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
    # The best trial's image size is in its weights: evaluation and export read it there (issue 16).
    assert "imgsz" not in tasks["yolo-evaluate"]["inputs"]["parameters"]
    assert tasks["yolo-export"]["inputs"]["parameters"]["imgsz"]["runtimeValue"]["constant"] == 0


# --- real local runs ----------------------------------------------------------------------------------------------


@pytest.fixture
def registry():
    server = ModelRegistryServer().start()
    yield server
    server.stop()
    assert not server.bugs, server.bugs


def executor_output(run: Path, task: str) -> dict:
    return json.loads((run / task / "executor_output.json").read_text())


@pytest.mark.slow
def test_evaluate_export_gate_register_and_serve_a_trained_model(cli, tmp_path, best_pt, registry):
    root = tmp_path / "root"
    args = ["--data", "shapes", "--export", "onnx,openvino,torchscript", "--dynamic"]
    args += ["--gate", "mAP50-95>=0.5", "--registry", registry.url, "--registered-model", "shapes-detector"]
    result = cli(["evaluate", "--model", best_pt, *args, "--pipeline-root", root])
    assert result.exit_code == 0, result.output
    (run,) = root.glob("yolov8-evaluate-*")

    # Evaluation on the held-out test split; the confusion matrix as KFP ClassificationMetrics.
    summary = json.loads((run / "yolo-evaluate" / "summary").read_text())
    assert summary["split"] == "test"
    # Measured on the test split, the shared 15-epoch model trained with seeds 0/1/2: mAP50-95 0.725/0.788/0.819;
    # the gate above asks 0.5.
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
    for r in records:  # the task's metric within 2% of the .pt's, the .pt's own well above the floor
        assert r["metric"] == "mAP50-95" and r["reference"]["mAP50-95"] >= 0.6, r
        assert abs(r["difference"]) <= 0.02 * r["reference"]["mAP50-95"], r
        assert r["agreement"] >= 0.9 and r["predictions"][0] > 0, r  # the same boxes, and there are boxes
        assert r["latency_ms"] > 0 and r["reference_latency_ms"] > 0, r
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
    assert "| format | mAP50-95 | change | agreement | latency ms | .pt latency ms | size MB |" in table

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
    # What the weights say of themselves (conftest's TRAINED_ARGS: 15 epochs at imgsz 128), not the CLI's defaults.
    assert (properties["epochs"]["int_value"], properties["imgsz"]["int_value"]) == ("15", "128")
    assert properties["task"]["string_value"] == "detect"
    assert version["state"] == "LIVE"
    uris = {a["modelFormatName"]: a["uri"] for a in registry.artifacts.values()}
    assert sorted(uris) == ["onnx", "openvino", "pytorch", "torchscript"]
    assert uris["onnx"] == storage_uri
    assert "Registered shapes-detector version" in result.stdout

    # One number for one model on one split (issue 26): the evaluation, the exports table, the gate's input and the
    # registry hold the same .pt figure, from one validation (the same imgsz, batch and square letterbox).
    figure = summary["metrics"]["mAP50-95"]
    assert {k: summary["settings"][k] for k in ("imgsz", "batch", "rect")} == {"imgsz": 128, "batch": 16, "rect": False}
    assert len(records) == 3 and all(r["reference"]["mAP50-95"] == figure for r in records)
    assert all(r["reference_from"] == "evaluation" for r in records)
    assert f"| pytorch (.pt) | {figure:.4f} | reference (the evaluation's) |" in "\n".join(table)
    assert "(imgsz 128, batch 16, square letterbox)" in table[0]
    assert float(properties["pytorch.mAP50-95"]["double_value"]) == figure


@pytest.mark.slow
def test_weights_named_best_pt_say_their_task_before_anything_runs(cli, tmp_path, best_pt):
    """docs/promote.md: a gate on a metric the task does not report is refused before anything runs, also for
    weights whose name says nothing (best.pt): the task is read from the checkpoint (issue 16)."""
    root = tmp_path / "root"
    args = ["--data", "shapes", "--gate", "mask_mAP50-95>=0.4", "--pipeline-root", root]
    result = cli(["evaluate", "--model", best_pt, *args])
    assert_one_clear_line(result, 2, "--gate mask_mAP50-95>=0.4: a detect model reports precision, recall,")
    assert not root.exists()


@pytest.mark.slow
@pytest.mark.parametrize("action", ["skip", "fail"])
def test_a_missed_gate_registers_nothing(cli, tmp_path, best_pt, registry, action):
    args = ["--data", "shapes", "--gate", "mAP50-95>=0.99", "--gate-action", action]
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
        failed = "Error: The local step 'quality gate' failed: yolokf.core.errors.QualityGateError: Quality gate"
        assert result.stderr.startswith(failed), result.stderr


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
def test_a_model_that_finds_nothing_cannot_prove_its_export(cli, tmp_path):
    """The promote steps after `yolokf run`'s training: a one-epoch model finds nothing (mAP 0 on both sides), so
    parity cannot be proven and the export step says so in one line instead of passing (issue 16)."""
    args = ["--epochs", "1", "--imgsz", "64", "--workers", "0", "--set", "plots=false", "--export", "onnx"]
    result = cli(["run", *TRAIN, *args, "--pipeline-root", tmp_path])
    assert result.exit_code == 1, result.output
    (run,) = tmp_path.glob("yolov8-train-*")
    summary = json.loads((run / "yolo-evaluate" / "summary").read_text())
    assert (summary["split"], summary["epochs"], summary["imgsz"]) == ("test", 1, 64)
    assert re.search(
        r"--export onnx: the \.pt model's own mAP50-95 is 0\.0\d{3} on the test split, under 0\.05: a model that "
        r"finds nothing cannot prove its export \(the export has 0\.\d{4}\)",
        result.stderr,
    ), result.output


@pytest.fixture
def coco8(tmp_path, monkeypatch, shapes_yaml) -> Path:
    """ultralytics' datasets_dir (in a settings.json of a private YOLO_CONFIG_DIR) holding `coco8/` in the layout of
    ultralytics' own coco8.yaml (images/{train,val}, labels/{train,val}), filled with the built-in shapes images."""
    import shutil

    from ultralytics.utils import SettingsManager

    datasets = tmp_path / "datasets"
    config = tmp_path / "config"
    settings = SettingsManager(file=config / "Ultralytics" / "settings.json")
    settings.update(datasets_dir=str(datasets))
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(config))
    source = shapes_yaml.parent
    for kind in ("images", "labels"):
        for split in ("train", "val"):
            shutil.copytree(source / kind / split, datasets / "coco8" / kind / split)
    return datasets / "coco8"


@pytest.mark.slow
def test_an_ultralytics_dataset_name_goes_through_evaluation_export_and_the_gate(cli, tmp_path, coco8, best_pt):
    """`--data coco8.yaml` as a user with a prepared datasets_dir runs it (issue 16): the steps resolve the name as
    ultralytics does, so evaluation (coco8 has no test split: val), export parity and the gate all work.

    The shared shapes model is fine-tuned: ultralytics keeps every layer but the last class convolution for coco8's
    80 classes. optimizer=auto would pick AdamW at lr 0.002*5/(4+nc), 0.00012 for 80 classes, too slow for a short
    test (from scratch, 15 epochs left the 80-class head at mAP 0; fine-tuned, 5 epochs at mAP50-95 0.02): the
    learning rate the 3-class model trained at (0.0014) is set.
    """
    import shutil

    from yolokf.data.datasets import dataset_hash

    args = ["--model", best_pt, "--data", "coco8.yaml", "--epochs", "8", "--imgsz", "128", "--batch", "16"]
    args += ["--set", "nbs=16", "--set", "optimizer=AdamW", "--set", "lr0=0.0014"]
    args += ["--export", "onnx", "--gate", "mAP50>=0.3", "--pipeline-root", tmp_path / "root"]
    result = cli(["run", *args])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "root").glob("yolov8-train-*")
    summary = json.loads((run / "yolo-evaluate" / "summary").read_text())
    assert (summary["split"], summary["epochs"], summary["imgsz"]) == ("val", 8, 128)
    # The content hash is where-independent: the same files under another folder, with their own data.yaml.
    elsewhere = shutil.copytree(coco8, tmp_path / "elsewhere")
    builtin = yaml.safe_load(
        Path(__import__("ultralytics").__file__).parent.joinpath("cfg/datasets/coco8.yaml").read_text()
    )
    spec = {"path": str(elsewhere), "train": "images/train", "val": "images/val", "names": builtin["names"]}
    (elsewhere / "data.yaml").write_text(yaml.safe_dump(spec))
    assert summary["dataset_hash"] == dataset_hash(str(elsewhere / "data.yaml"))
    (record,) = executor_output(run, "yolo-export")["parameterValues"]["Output"]
    assert record["split"] == "val" and record["agreement"] >= 0.9, record
    assert "yolokf: quality gate passed on the val split: mAP50>=0.3" in result.stdout


@pytest.mark.slow
def test_the_same_data_from_a_folder_and_from_s3_is_one_dataset_for_the_champion(
    cli,
    tmp_path,
    best_pt,
    shapes_yaml,
    registry,
    s3,  # noqa: F811 (the fixture imported above)
):
    """Two evaluations of the same weights on the same images, one from a local folder, one downloaded from
    s3://: the same content hash is registered, and the second run finds the first as the champion to beat."""
    from tests.loopback.s3 import upload_folder

    assert upload_folder(s3, shapes_yaml.parent, "vision/shapes") > 0
    args = ["--registry", registry.url, "--registered-model", "shapes", "--champion"]
    local = ["--data", shapes_yaml.parent, "--pipeline-root", tmp_path / "1"]
    first = cli(["evaluate", "--model", best_pt, *local, *args])
    assert first.exit_code == 0, first.output
    remote = ["--data", "s3://datasets/vision/shapes", "--pipeline-root", tmp_path / "2"]
    second = cli(["evaluate", "--model", best_pt, *remote, *args])
    assert second.exit_code == 0, second.output

    (version,) = registry.versions.values()
    registered = version["customProperties"]["dataset_hash"]["string_value"]
    assert registered.startswith("sha256:")
    assert re.search(
        rf"Not registered: mAP50-95 0\.\d+ does not beat version {re.escape(version['name'])}'s 0\.\d+ by 0",
        second.stdout,
    ), second.output
    assert "first version with pytorch.mAP50-95 for dataset " + registered in first.stdout


@pytest.mark.slow
def test_a_damaged_export_fails_parity_in_one_line(best_pt, tmp_path, shapes_yaml):
    """An ONNX file whose weights are perturbed: the metric check, and with it relaxed the prediction agreement,
    fail with one line naming the format and both values (issue 16)."""
    import shutil

    import onnx
    from onnx import numpy_helper

    from yolokf.promotion.export import ExportSettings, check_parity, export

    weights = tmp_path / "best.pt"
    shutil.copy2(best_pt, weights)
    settings = ExportSettings(imgsz=128)
    exported = export(weights, "onnx", settings, "cpu")
    model = onnx.load(str(exported))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        values = numpy_helper.to_array(init)
        if values.ndim == 4:  # every convolution kernel, with noise of half its own spread
            noisy = values + rng.normal(0, 0.5 * float(values.std()), values.shape).astype(values.dtype)
            init.CopyFrom(numpy_helper.from_array(noisy, init.name))
    onnx.save(model, str(exported))
    data = str(shapes_yaml)

    with pytest.raises(QualityGateError) as metric:
        check_parity(weights, exported, data, "onnx", settings, batch=16, device="cpu", workdir=tmp_path)
    assert re.fullmatch(
        r"--export onnx: mAP50-95 0\.\d{4} against the \.pt model's 0\.[6-9]\d{3} on the test split, a change of "
        r"-\d+\.\d%, beyond --export-tolerance 0\.02 \(2%\)\.",
        str(metric.value),
    ), str(metric.value)
    relaxed = ExportSettings(imgsz=128, tolerance=1.0)
    with pytest.raises(QualityGateError) as agreement:
        check_parity(weights, exported, data, "onnx", relaxed, batch=16, device="cpu", workdir=tmp_path)
    assert re.fullmatch(
        r"--export onnx: its predictions agree with the \.pt model's on \d+\.\d% of \d+ test images \(\d+ against "
        r"\d+ predictions\), under --export-agreement 0\.9\.",
        str(agreement.value),
    ), str(agreement.value)


@pytest.mark.slow
def test_names_come_from_the_data_a_run_received_not_the_compiled_one(cli, tmp_path, best_pt, registry):
    """issue 15: a compiled evaluate pipeline, uploaded and run with other data, registers and serves under that
    data's name (the steps derive `<model>-<data>` from what they received)."""
    from kfp import components, local

    from yolokf.data.shapes import write_dataset

    parts = tmp_path / "parts"
    write_dataset(parts, train=4, val=4, test=8, imgsz=128, seed=7)
    out = tmp_path / "eval.yaml"
    args = ["--model", best_pt, "--data", "shapes", "--export", "onnx", "--registry", registry.url, "--out", out]
    result = cli(["evaluate", *args, *CLUSTER])
    assert result.exit_code == 0, result.output
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    run = components.load_component_from_file(str(out))(data=str(parts))

    (model,) = registry.registered_models.values()
    assert model["name"] == "best-parts"
    (repository,) = Path(run.outputs["onnx"].path, "triton").iterdir()
    assert repository.name == "best-parts"
