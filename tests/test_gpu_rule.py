"""The GPU rule inside the training step (issue 24, item 9): a run form's `device` against the GPUs the pod holds.

The pipeline compiles `--gpus N` into the step's pod as YOLOKF_GPUS (yolokf.core.devices.GPUS_ENV); the tests set it
as the pod would and call the training component's entry, `train_step`, with an edited `device`. The model does
not exist, so a step the rule lets through stops at the model check, before ultralytics starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from yolokf.core.devices import GPUS_ENV
from yolokf.core.errors import UsageError, YolokfError
from yolokf.core.settings import TrainConfig

MISSING = "/nonexistent/yolokf-test/no-such-model.yaml"


def _train_step(tmp_path: Path, device: str) -> None:
    from kfp.dsl import HTML, Artifact, Metrics, Model

    from yolokf.training.train import train_step

    outputs = {name: kind(uri=str(tmp_path / name)) for name, kind in
               (("weights", Model), ("metrics", Metrics), ("report", HTML), ("run_dir", Artifact))}  # fmt: skip
    config = TrainConfig(model=MISSING, data="shapes", device=device, epochs=1, imgsz=64)
    train_step(**outputs, **config.parameters())


def test_cpu_on_a_step_that_holds_gpus_fails_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(GPUS_ENV, "4")
    with pytest.raises(UsageError) as refused:
        _train_step(tmp_path, "cpu")
    assert str(refused.value) == (
        "device cpu: this step holds 4 GPU(s) (compiled with --gpus 4) and would leave them idle; compile without "
        "--gpus (or with --gpus 0) to train on CPU, or set device to 0,1,2,3."
    )
    assert "warning" not in capsys.readouterr().out


@pytest.mark.parametrize(("device", "used"), [("0", "0"), ("", "0"), ("cuda:1", "1"), ("2,0", "0,2")])
def test_fewer_gpus_than_the_step_holds_warn_in_one_line_and_are_kept(tmp_path, monkeypatch, capsys, device, used):
    """The step trains on what it was given (torch's own check and the model's come next: here the missing
    model, or no GPU on a CPU machine), after one line naming both counts."""
    monkeypatch.setenv(GPUS_ENV, "4")
    with pytest.raises(YolokfError):
        _train_step(tmp_path, device)
    count, shown = len(used.split(",")), device or "''"
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert warnings == [
        f"yolokf: warning: this step holds 4 GPUs (--gpus 4) but device {shown} trains on {count} of them "
        f"({used}); the others stay idle. Set device to 0,1,2,3 to use them all, or compile with --gpus {count}."
    ]


@pytest.mark.parametrize(("held", "device"), [("4", "0,1,2,3"), ("4", "3,2,1,0"), (None, "0"), (None, "cpu")])
def test_a_device_that_uses_every_held_gpu_or_no_held_count_says_nothing(tmp_path, monkeypatch, capsys, held, device):
    """Every held GPU used, or no count compiled in (kfp.local, a pipeline without --gpus): no line, no refusal."""
    if held is None:
        monkeypatch.delenv(GPUS_ENV, raising=False)
    else:
        monkeypatch.setenv(GPUS_ENV, held)
    with pytest.raises(YolokfError) as stopped:
        _train_step(tmp_path, device)
    assert "warning" not in capsys.readouterr().out
    assert str(stopped.value).startswith(("Model config not found", f"device {device}: this step has no CUDA GPU"))


def test_the_held_count_is_compiled_into_the_pods_that_hold_gpus(cli, tmp_path):
    out = tmp_path / "p.yaml"
    args = ["compile", "--model", "yolov8n.pt", "--data", "s3://datasets/pets", "--data-secret", "-", "--gpus", "4"]
    result = cli([*args, "--image", "r/y:1", "--evaluate", "--export", "onnx", "--out", out])
    assert result.exit_code == 0, result.output
    executors = next(yaml.safe_load_all(out.read_text()))["deploymentSpec"]["executors"]
    held = {
        name: {e["name"]: e["value"] for e in executor["container"].get("env", [])}.get(GPUS_ENV)
        for name, executor in executors.items()
    }
    assert held == {
        "exec-fetch-dataset": None,
        "exec-yolo-train": "4",
        "exec-yolo-evaluate": "1",
        "exec-yolo-export": None,
    }


@pytest.mark.parametrize("device", ["0", "0,1", "cuda:1"])
def test_a_node_device_naming_fewer_gpus_than_its_processes_fails_in_one_line(tmp_path, monkeypatch, device):
    """On a `--nodes` node torchrun starts one process a GPU (LOCAL_WORLD_SIZE, --gpus 4); each trains on the GPU the
    device lists at its local rank. A run form's device that names fewer used to fail in one rank with an IndexError
    in the distributed worker; now every rank says it in one line before CUDA or ultralytics start."""
    from yolokf.training.train import train

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    config = TrainConfig(model=MISSING, data="shapes", device=device, epochs=1, imgsz=64)
    with pytest.raises(UsageError) as refused:
        train(config, tmp_path, distributed=True)
    named = len(device.split(","))
    assert str(refused.value) == (
        f"device {device}: this node runs 4 training processes, one a GPU (--gpus 4), and {device} names {named}; "
        f"set device to 0,1,2,3, or compile with --gpus {named}."
    )


def test_a_node_device_naming_every_gpu_or_cpu_passes_the_node_rule(tmp_path, monkeypatch):
    from yolokf.core.devices import check_node_device

    for device, processes in (("0,1,2,3", 4), ("cpu", 4), ("0,1", 2), ("", 1)):
        check_node_device(device, processes)  # no error
