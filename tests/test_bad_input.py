"""Bad input: one line on stderr that says what to do, a non-zero exit, no traceback, nothing written."""

from __future__ import annotations

import os

import pytest

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
    assert_one_clear_line(cli(["run", "--epoch", "3"]), 2, "No such option '--epoch'. Did you mean '--epochs'?")
