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
STEP = """{prelude}
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


# Prepended to STEP: the process kills itself (SIGKILL) halfway through writing its KILL_AT-th `last.pt`, the way a
# node reclaimed during a save cuts the file. It catches `Path.open(..., "wb")`, which `Path.write_bytes` (what
# ultralytics' save_model writes last.pt with, engine/trainer.py) opens with; a file named last.pt* is the
# checkpoint, or yolokf's partial copy of it.
KILL_DURING_SAVE = """
import io, os, pathlib, signal
_open, _saves = pathlib.Path.open, [0]
class _DiesHalfway(io.FileIO):
    def write(self, data):
        super().write(bytes(data)[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
def _open_last(self, mode="r", *args, **kwargs):
    if mode == "wb" and self.name.startswith("last.pt"):
        _saves[0] += 1
        if _saves[0] == {kill_at}:
            return _DiesHalfway(self, "wb")
    return _open(self, mode, *args, **kwargs)
pathlib.Path.open = _open_last
"""


def start_step(
    out: Path, checkpoints: Path, log: Path, model: str, data: str, *, epochs: int = EPOCHS, prelude: str = ""
) -> subprocess.Popen:
    script = STEP.format(epochs=epochs, model=model, data=data, prelude=prelude)
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


@pytest.mark.slow
def test_a_kill_while_last_pt_is_saved_costs_that_epoch_only(tmp_path):
    """ultralytics writes last.pt in place: killed mid-write, the file was half a zip, and the next attempt started
    over (issue 24). Saved whole or not at all, the epoch before it survives and the training resumes after it."""
    checkpoints, model, data = tmp_path / "checkpoints", "yolov8n-cls.yaml", "shapes-cls"
    kill = KILL_DURING_SAVE.format(kill_at=3)
    first = start_step(tmp_path / "out1", checkpoints, tmp_path / "first.log", model, data, epochs=4, prelude=kill)
    assert first.wait(timeout=600) == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    (run,) = checkpoints.iterdir()
    assert epochs_in(run / "results.csv") == [1, 2, 3], "the kill came during epoch 3's save"

    second = start_step(tmp_path / "out2", checkpoints, tmp_path / "second.log", model, data, epochs=4)
    assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    log = (tmp_path / "second.log").read_text()
    assert "was cut short" not in log
    assert f"yolokf: resuming {run / 'weights' / 'last.pt'} after epoch 2 of 4." in log, log[-3000:]
    assert json.loads((tmp_path / "out2" / "weights.json").read_text())["resumed_from_epoch"] == 2
    assert sorted(set(epochs_in(run / "results.csv"))) == [1, 2, 3, 4]
    assert [p.name for p in checkpoints.iterdir()] == [run.name], "nothing set aside: the checkpoint was whole"


def _saved_checkpoint(path: Path, epoch: int = 1) -> bytes:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": epoch, "optimizer": {"state": {}}}, path)
    return path.read_bytes()


def test_a_checkpoint_cut_short_is_kept_and_the_run_starts_over(tmp_path, capsys):
    from yolokf.training.checkpoint import find_checkpoint, set_aside

    run = tmp_path / "yolov8n-abc"
    whole = _saved_checkpoint(run / "weights" / "last.pt", epoch=3)
    assert find_checkpoint(run, epochs=5).epochs_done == 4
    (run / "weights" / "last.pt").write_bytes(whole[: len(whole) // 2])
    (run / "results.csv").write_text("epoch\n1\n2\n3\n4\n")

    assert find_checkpoint(run, epochs=5) is None
    assert "yolov8n-abc/weights/last.pt was cut short (killed while it was saved); training starts over." in (
        capsys.readouterr().out
    )
    aside = set_aside(run)
    assert aside is not None and aside.name.startswith("yolov8n-abc.set-aside-")
    assert not run.exists(), "the new run starts in an empty folder: results.csv does not mix two runs"
    assert (aside / "weights" / "last.pt").read_bytes() == whole[: len(whole) // 2], "the file is kept as it was"
    assert (aside / "results.csv").exists()
    assert find_checkpoint(tmp_path / "none", epochs=5) is None


def test_an_attempt_without_weights_is_cleared(tmp_path):
    from yolokf.training.checkpoint import set_aside

    run = tmp_path / "yolov8n-abc"
    (run / "weights").mkdir(parents=True)
    (run / "results.csv").write_text("epoch\n")
    assert set_aside(run) is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (OSError(5, "Input/output error"), "OSError: [Errno 5] Input/output error"),
        (OSError(116, "Stale file handle"), "OSError: [Errno 116] Stale file handle"),
        (MemoryError(), "MemoryError"),
        (ModuleNotFoundError("No module named 'ultralytics.nn.modules.block2'"), "ModuleNotFoundError"),
    ],
)
def test_a_whole_checkpoint_that_cannot_be_read_fails_the_step_and_stays(tmp_path, monkeypatch, error, shown):
    """NFS EIO/ESTALE, memory, a version skew: the file is whole, so starting over would throw its epochs away."""
    import ultralytics.utils.patches

    from yolokf.core.errors import TrainingError
    from yolokf.training.checkpoint import find_checkpoint

    run = tmp_path / "yolov8n-abc"
    whole = _saved_checkpoint(run / "weights" / "last.pt")

    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(ultralytics.utils.patches, "torch_load", fails)
    with pytest.raises(TrainingError, match=r"Could not read the checkpoint .*last\.pt \(") as raised:
        find_checkpoint(run, epochs=5)
    assert shown in str(raised.value)
    assert f"Retry the step once the storage answers, or move {run} away to start over." in str(raised.value)
    assert (run / "weights" / "last.pt").read_bytes() == whole


def test_a_checkpoint_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from yolokf.training.checkpoint import keep_saves_whole

    trainer = SimpleNamespace(last=tmp_path / "last.pt", best=tmp_path / "best.pt")
    keep_saves_whole(trainer)
    assert trainer.last.write_bytes(b"epoch 1") == 7
    assert trainer.last.read_bytes() == b"epoch 1"

    def killed(*args):  # the process dies after the new bytes are written, before they replace the file
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.last.write_bytes(b"epoch 2, never whole")
    assert (tmp_path / "last.pt").read_bytes() == b"epoch 1"
    assert trainer.best == tmp_path / "best.pt" and str(trainer.best) == str(tmp_path / "best.pt")
