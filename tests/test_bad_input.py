"""Bad input: one line on stderr that says what to do, a non-zero exit, no traceback, nothing written."""

from __future__ import annotations

import os

import pytest

from yolokf.core.errors import UsageError

TRAIN = ["--model", "yolov8n.yaml", "--data", "shapes"]


def assert_one_clear_line(result, code: int, text: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert text in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["run", "compile"])
@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--epochs", "0"], "--epochs must be a whole number of at least 1, got 0"),
        (["--epochs", "-2"], "--epochs must be a whole number of at least 1, got -2"),
        (["--epochs", "ten"], "Invalid value for '--epochs'"),
        (["--imgsz", "0"], "--imgsz must be a whole number of at least 1"),
        (["--imgsz", "1.5"], "Invalid value for '--imgsz'"),
        (["--batch", "-1"], "--batch must be a whole number of at least 1"),
        (["--batch", "x"], "Invalid value for '--batch'"),
        (["--set", "lr00=0.1"], "--set lr00=... is not an ultralytics train argument. Did you mean lr0?"),
        (["--set", "lr0"], "--set 'lr0' is not KEY=VALUE"),
        (["--set", "mosaic=2"], "--set mosaic=2: must be between 0.0 and 1.0"),
        (["--set", "optimizer=Adagrad"], "--set optimizer=Adagrad: must be one of Adam, AdamW, Adamax,"),
    ],
)
def test_bad_training_arguments(cli, tmp_path, command, args, text):
    where = ["--out", tmp_path / "p.yaml"] if command == "compile" else ["--pipeline-root", tmp_path / "runs"]
    result = cli([command, *TRAIN, *args, *where])
    assert_one_clear_line(result, 2, text)
    assert list(tmp_path.iterdir()) == [], "nothing may be written"


def test_missing_model_file(cli, tmp_path):
    result = cli(["run", "--model", tmp_path / "nope.pt", "--data", "shapes", "--pipeline-root", tmp_path / "r"])
    assert_one_clear_line(result, 2, f"Model weights not found: {tmp_path / 'nope.pt'}")
    assert not (tmp_path / "r").exists()


def test_missing_model_yaml(cli, tmp_path):
    result = cli(["run", "--model", "yolov99z.yaml", "--data", "shapes", "--pipeline-root", tmp_path / "r"])
    assert_one_clear_line(result, 2, "Model config not found: yolov99z.yaml")


def test_missing_dataset_file(cli, tmp_path):
    result = cli(["run", "--model", "yolov8n.yaml", "--data", tmp_path / "d.yaml", "--pipeline-root", tmp_path / "r"])
    assert_one_clear_line(result, 2, f"Dataset not found: {tmp_path / 'd.yaml'}")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("missing", ["names", "train"])
def test_dataset_yaml_without_names_or_train(cli, tmp_path, missing):
    (tmp_path / "images").mkdir()
    spec = {"path": str(tmp_path), "train": "images", "val": "images", "names": {0: "a"}}
    del spec[missing]
    import yaml

    (tmp_path / "d.yaml").write_text(yaml.safe_dump(spec))
    result = cli(["run", "--model", "yolov8n.yaml", "--data", tmp_path / "d.yaml", "--pipeline-root", tmp_path / "r"])
    assert_one_clear_line(result, 2, f"Dataset YAML {tmp_path / 'd.yaml'} has no '{missing}:' entry")
    assert not (tmp_path / "r").exists()


def test_offline_weights_fail_fast_with_what_to_do(cli, tmp_path):
    result = cli(["run", "--model", "yolov8n.pt", "--data", "shapes", "--pipeline-root", tmp_path / "r"])
    assert_one_clear_line(result, 3, "Weights yolov8n.pt are not on disk and cannot be downloaded (no internet)")
    assert "--model yolov8n.yaml" in result.stderr


def test_offline_dataset_download_fails_fast(cli, tmp_path):
    result = cli(["run", "--model", "yolov8n.yaml", "--data", "coco128.yaml", "--pipeline-root", tmp_path / "r"])
    assert_one_clear_line(result, 3, "Dataset coco128.yaml is not on disk and this machine cannot download it")
    assert "--data shapes" in result.stderr


