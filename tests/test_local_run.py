"""`yolokf run` with no cluster trains for real through kfp.local, and leaves its outputs where they can be found."""

from __future__ import annotations

import base64
import re

import pytest
import torch
import yaml

from yolokf.core.tasks import readable_metrics
from yolokf.data.shapes import CLASSES, write_dataset


@pytest.mark.slow
def test_local_run_learns_the_shapes(trained):
    result, _ = trained
    assert result.exit_code == 0, result.output
    assert "Final validation metrics" in result.stdout
    map50 = float(re.search(r"│ mAP50\s+│\s+([0-9.]+)", result.stdout).group(1))
    # Measured, seeds 0/1/2: 0.94/0.995/0.995 (2 CPUs, 150 s); the default nbs=64 reaches about 0.5, so this floor
    # needs --set nbs=16.
    assert map50 >= 0.85, result.stdout
    rows = re.findall(r"^│ (\S+)\s+│", result.stdout, re.M)
    assert rows == ["precision", "recall", "mAP50", "mAP50-95", "fitness"], rows


@pytest.mark.slow
def test_local_run_leaves_every_artifact_under_the_pipeline_root(trained):
    result, root = trained
    (run,) = list(root.glob("yolov8-train-*"))
    step = run / "yolo-train"
    assert f"outputs under {root}" in result.stdout

    weights = step / "weights"
    assert sorted(p.name for p in weights.iterdir()) == ["best.pt", "last.pt"]
    checkpoint = torch.load(weights / "best.pt", map_location="cpu", weights_only=False)
    assert checkpoint["train_args"]["epochs"] == 15
    assert checkpoint["train_args"]["imgsz"] == 128
    assert checkpoint["train_args"]["nbs"] == 16, "--set nbs=16 reached ultralytics"

    results_csv = (step / "run_dir" / "results.csv").read_text().splitlines()
    assert len(results_csv) == 1 + 15, "one row per epoch"
    args = yaml.safe_load((step / "run_dir" / "args.yaml").read_text())
    assert (args["model"], args["nbs"], args["batch"]) == ("yolov8n.yaml", 16, 16)

    report = (step / "report").read_text()
    assert report.startswith("<!doctype html>")
    assert "mAP50-95" in report
    images = re.findall(r'src="data:image/(?:png|jpeg);base64,([^"]+)"', report)
    assert len(images) >= 3, "results, confusion matrix and PR curve are embedded, not linked"
    assert base64.b64decode(images[0])[:4] == b"\x89PNG"
    for name in ("results.png", "confusion_matrix", "PR_curve"):
        assert name in report
    for path in (step / "weights", step / "report", step / "run_dir"):
        assert str(path) in result.stdout, f"{path} printed for the user"
    listed = re.findall(r"^\s*(\w+): /", result.stdout, re.M)
    assert sorted(listed) == ["log", "report", "run_dir", "weights"], "Metrics are metadata under kfp.local: no file"


def test_readable_metric_names_for_every_task():
    assert readable_metrics(
        {"metrics/precision(B)": 0.5, "metrics/recall(B)": 0.4, "metrics/mAP50(B)": 0.3, "metrics/mAP50-95(B)": 0.2}
        | {"fitness": 0.25}
    ) == {"precision": 0.5, "recall": 0.4, "mAP50": 0.3, "mAP50-95": 0.2, "fitness": 0.25}
    assert readable_metrics({"metrics/mAP50(M)": 0.1, "metrics/mAP50-95(P)": 0.2}) == {
        "mask_mAP50": 0.1,
        "pose_mAP50-95": 0.2,
    }
    assert readable_metrics({"metrics/accuracy_top1": 0.9, "metrics/accuracy_top5": 1.0}) == {
        "top1_accuracy": 0.9,
        "top5_accuracy": 1.0,
    }


