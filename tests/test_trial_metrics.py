"""A trial's metrics are the same whether ultralytics trained on one GPU or under DDP (issue 15).

On one device `YOLO.train` returns the final validation's metrics object; under DDP the training runs in
ultralytics' subprocesses and `YOLO.train` returns the `train_metrics` dict saved in best.pt. DDP needs CUDA, so
the test feeds the step both return values as ultralytics' own code produces them from one real training: the
validator's metrics for best.pt, and best.pt's checkpoint as `load_checkpoint` (what `Model.train` calls) reads it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from yolokf.training.result import final_metrics, results_rows, validation_metrics


@pytest.mark.slow
def test_a_ddp_trial_reports_the_metrics_and_fitness_of_a_one_gpu_trial(trained, shapes_yaml):
    from ultralytics import YOLO
    from ultralytics.nn.tasks import load_checkpoint

    result, root = trained
    assert result.exit_code == 0, result.output
    (best,) = root.glob("yolov8-train-*/yolo-train/weights/best.pt")
    rows = results_rows(best.parent.parent / "run_dir")
    assert len(rows) == 15, "one results.csv row per epoch"

    one_gpu = final_metrics(YOLO(str(best)).val(data=str(shapes_yaml), imgsz=128, batch=16, plots=False), rows)
    _, ckpt = load_checkpoint(best)
    ddp = final_metrics(ckpt.get("train_metrics"), rows)  # ultralytics' Model.train under DDP returns this

    assert sorted(ddp) == sorted(one_gpu) == ["fitness", "mAP50", "mAP50-95", "precision", "recall"]
    # The same weights (best.pt) on the same validation split: validated in training and again at the end.
    for name in one_gpu:
        assert ddp[name] == pytest.approx(one_gpu[name], abs=0.02), name
    assert ddp["fitness"] > 0.3, "the trained model's fitness, not a missing value"  # 15 epochs: about 0.8
    # Without the returned dict the step would fall back on results.csv, which has no fitness.
    assert "fitness" not in validation_metrics(rows[-1])


def test_a_training_that_returned_nothing_reports_its_last_epoch(tmp_path: Path):
    (tmp_path / "results.csv").write_text(
        "epoch,train/box_loss,metrics/precision(B),metrics/recall(B),metrics/mAP50(B),metrics/mAP50-95(B),val/box_loss\n"
        "1,1.5,0.25,0.5,0.4,0.2,1.1\n"
    )
    assert final_metrics(None, results_rows(tmp_path)) == {
        "precision": 0.25,
        "recall": 0.5,
        "mAP50": 0.4,
        "mAP50-95": 0.2,
    }
