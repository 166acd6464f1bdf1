"""The compiled YAML as a contract: what a user uploads in the Kubeflow UI and runs with an edited run form.

Each test compiles a pipeline with the CLI, loads the YAML with `kfp.components.load_component_from_file` (as
the UI's upload does), and runs it through kfp.local with arguments other than the compiled defaults: another
dataset folder, a bucket on the loopback S3 server, a PVC path, other epochs and imgsz, another trials list.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp import components, local

from tests import test_fetch
from yolokf.core.settings import training_fields
from yolokf.pipeline.contract import EVALUATE_PARAMETERS, run_parameters

IMAGE = "registry.example.com/ml/yolokf:0.1.0"
TINY = ["--model", "yolov8n.yaml", "--epochs", "1", "--imgsz", "64", "--batch", "8", "--workers", "0"]
TINY += ["--set", "plots=false"]


@pytest.fixture(scope="module")
def other_dataset(tmp_path_factory) -> Path:
    """A dataset folder the pipeline was not compiled with: 16 training images, 6 held out."""
    from yolokf.data.shapes import write_dataset

    root = tmp_path_factory.mktemp("other") / "parts"
    write_dataset(root, train=16, val=6, test=6, imgsz=64, seed=7)
    return root


@pytest.fixture
def kfp_local(tmp_path) -> Path:
    root = tmp_path / "pipeline-root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    return root


def compile_yaml(cli, path: Path, command: str, *args: Any) -> Any:
    """`yolokf COMMAND --out PATH ARGS`, then the YAML loaded as the Kubeflow UI's upload does."""
    result = cli([command, "--out", path, "--image", IMAGE, *args])
    assert result.exit_code == 0, result.output
    return components.load_component_from_file(str(path))


def train_args(weights: Any) -> dict[str, Any]:
    """The training arguments ultralytics saved in the run's checkpoint."""
    from ultralytics.utils.patches import torch_load

    files = sorted(Path(weights.path).glob("*.pt"))
    assert files, f"no weights in {weights.path}"
    return torch_load(files[0], map_location="cpu")["train_args"]


def evaluated_instances(run: Any) -> int:
    """The objects the evaluation step counted, from its per-class table."""
    table = Path(run.outputs["classes"].path).read_text()
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines() if line.startswith("| ")]
    start = next(i for i, row in enumerate(rows) if row[0] == "Class")  # the per-class table, after the metrics
    header, classes = rows[start], rows[start + 1 :]
    assert len(classes) == 3, table  # circle, square, triangle
    return sum(int(row[header.index("Instances")]) for row in classes)


def held_out_objects(dataset: Path) -> int:
    return sum(len(p.read_text().split("\n")) - 1 for p in (dataset / "labels" / "test").glob("*.txt"))


def failed_step_output(capfd, run) -> str:
    """Run a pipeline that must fail; what its steps printed."""
    with pytest.raises(RuntimeError):
        run()
    captured = capfd.readouterr()
    return captured.out + captured.err


@pytest.mark.parametrize("command", ["compile", "tune", "evaluate"])
def test_every_root_input_is_a_run_parameter_of_the_contract(cli, tmp_path, command):
    from yolokf.core.settings import TrainConfig
    from yolokf.pipeline.job import plan_job
    from yolokf.pipeline.step_options import StepOptions

    args = {"compile": ["--data", "shapes", "--evaluate"]}
    args["tune"] = ["--space", "lr0=uniform:0.001:0.01", "--set", "optimizer=SGD", "--checkpoint-pvc", "ckpt"]
    args["evaluate"] = ["--model", "s3://models/best.pt", "--data", "shapes", "--data-secret", "-", "--export", "onnx"]
    out = tmp_path / "p.yaml"
    result = cli([command, "--out", out, "--image", IMAGE, *args[command]])
    assert result.exit_code == 0, result.output
    spec = next(yaml.safe_load_all(out.read_text()))
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    fields = [f.name for f in training_fields()]
    expected = {"compile": fields, "tune": [*fields, "trials"], "evaluate": list(EVALUATE_PARAMETERS)}[command]
    assert sorted(inputs) == sorted(expected)
    job = plan_job(TrainConfig(model="x.pt", data="shapes"), StepOptions(), image=IMAGE)
    assert list(run_parameters(job)) == fields  # the builder's one source
    # Every compile-time setting is a constant in the IR: the download step's mount and credentials, for one.
    fetch = spec["root"]["dag"]["tasks"]["fetch-dataset"]["inputs"]["parameters"]
    assert fetch["uri"] == {"componentInputParameter": "data"}
    assert "runtimeValue" in fetch["credentials"] and "runtimeValue" in fetch["data_pvc"]


