"""A training step killed mid-run (SIGKILL, as on preemption) resumes from its checkpoint when started again."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EPOCHS = 5
# What the pipeline's training component runs, with the artifacts kfp would hand it.
STEP = """
import json
import sys
from pathlib import Path
from kfp.dsl import HTML, Artifact, Metrics, Model
from yolokf.training.train import train_step

out = Path(sys.argv[1])
weights = Model(uri=str(out / "weights"))
train_step(
    model="{model}", data="{data}", epochs={epochs}, imgsz=64, batch=16, device="cpu", workers=0, seed=0,
    train_args={{"plots": False}},
    weights=weights, metrics=Metrics(uri=str(out / "metrics")),
    report=HTML(uri=str(out / "report.html")), run_dir=Artifact(uri=str(out / "run_dir")),
    checkpoint_dir=sys.argv[2], run_key="",
)
(out / "weights.json").write_text(json.dumps(weights.metadata))
"""


def start_step(out: Path, checkpoints: Path, log: Path, model: str, data: str) -> subprocess.Popen:
    script = STEP.format(epochs=EPOCHS, model=model, data=data)
    handle = log.open("wb")
    return subprocess.Popen(
        [sys.executable, "-c", script, str(out), str(checkpoints)], stdout=handle, stderr=subprocess.STDOUT
    )


def epochs_in(results_csv: Path) -> list[int]:
    if not results_csv.exists():
        return []
    with results_csv.open() as handle:
        return [int(float(row["epoch"])) for row in csv.DictReader(handle, skipinitialspace=True)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "data"),
    [("yolov8n.yaml", "shapes"), ("yolov8n-seg.yaml", "shapes-seg"), ("yolov8n-cls.yaml", "shapes-cls")],
)
def test_killed_step_resumes_from_its_last_epoch(tmp_path, model, data):
    checkpoints = tmp_path / "checkpoints"
    first = start_step(tmp_path / "out1", checkpoints, tmp_path / "first.log", model, data)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            runs = list(checkpoints.glob("*/results.csv"))
            if runs and len(epochs_in(runs[0])) >= 2:
                last = runs[0].parent / "weights" / "last.pt"
                # results.csv is written just before last.pt each epoch: wait for that epoch's checkpoint.
                if last.exists() and last.stat().st_mtime >= runs[0].stat().st_mtime:
                    time.sleep(0.5)
                    break
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.2)
        else:
            pytest.fail("two epochs were not saved within 10 minutes")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == -signal.SIGKILL
    (run,) = checkpoints.iterdir()
    saved = epochs_in(run / "results.csv")
    assert len(saved) < EPOCHS, "the kill came too late to test a resume"

    second = start_step(tmp_path / "out2", checkpoints, tmp_path / "second.log", model, data)
    assert second.wait(timeout=900) == 0, (tmp_path / "second.log").read_text()[-3000:]
    log = (tmp_path / "second.log").read_text()
    resumed = [line for line in log.splitlines() if line.startswith("yolokf: resuming")]
    assert resumed, log[-3000:]
    resumed_after = int(resumed[0].split("after epoch ")[1].split()[0])
    assert resumed_after >= 2 and resumed_after >= len(saved) - 1, (resumed_after, saved)
    assert f"from epoch {resumed_after + 1} to {EPOCHS} total epochs" in log

    epochs = epochs_in(run / "results.csv")
    assert epochs[-1] == EPOCHS
    assert set(epochs) == set(range(1, EPOCHS + 1))
    assert len(epochs) - len(set(epochs)) <= 1, f"lost more than one epoch of work: {epochs}"
    assert {p.name for p in (tmp_path / "out2" / "weights").iterdir()} == {"best.pt", "last.pt"}
    assert "yolokf-metrics" in log
    assert json.loads((tmp_path / "out2" / "weights.json").read_text())["resumed_from_epoch"] == resumed_after

    # Started once more with the same inputs, the step finds the finished run and reports it without training.
    third = start_step(tmp_path / "out3", checkpoints, tmp_path / "third.log", model, data)
    assert third.wait(timeout=300) == 0, (tmp_path / "third.log").read_text()[-3000:]
    log = (tmp_path / "third.log").read_text()
    assert "already holds a finished training; reporting it." in log
    assert epochs_in(run / "results.csv") == epochs
    assert {p.name for p in (tmp_path / "out3" / "weights").iterdir()} == {"best.pt", "last.pt"}
    assert json.loads((tmp_path / "out3" / "weights.json").read_text())["already_finished"] is True


def test_run_key_follows_the_training_arguments():
    from yolokf.core.settings import TrainConfig
    from yolokf.training.checkpoint import default_run_key

    base = TrainConfig(model="yolov8n.yaml", data="s3://b/pets", epochs=50)
    key = default_run_key(base)
    assert key.startswith("yolov8n-") and len(key) == len("yolov8n-") + 12
    assert default_run_key(base.with_overrides(device="0,1", workers=2)) == key, "a retry on other GPUs resumes"
    assert default_run_key(base.with_overrides(epochs=60)) != key
    assert default_run_key(base.with_overrides(train_args={"lr0": 0.001})) != key


def test_unreadable_checkpoint_starts_over(tmp_path):
    from yolokf.training.checkpoint import find_checkpoint

    weights = tmp_path / "run" / "weights"
    weights.mkdir(parents=True)
    (weights / "last.pt").write_bytes(b"\x80\x02truncated")
    assert find_checkpoint(tmp_path / "run", epochs=5) is None
    assert find_checkpoint(tmp_path / "none", epochs=5) is None
