"""Every ultralytics task through the same pipeline: built-in data per task, the task checked before training."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from yolokf.core.tasks import model_task
from yolokf.data.shapes import CLASSES, FLIP_IDX, KPT_SHAPE, write_dataset
from yolokf.data.task_fit import dataset_kind


@pytest.mark.parametrize(
    ("model", "task"),
    [
        ("yolov8n.yaml", "detect"),
        ("yolov8n-seg.yaml", "segment"),
        ("yolo11n-pose.pt", "pose"),
        ("yolov8s-obb.yaml", "obb"),
        ("runs/yolov8n-cls.pt", "classify"),
        ("yolo11n.pt", "detect"),
        ("best.pt", None),  # the checkpoint knows; the step checks once it has loaded it
    ],
)
def test_the_task_a_model_name_says(model, task):
    assert model_task(model) == task


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shapes")
    return {
        t: write_dataset(root / t, t, train=6, val=2, test=2) for t in ("detect", "segment", "pose", "obb", "classify")
    }


def labels(data_yaml: Path) -> list[list[str]]:
    folder = data_yaml.parent / "labels" / "train"
    lines = [line.split() for p in sorted(folder.iterdir()) for line in p.read_text().splitlines() if line.strip()]
    assert len(lines) >= 6, "at least one shape an image"
    return lines


def test_each_built_in_dataset_has_its_tasks_layout_and_three_splits(small):
    for task in ("detect", "segment", "pose", "obb"):
        spec = yaml.safe_load(small[task].read_text())
        assert spec["names"] == dict(enumerate(CLASSES))
        for split in ("train", "val", "test"):
            images = small[task].parent / spec[split]
            assert len(list(images.iterdir())) == {"train": 6, "val": 2, "test": 2}[split], (task, split)
    assert {len(line) for line in labels(small["detect"])} == {5}
    seg = labels(small["segment"])
    assert len(seg) > 0 and all(len(line) >= 7 and len(line) % 2 == 1 for line in seg)
    assert {len(line) for line in seg if line[0] == "0"} == {49}, "circles are 24-gons"
    assert {len(line) for line in labels(small["obb"])} == {9}
    pose_spec = yaml.safe_load(small["pose"].read_text())
    assert (pose_spec["kpt_shape"], pose_spec["flip_idx"]) == (KPT_SHAPE, FLIP_IDX) == ([4, 3], [1, 0, 3, 2])
    pose = labels(small["pose"])
    assert {len(line) for line in pose} == {5 + 4 * 3}
    for line in pose:  # the keypoints are the box's corners TL, TR, BR, BL, all visible
        cx, cy, w, h = map(float, line[1:5])
        kpts = [tuple(map(float, line[5 + 3 * i : 8 + 3 * i])) for i in range(4)]
        left, top, right, bottom = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        expected = [left, top, 2, right, top, 2, right, bottom, 2, left, bottom, 2]
        assert [v for k in kpts for v in k] == pytest.approx(expected, abs=2e-6)
    classify = small["classify"]
    for split, count in (("train", 6), ("val", 2), ("test", 2)):
        images = list((classify / split).glob("*/*.png"))
        assert len(images) == count and {p.parent.name for p in images} <= set(CLASSES)


def test_dataset_kinds_are_told_apart(small):
    kinds = {task: dataset_kind(path) for task, path in small.items()}
    assert kinds == {"detect": "boxes", "segment": "polygons", "pose": "pose", "obb": "obb", "classify": "classify"}


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        ("yolov8n-seg.yaml", "shapes", "--model yolov8n-seg.yaml is a segment model, but "),
        ("yolov8n-cls.yaml", "shapes", "is a detection dataset (box labels). A classify model needs a folder with"),
        ("yolov8n.yaml", "shapes-cls", "is a classification dataset (a folder of class folders)"),
        ("yolov8n-pose.yaml", "shapes-seg", "A pose model needs a dataset YAML with kpt_shape:"),
        ("yolov8n-obb.yaml", "shapes", "pick an obb dataset (--data shapes-obb is built in)"),
    ],
)
def test_a_model_and_a_dataset_of_different_tasks_is_one_line_before_training(cli, tmp_path, model, data, message):
    result = cli(["run", "--model", model, "--data", data, "--pipeline-root", tmp_path / "runs"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "runs").exists(), "refused before kfp.local started"


def test_shapes_command_writes_each_task(cli, tmp_path):
    result = cli(["shapes", tmp_path / "seg", "--task", "segment"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"Wrote {tmp_path / 'seg' / 'data.yaml'}\n"
    result = cli(["shapes", tmp_path / "cls", "--task", "classify"])
    assert result.exit_code == 0 and (tmp_path / "cls" / "val" / "circle").is_dir(), result.output
    bad = cli(["shapes", tmp_path / "x", "--task", "depth"])
    assert bad.exit_code == 2
    assert bad.stderr == (
        "Error: --task 'depth' is not an ultralytics task; use one of detect, segment, pose, obb, classify.\n"
    )
    assert not (tmp_path / "x").exists()


TRAIN = ["--epochs", "15", "--imgsz", "128", "--batch", "16", "--set", "nbs=16"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "metric", "floor", "names", "plots"),
    [
        # Measured on 2 CPUs with these arguments, seeds 0/1/2 (floors under the lowest; the test runs seed 0):
        # mask_mAP50-95 0.735/0.812/0.738, about 113 s; epoch 1 is near 0.
        ("seg", "mask_mAP50-95", 0.65, {"mAP50-95", "mask_mAP50", "mask_mAP50-95", "mask_precision"}, ["MaskPR_curve"]),
        # pose_mAP50-95 0.987/0.992/0.677, about 83 s (the keypoints are the box corners: easy once the box is
        # found, but seed 2 finds them later: 0.90 held for seed 0 only).
        ("pose", "pose_mAP50-95", 0.60, {"mAP50-95", "pose_mAP50", "pose_mAP50-95", "pose_recall"}, ["PosePR_curve"]),
        # mAP50-95 of the rotated boxes 0.850/0.845/0.849, about 94 s.
        ("obb", "mAP50-95", 0.75, {"precision", "recall", "mAP50", "mAP50-95"}, ["BoxPR_curve"]),
        # top-1 1.000/1.000/1.000, about 45 s (0.125 after the first epoch).
        ("cls", "top1_accuracy", 0.95, {"top1_accuracy", "top5_accuracy"}, ["confusion_matrix"]),
    ],
)
def test_each_task_trains_on_its_built_in_data_through_the_cli(cli, tmp_path, task, metric, floor, names, plots):
    import json
    import re

    root = tmp_path / "runs"
    result = cli(
        ["run", "--model", f"yolov8n-{task}.yaml", "--data", f"shapes-{task}", *TRAIN, "--pipeline-root", root]
    )
    assert result.exit_code == 0, result.output[-3000:]
    table = dict(re.findall(r"^│ (\S+)\s+│\s+([0-9.]+) │$", result.stdout, re.M))
    assert names <= set(table), table
    assert float(table[metric]) >= floor, table
    (step,) = root.glob("yolov8-train-*/yolo-train")
    report = (step / "report").read_text()
    for plot in plots:
        assert f'alt="{plot}' in report, f"{plot} embedded in the report"
    (weights,) = json.loads((step / "executor_output.json").read_text())["artifacts"]["weights"]["artifacts"]
    metadata = weights["metadata"]
    ultralytics_task = {"seg": "segment", "pose": "pose", "obb": "obb", "cls": "classify"}[task]
    assert metadata["task"] == ultralytics_task
    assert metadata["names"] == {"0": "circle", "1": "square", "2": "triangle"}
    assert metadata.get("kpt_shape") == ([4, 3] if task == "pose" else None)
    assert float(metadata["metrics"][metric]) == pytest.approx(float(table[metric]), abs=1e-4)