def test_docs_list_the_run_parameters_of_every_pipeline():
    text = (Path(__file__).resolve().parents[1] / "docs" / "cluster.md").read_text()
    section = text.split("## What a run can change", 1)[1].split("\n## ", 1)[0]
    rows = {m[1]: m[2] for m in re.finditer(r"^\| `(yolov8-\w+)` \| (.+?) \|", section, re.M)}
    fields = [f.name for f in training_fields()]
    expected = {"yolov8-train": fields, "yolov8-tune": [*fields, "trials"], "yolov8-evaluate": EVALUATE_PARAMETERS}
    assert sorted(rows) == sorted(expected)
    for pipeline, names in expected.items():
        assert re.findall(r"`(\w+)`", rows[pipeline]) == list(names), pipeline


@pytest.mark.slow
def test_a_compiled_pipeline_trains_on_another_dataset_folder_with_other_epochs_and_imgsz(
    cli, tmp_path, kfp_local, other_dataset
):
    # Compiled for the built-in data at 1 epoch, 64 px, evaluation after training; run on another folder.
    pipeline = compile_yaml(cli, tmp_path / "train.yaml", "compile", *TINY, "--data", "shapes", "--evaluate")
    run = pipeline(data=str(other_dataset), epochs=2, imgsz=96)
    args = train_args(run.outputs["weights"])
    assert (args["epochs"], args["imgsz"]) == (2, 96)
    assert Path(args["data"]) == other_dataset / "data.yaml"
    received = run.outputs["weights"].metadata["parameters"]
    assert (received["data"], received["epochs"], received["imgsz"]) == (str(other_dataset), 2, 96)
    # The evaluation ran on the edited data's held-out split too, not the built-in set's.
    assert "Evaluation on the test split" in Path(run.outputs["classes"].path).read_text()
    assert evaluated_instances(run) == held_out_objects(other_dataset) == 10


@pytest.mark.slow
def test_a_pipeline_compiled_for_local_data_downloads_s3_data_given_at_run_time(
    cli, tmp_path, kfp_local, other_dataset, s3, capfd
):
    test_fetch.upload_folder(s3, other_dataset, "vision/parts")
    # Compiled without credentials: an s3:// run form fails in the download step, in its first seconds.
    plain = compile_yaml(cli, tmp_path / "plain.yaml", "compile", *TINY, "--data", "shapes")
    output = failed_step_output(capfd, lambda: plain(data="s3://datasets/vision/parts"))
    assert "s3://datasets/vision/parts needs object-storage credentials, and this pipeline was compiled " in output
    assert "compile it with --data-secret NAME" in output
    assert "Epoch" not in output, "nothing trained"
    # Compiled with the pod's own credentials (here: this machine's environment, the loopback server).
    ambient = compile_yaml(cli, tmp_path / "ambient.yaml", "compile", *TINY, "--data", "shapes", "--data-secret", "-")
    run = ambient(data="s3://datasets/vision/parts")
    assert run.outputs["weights"].metadata["parameters"]["data"] == "s3://datasets/vision/parts"
    # It trained on what the download step fetched: the uploaded files, in the step's Dataset output.
    (fetched,) = kfp_local.glob("yolov8-train-*/fetch-dataset/dataset")
    assert json.loads((fetched / "yolokf-dataset.json").read_text()) == {"kind": "downloaded", "data": "data.yaml"}
    images = sorted(p.name for p in (fetched / "images" / "train").iterdir())
    assert len(images) == 16 and images == sorted(p.name for p in (other_dataset / "images" / "train").iterdir())
    args = train_args(run.outputs["weights"])
    assert Path(args["data"]).name == "data.yaml" and args["epochs"] == 1


@pytest.mark.slow
def test_a_pipeline_compiled_for_s3_trains_on_a_local_folder_or_a_builtin_name(cli, tmp_path, kfp_local, other_dataset):
    args = [*TINY, "--data", "s3://datasets/nowhere", "--data-secret", "s3-creds"]
    pipeline = compile_yaml(cli, tmp_path / "s3.yaml", "compile", *args)
    run = pipeline(data=str(other_dataset / "data.yaml"))
    assert Path(train_args(run.outputs["weights"])["data"]) == other_dataset / "data.yaml"