def test_unwritable_out(cli, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores mode bits: use a path under a regular file instead
            target = tmp_path / "file" / "p.yaml"
            (tmp_path / "file").write_text("")
            result = cli(["compile", "--out", target])
            assert_one_clear_line(result, 2, f"Cannot write {target}: folder {tmp_path / 'file'} does not exist")
        else:
            result = cli(["compile", "--out", locked / "p.yaml"])
            assert_one_clear_line(result, 2, f"Cannot write {locked / 'p.yaml'}: folder {locked} is not writable")
    finally:
        locked.chmod(0o700)


def test_out_is_a_folder(cli, tmp_path):
    result = cli(["compile", "--out", tmp_path])
    assert_one_clear_line(result, 2, f"--out {tmp_path} is a folder")


def test_unknown_command_and_option(cli):
    assert_one_clear_line(cli(["trian"]), 2, "No such command 'trian'")
    no_such = "No such option '--workrs'. (Did you mean one of: '--fetch-workers', '--workers'?)"
    assert_one_clear_line(cli(["run", "--workrs", "3"]), 2, no_such)


@pytest.fixture
def online_check(monkeypatch):
    """The real connectivity probe, pointed at a loopback address instead of github.com."""
    import socket

    from yolokf.core import offline

    monkeypatch.delenv("YOLOKF_OFFLINE", raising=False)
    monkeypatch.delenv("YOLO_OFFLINE", raising=False)
    offline._answers.cache_clear()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    yield {"open": f"127.0.0.1:{listener.getsockname()[1]}", "closed": f"127.0.0.1:{closed.getsockname()[1]}"}
    listener.close()
    closed.close()
    offline._answers.cache_clear()


def test_offline_probe_for_real_refused_port_fails_fast_open_port_is_online(cli, tmp_path, monkeypatch, online_check):
    from yolokf.core import offline

    monkeypatch.setenv("YOLOKF_ONLINE_PROBE", online_check["closed"])
    assert offline.is_online() is False
    result = cli(["run", "--model", "yolov8s.pt", "--data", "shapes", "--pipeline-root", tmp_path / "r"])
    assert_one_clear_line(result, 3, "Weights yolov8s.pt are not on disk and cannot be downloaded (no internet).")
    monkeypatch.setenv("YOLOKF_ONLINE_PROBE", online_check["open"])
    assert offline.is_online() is True
    monkeypatch.setenv("YOLOKF_ONLINE_PROBE", "no-port")
    with pytest.raises(UsageError, match="YOLOKF_ONLINE_PROBE must be HOST:PORT"):
        offline.is_online()


def test_installed_console_script(tmp_path):
    """The `yolokf` command pip installed: version, a compile, and bad input's exit code."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = shutil.which("yolokf", path=str(Path(sys.executable).parent))
    assert script is not None, "pip install -e . puts yolokf next to the interpreter"
    version = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("yolokf "), version.stderr
    out = tmp_path / "p.yaml"
    done = subprocess.run([script, "compile", "--out", str(out), "--image", "x:1"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == f"Wrote {out}\n", done.stderr
    bad = subprocess.run([script, "compile", "--epochs", "0"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr == "Error: --epochs must be a whole number of at least 1, got 0.\n"
    assert list(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize("device", ["0", "0,1", "cuda:0"])
def test_a_gpu_this_machine_lacks_is_refused_before_training(cli, tmp_path, device):
    import torch

    assert torch.cuda.device_count() == 0, "this test is for a machine without a GPU (CI's)"
    result = cli(["run", *TRAIN, "--device", device, "--pipeline-root", tmp_path / "runs"])
    assert_one_clear_line(result, 2, f"--device {device}: this machine has no CUDA GPU that torch can use.")
    assert not (tmp_path / "runs").exists(), "refused before kfp.local started"


def test_a_weights_file_that_is_not_a_model(cli, tmp_path):
    weights = tmp_path / "best.pt"
    weights.write_text("<html>404 Not Found</html>")  # what a failed download leaves
    result = cli(["run", "--model", weights, "--data", "shapes", "--pipeline-root", tmp_path / "runs"])
    assert_one_clear_line(result, 2, f"--model {weights} is not a PyTorch weights file")
    assert not (tmp_path / "runs").exists()


def test_an_out_folder_that_takes_no_new_files(cli, tmp_path):
    """/proc refuses new files even to root: mode bits cannot show it."""
    result = cli(["compile", "--out", "/proc/yolov8_train.yaml"])
    assert result.exit_code == 2, result.output
    assert_one_clear_line(result, 2, "Cannot write /proc/yolov8_train.yaml: ")
    assert not os.path.exists("/proc/yolov8_train.yaml")
