"""`yolokf compile` writes a KFP v2 pipeline that kfp itself loads back, and nothing half-written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from google.protobuf import json_format
from kfp import components
from kfp.pipeline_spec import pipeline_spec_pb2


def load_spec(path: Path) -> pipeline_spec_pb2.PipelineSpec:
    docs = list(yaml.safe_load_all(path.read_text()))
    spec = pipeline_spec_pb2.PipelineSpec()
    json_format.ParseDict(docs[0], spec)
    return spec


def test_compile_writes_a_pipeline_kfp_can_load(cli, tmp_path):
    out = tmp_path / "yolov8_train.yaml"
    result = cli(
        ["compile", "--out", out, "--model", "yolov8s.pt", "--data", "data/pets.yaml", "--epochs", "10"]
        + ["--imgsz", "320", "--batch", "8", "--set", "lr0=0.005", "--set", "cos_lr=true", "--image", "reg/yolokf:t1"]
    )
    assert result.exit_code == 0, result.output
    assert f"Wrote {out}" in result.stdout

    loaded = components.load_component_from_file(str(out))
    assert loaded.name == "yolov8-train"

    spec = load_spec(out)
    assert spec.pipeline_info.name == "yolov8-train"
    params = spec.root.input_definitions.parameters
    defaults = {name: json_format.MessageToDict(p.default_value) for name, p in params.items()}
    assert defaults == {
        "model": "yolov8s.pt",
        "data": "data/pets.yaml",
        "epochs": 10.0,
        "imgsz": 320.0,
        "batch": 8.0,
        "device": "",
        "workers": 8.0,
        "seed": 0.0,
        "train_args": {"lr0": 0.005, "cos_lr": True},
    }
    assert set(spec.root.output_definitions.artifacts) == {"weights", "metrics", "report", "run_dir"}
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    train = next(e for name, e in executors.items() if "yolo-train" in name)["container"]
    assert train["image"] == "reg/yolokf:t1"
    command = " ".join(train["command"])
    assert "pip install" not in command, "the step must not install anything at start"
    assert "from yolokf.training.train import train_step" in command


def test_compile_failure_leaves_no_file(cli, tmp_path):
    out = tmp_path / "p.yaml"
    result = cli(["compile", "--out", out, "--set", "nosuchkey=1"])
    assert result.exit_code == 2
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_compile_replaces_an_existing_file_whole(cli, tmp_path):
    out = tmp_path / "p.yaml"
    out.write_text("old")
    assert cli(["compile", "--out", out, "--epochs", "3"]).exit_code == 0
    assert "old" not in out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yaml"]


def test_out_dash_writes_the_pipeline_to_stdout_and_no_file(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli(["compile", "--out", "-", "--epochs", "7", "--image", "reg/yolokf:t1"])
    assert result.exit_code == 0, result.output
    spec = pipeline_spec_pb2.PipelineSpec()
    json_format.ParseDict(next(yaml.safe_load_all(result.stdout)), spec)  # `compile --out - > p.yaml` loads
    assert spec.pipeline_info.name == "yolov8-train"
    assert spec.root.input_definitions.parameters["epochs"].default_value.number_value == 7
    assert list(tmp_path.iterdir()) == [], "no file named '-'"


def test_root_help_is_the_whole_apps_without_building_every_command():
    """`yolokf --help` skips building each command's options (issue 27), and prints what the whole app prints."""
    env = {**os.environ, "COLUMNS": "100", "TERM": "dumb", "NO_COLOR": "1", "_TYPER_FORCE_DISABLE_TERMINAL": "1"}
    whole = "import typer; from yolokf.cli.app import app; typer.main.get_command(app).main(['--help'], 'yolokf')"
    expected = subprocess.run([sys.executable, "-c", whole], capture_output=True, text=True, env=env)
    ours = subprocess.run([sys.executable, "-m", "yolokf", "--help"], capture_output=True, text=True, env=env)
    assert ours.returncode == 0 and expected.returncode == 0, ours.stderr + expected.stderr
    assert "│ run " in ours.stdout and "│ config " in ours.stdout
    assert ours.stdout == expected.stdout


def test_help_and_compile_do_not_import_torch_or_ultralytics(tmp_path):
    probe = (
        "import sys\n"
        "from yolokf.cli.app import main\n"
        "for argv in (['--help'], ['compile', '--out', sys.argv[1]]):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "print(sorted(m for m in ('torch', 'ultralytics', 'cv2') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "p.yaml")], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "p.yaml").exists()


def test_python_dash_m_works(tmp_path):
    done = subprocess.run([sys.executable, "-m", "yolokf", "--version"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("yolokf ")