def test_shapes_dataset_is_deterministic_yolo_layout(tmp_path):
    first = write_dataset(tmp_path / "a", train=6, val=2, test=0)
    second = write_dataset(tmp_path / "b", train=6, val=2, test=0)
    spec = yaml.safe_load(first.read_text())
    assert spec["names"] == dict(enumerate(CLASSES))
    assert (tmp_path / "a" / spec["train"]).is_dir() and (tmp_path / "a" / spec["val"]).is_dir()
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*") if p.name != "data.yaml")
    assert len(files_a) == 2 * (6 + 2)
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    labels = [
        line.split() for line in (tmp_path / "a" / "labels" / "train" / "train_0000.txt").read_text().splitlines()
    ]
    assert len(labels) >= 1
    for label in labels:
        assert len(label) == 5 and int(label[0]) in range(3) and all(0 < float(v) <= 1 for v in label[1:])
    assert second.parent.name == "b"


def test_shapes_command_writes_the_dataset(cli, tmp_path):
    result = cli(["shapes", tmp_path / "ds"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ds" / "data.yaml").exists()
    assert len(list((tmp_path / "ds" / "images" / "train").iterdir())) == 128
    again = cli(["shapes", tmp_path / "ds"])
    assert again.exit_code == 2, again.output
    assert again.stderr == f"Error: {tmp_path / 'ds'} already exists; choose a new folder.\n"


@pytest.mark.slow
def test_local_console_shows_the_training_not_kfp_internals(trained):
    result, root = trained
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        f"Training locally through kfp.local: outputs go to {root}, the full log to {root}/logs/"
    )
    # issue 26: one line a step and an epoch, off a terminal; ultralytics' own output stays in the log
    epochs = [line for line in lines if line.startswith("train: epoch ")]
    assert len(epochs) == 15 and epochs[-1].startswith("train: epoch 15/15  precision "), epochs
    assert "train: running" in lines and any(re.fullmatch(r"train: done in \S+", line) for line in lines), lines
    assert not any(re.match(r"^(\x1b\[K)?\s+\d+/15\s", line) for line in lines), "ultralytics' bars: the log only"
    assert "GPU_mem" not in result.stdout
    for internal in ("executor_input", "Looking for component", "ephemeral_component", "Model(", "Metrics(", "INFO -"):
        assert internal not in result.stdout, internal
    (log,) = list((root / "logs").iterdir())
    assert f"     log: {log}" in result.stdout
    text = log.read_text()
    assert "Got executor_input:" in text and "15/15" in text, "the full log keeps everything"


def test_failed_local_step_ends_with_its_own_error_and_keeps_the_log(cli, tmp_path, shapes_yaml):
    """Images that do not decode: only ultralytics, inside the step, can tell."""
    import shutil

    data = shutil.copytree(shapes_yaml.parent, tmp_path / "broken")
    spec = yaml.safe_load((data / "data.yaml").read_text())
    (data / "data.yaml").write_text(yaml.safe_dump({**spec, "path": str(data)}))
    for image in (data / "images" / "train").iterdir():
        image.write_bytes(b"not a png")
    root = tmp_path / "runs"
    args = ["--model", "yolov8n.yaml", "--data", data / "data.yaml", "--epochs", "1", "--imgsz", "64"]
    result = cli(["run", *args, "--workers", "0", "--pipeline-root", root])
    assert result.exit_code == 1, result.output
    (log,) = list((root / "logs").iterdir())
    error = result.stderr.strip().splitlines()
    assert len(error) == 1, result.stderr
    assert error[0].startswith("Error: The local training step failed: "), error[0]
    assert "No valid images found" in error[0] and error[0].endswith(f"(full log: {log})"), error[0]
    assert "Traceback" not in result.output, "the step's traceback stays in the log"
    assert "Traceback (most recent call last)" in log.read_text()


# Written out: this module's annotations are strings, and kfp reads a component's types from its signature.
RETRIED_PIPELINE = """
from kfp import dsl


@dsl.component(install_kfp_package=False)
def flaky(counter: str) -> str:
    from pathlib import Path

    count = int(Path(counter).read_text()) + 1 if Path(counter).exists() else 1
    Path(counter).write_text(str(count))
    print(f"attempt {count} starts")
    if count < 2:
        raise RuntimeError("node 1 was lost")
    return "done"


@dsl.pipeline
def retried(counter: str) -> str:
    task = flaky(counter=counter)
    task.set_retry(num_retries=1, backoff_duration="0s")
    return task.output
"""


def test_a_retried_step_is_said_in_one_line_and_shows_its_new_attempt(tmp_path):
    """kfp.local restarts a failed task with a retry policy (`--retries`): the console says why in one line and
    shows the new attempt's output, though the failed one's traceback had turned the step's echo off."""
    import contextlib

    from kfp import local

    from yolokf.pipeline.components import _generated_function
    from yolokf.runs.local import StepEvent, _StepOutput

    retried = _generated_function("retried", RETRIED_PIPELINE)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    events: list[StepEvent] = []
    with (tmp_path / "log").open("w") as log, contextlib.redirect_stdout(_StepOutput(log, events.append, False)):
        assert retried(counter=str(tmp_path / "count")).output == "done"
    flaky = [(e.kind, e.text) for e in events if e.step == "flaky"]
    assert [kind for kind, _ in flaky] == ["started", "failed", "retrying", "started", "succeeded"], flaky
    assert flaky[2][1] == "yolokf: step flaky failed (RuntimeError: node 1 was lost); restarting it (--retries)."
    assert "Traceback" not in "".join(text for _, text in flaky)
    assert "attempt 2 starts" in (tmp_path / "log").read_text(), "the step's own lines are in the log"


def _events():
    from yolokf.runs.local import StepEvent
    from yolokf.runs.progress import Epoch

    return [
        StepEvent("note", "", "Training locally through kfp.local: outputs go to x"),
        StepEvent("started", "train"),
        StepEvent("epoch", "train", epoch=Epoch(3, 15, {"metrics/mAP50(B)": 0.5, "train/box_loss": 1.2})),
        StepEvent("note", "train", "yolokf: resuming /ck/last.pt after epoch 2 of 15."),
        StepEvent("succeeded", "train"),
        StepEvent("started", "export onnx"),
        StepEvent("failed", "export onnx", "QualityGateError: --export onnx: ..."),
    ]


def test_the_console_off_a_terminal_is_one_plain_line_an_event(monkeypatch):
    """issue 26: CI and `> file` get plain lines: each step's start, epochs and end, yolokf's own lines."""
    import io

    from yolokf.cli.console import LocalDisplay

    stream = io.StringIO()
    monkeypatch.setattr("sys.stdout", stream)
    with LocalDisplay() as display:
        for event in _events():
            display(event)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 7, lines
    assert lines[1:4] == ["train: running", "train: epoch 3/15  mAP50 0.500", lines[3]]
    assert lines[3] == "yolokf: resuming /ck/last.pt after epoch 2 of 15."
    assert re.fullmatch(r"train: done in \S+", lines[4]) and re.fullmatch(r"export onnx: failed after \S+", lines[6])


def test_the_console_on_a_terminal_is_a_bar_a_step_with_its_result(monkeypatch):
    import io

    from yolokf.cli.console import LocalDisplay

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    monkeypatch.setattr("sys.stdout", stream)
    monkeypatch.setenv("COLUMNS", "120")
    with LocalDisplay() as display:
        for event in _events():
            display(event)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stream.getvalue())
    assert "✓ train done after epoch 3 of 15 in" in text and "mAP50 0.500" in text
    assert "✗ export onnx failed in" in text
    assert "yolokf: resuming /ck/last.pt after epoch 2 of 15." in text
    assert "train: running" not in text, "a bar, not plain lines"
