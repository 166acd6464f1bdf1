"""How an export is compared with the `.pt` it came from, inside the export step: the same images predicted by
both, matched box for box (mask IoU, keypoint OKS, oriented boxes), and the export's latency, size and opset.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the component's types: pipeline.py generates yolo_export from this signature (issue 15)
    pass

# ultralytics format name -> what its export() writes next to the weights.


WARMUP, TIMED = 3, 20

MATCH = 0.5  # IoU (OKS for keypoints) at which an export's prediction is the .pt's


def size_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def latency_ms(model_path: Path, images: list[Path], *, task: str, imgsz: int, device: str) -> float:
    """Mean inference time per image at batch 1 (ultralytics' own `speed['inference']`), warm-up excluded."""
    from ultralytics import YOLO

    model = YOLO(str(model_path), task=task)
    times = []
    for index in range(WARMUP + TIMED):
        image = images[index % len(images)]
        results: Any = model.predict(str(image), imgsz=imgsz, device=device or None, verbose=False)
        if index >= WARMUP:
            times.append(float(results[0].speed["inference"]))
    return round(sum(times) / len(times), 3)


def opset(model_path: Path) -> int | None:
    if model_path.suffix != ".onnx":
        return None
    import onnx

    return max(op.version for op in onnx.load(str(model_path), load_external_data=False).opset_import if not op.domain)


def format_version(fmt: str, path: Path) -> str:
    """The version a serving runtime cares about: the ONNX opset, OpenVINO's, TensorRT's, else torch's."""
    if fmt == "onnx":
        return str(opset(path))
    if fmt == "openvino":
        import openvino

        return str(openvino.__version__).split("-")[0]
    if fmt == "engine":
        import tensorrt  # type: ignore[import-not-found]

        return str(tensorrt.__version__)
    import torch

    return str(torch.__version__).split("+")[0]


def prediction_agreement(reference: list[Any], exported: list[Any], task: str) -> tuple[float, int, int]:
    """How far the export's predictions are the .pt's on the same images (ultralytics Results, one per image):
    (matched share of the larger side, the .pt's count, the export's count); 1.0 when neither predicts anything."""
    matched = expected = found = 0
    for ref, exp in zip(reference, exported, strict=True):
        if task == "classify":
            matched += int(int(ref.probs.top1) == int(exp.probs.top1))
            expected, found = expected + 1, found + 1
            continue
        similarity, ref_cls, exp_cls = _similarity(ref, exp, task)
        expected, found = expected + len(ref_cls), found + len(exp_cls)
        matched += _greedy_matches(similarity, ref_cls, exp_cls)
    larger = max(expected, found)
    return (round(matched / larger, 4) if larger else 1.0), expected, found


def _similarity(ref: Any, exp: Any, task: str) -> tuple[Any, list[int], list[int]]:
    """The pairwise IoU (OKS for pose) of the .pt's predictions (rows) and the export's (columns), and their classes."""
    import numpy as np
    from ultralytics.utils.metrics import batch_probiou, box_iou

    if task == "obb":
        a, b = ref.obb, exp.obb
        classes = [int(c) for c in a.cls.tolist()], [int(c) for c in b.cls.tolist()]
        if not len(a) or not len(b):
            return np.zeros((len(a), len(b))), *classes
        return batch_probiou(a.xywhr.float().cpu(), b.xywhr.float().cpu()).numpy(), *classes
    a, b = ref.boxes, exp.boxes
    classes = [int(c) for c in a.cls.tolist()], [int(c) for c in b.cls.tolist()]
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b))), *classes
    if task == "segment" and ref.masks is not None and exp.masks is not None:
        return _mask_iou(ref.masks.xy, exp.masks.xy, ref.orig_shape), *classes
    if task == "pose" and ref.keypoints is not None and exp.keypoints is not None:
        return _oks(ref.keypoints.xy.cpu().numpy(), exp.keypoints.xy.cpu().numpy(), a.xyxy.cpu().numpy()), *classes
    return box_iou(a.xyxy.float().cpu(), b.xyxy.float().cpu()).numpy(), *classes


def _mask_iou(first: list[Any], second: list[Any], shape: tuple[int, int]) -> Any:
    """IoU of two sets of mask polygons (ultralytics' `masks.xy`, in the image's pixels), drawn at the image's size."""
    import cv2
    import numpy as np

    def draw(polygons: list[Any]) -> Any:
        masks = np.zeros((len(polygons), shape[0] * shape[1]), dtype=bool)
        for index, polygon in enumerate(polygons):
            canvas = np.zeros(shape, dtype=np.uint8)
            if len(polygon):
                cv2.fillPoly(canvas, [np.asarray(polygon, dtype=np.int32)], 1)
            masks[index] = canvas.reshape(-1).astype(bool)
        return masks.astype(np.float32)

    a, b = draw(first), draw(second)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def _oks(first: Any, second: Any, boxes: Any) -> Any:
    """COCO's object keypoint similarity of every pair, with one sigma for all keypoints (0.1) and the .pt's box area
    as the object's scale: 1 for identical keypoints, 0.5 at about 12% of the box's size apart."""
    import numpy as np

    area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1.0)
    distance = ((first[:, None, :, :] - second[None, :, :, :]) ** 2).sum(-1)  # (ref, exp, keypoints)
    return np.exp(-distance / (2 * area[:, None, None] * (2 * 0.1) ** 2)).mean(-1)


def _greedy_matches(similarity: Any, ref_cls: list[int], exp_cls: list[int]) -> int:
    """One-to-one matches of the same class at similarity >= MATCH, best pairs first."""
    pairs = sorted(
        ((float(similarity[i, j]), i, j) for i in range(len(ref_cls)) for j in range(len(exp_cls))),
        reverse=True,
    )
    used_ref: set[int] = set()
    used_exp: set[int] = set()
    for value, i, j in pairs:
        if value < MATCH:
            break
        if i in used_ref or j in used_exp or ref_cls[i] != exp_cls[j]:
            continue
        used_ref.add(i)
        used_exp.add(j)
    return len(used_ref)


def predictions(model_path: Path, images: list[Path], *, task: str, imgsz: int, device: str) -> list[Any]:
    """ultralytics' predictions of a model on `images`, one Results per image (its default confidence, 0.25)."""
    from ultralytics import YOLO

    model = YOLO(str(model_path), task=task)
    found: list[Any] = []
    for image in images:
        results: Any = model.predict(str(image), imgsz=imgsz, device=device or None, verbose=False)
        found.append(results[0])
    return found