def test_a_pvc_path_works_only_on_the_pvc_the_pipeline_mounts(cli, tmp_path, kfp_local, capfd):
    plain = compile_yaml(cli, tmp_path / "plain.yaml", "compile", *TINY, "--data", "shapes")
    output = failed_step_output(capfd, lambda: plain(data="pvc://datasets/coco/data.yaml"))
    assert "pvc://datasets/coco/data.yaml is on PVC datasets, but this pipeline mounts no dataset PVC" in output
    assert "compile it with --data-pvc datasets" in output
    mounted = compile_yaml(cli, tmp_path / "pvc.yaml", "compile", *TINY, "--data", "pvc://other/a/data.yaml")
    output = failed_step_output(capfd, lambda: mounted(data="pvc://datasets/coco/data.yaml"))
    assert "but this pipeline mounts PVC other (volumes are fixed when it is compiled)" in output


@pytest.mark.slow
def test_a_tune_pipeline_run_with_another_trials_list_keeps_to_its_own_folders(cli, tmp_path, kfp_local):
    sweeps = tmp_path / "sweeps"
    args = [*TINY, "--data", "shapes", "--set", "optimizer=SGD", "--space", "lr0=choice:0.001,0.002"]
    args += ["--sampler", "grid", "--checkpoint-dir", sweeps, "--parallel", "1"]
    pipeline = compile_yaml(cli, tmp_path / "tune.yaml", "tune", *args)
    first = [{"trial": 0, "values": {"lr0": 0.011}}, {"trial": 1, "values": {"lr0": 0.012}}]
    second = [{"trial": 0, "values": {"lr0": 0.021}}, {"trial": 1, "values": {"lr0": 0.022}}]
    pipeline(trials=first)
    (first_folder,) = sweeps.iterdir()
    before = {p: p.stat().st_mtime_ns for p in first_folder.rglob("*")}
    run = pipeline(trials=second)
    folders = sorted(sweeps.iterdir())
    assert len(folders) == 2, "the edited run has a sweep folder of its own"
    (second_folder,) = [f for f in folders if f != first_folder]
    for folder, trials in ((first_folder, first), (second_folder, second)):
        for trial in trials:
            saved = yaml.safe_load((folder / f"trial-{trial['trial']:02d}" / "args.yaml").read_text())
            assert saved["lr0"] == trial["values"]["lr0"]
    assert {p: p.stat().st_mtime_ns for p in first_folder.rglob("*")} == before, "the first sweep was not touched"
    best = run.outputs["best"].metadata
    assert best["values"]["lr0"] in (0.021, 0.022)
    table = Path(run.outputs["table"].path).read_text()
    assert "0.021" in table and "0.022" in table and "0.011" not in table and "0.012" not in table
    # The same trials again: the second sweep's folder is found, its finished trials reported, not retrained.
    again = pipeline(trials=second)
    assert sorted(sweeps.iterdir()) == folders
    assert again.outputs["best"].metadata["values"] == best["values"]


@pytest.mark.slow
def test_an_evaluate_pipeline_takes_other_weights_and_data_at_run_time(
    cli, tmp_path, kfp_local, trained, other_dataset
):
    result, root = trained
    assert result.exit_code == 0, result.output
    (weights,) = root.glob("yolov8-train-*/yolo-train/weights/best.pt")
    pipeline = compile_yaml(cli, tmp_path / "eval.yaml", "evaluate", "--model", weights, "--data", "shapes")
    run = pipeline(data=str(other_dataset))
    assert evaluated_instances(run) == held_out_objects(other_dataset)
    assert run.outputs["evaluation"].metadata["split"] == "test"


def test_a_device_the_pod_lacks_fails_in_the_step_with_one_line(cli, tmp_path, kfp_local, capfd):
    import torch

    assert torch.cuda.device_count() == 0, "this test is for a machine without a GPU (CI's)"
    pipeline = compile_yaml(cli, tmp_path / "gpu.yaml", "compile", *TINY, "--data", "shapes", "--gpus", "0")
    output = failed_step_output(capfd, lambda: pipeline(device="0,1"))
    line = "device 0,1: this step has no CUDA GPU that torch can use. Set device to cpu, or compile with --gpus N"
    assert line in output
    assert "Epoch" not in output and "Invalid CUDA" not in output, "stopped before ultralytics"
