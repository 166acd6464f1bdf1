"""The HTML report shown in the Kubeflow UI: metrics table and plots, embedded so they outlive the pod."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from yolokf.core.settings import TrainConfig
    from yolokf.training.result import TrainResult

# First match wins per row; names differ between ultralytics tasks and versions.
PLOTS = (
    ("Training curves", ("results.png",)),
    ("Confusion matrix", ("confusion_matrix_normalized.png", "confusion_matrix.png")),
    ("Precision-recall curve", ("BoxPR_curve.png", "PR_curve.png")),
    ("Mask precision-recall curve", ("MaskPR_curve.png",)),
    ("Pose precision-recall curve", ("PosePR_curve.png",)),
    ("Validation predictions", ("val_batch0_pred.jpg",)),
)


def _image(path: Path) -> str:
    mime = "image/png" if path.suffix == ".png" else "image/jpeg"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:{mime};base64,{data}" style="max-width:100%">'


def render_report(result: TrainResult, config: TrainConfig) -> str:
    """A self-contained HTML page (images inlined as data URIs)."""
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{value:.4f}</td></tr>" for name, value in result.metrics.items()
    )
    args = ", ".join(
        f"{key}={value}"
        for key, value in {"model": config.model, "data": config.data, **config.train_kwargs()}.items()
        if value is not None
    )
    sections = []
    for title, names in PLOTS:
        found = next((result.save_dir / n for n in names if (result.save_dir / n).exists()), None)
        if found is not None:
            sections.append(f"<h2>{title}</h2>{_image(found)}")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>yolokf training report</title>"
        "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
        f"<h1>YOLO training: {html.escape(config.model)} on {html.escape(config.data)}</h1>"
        f"<p>task {html.escape(result.task)}, {result.epochs} epochs, ultralytics "
        f"{html.escape(result.ultralytics_version)}</p><p><code>{html.escape(args)}</code></p>"
        f"<h2>Final validation metrics</h2><table><tr><th>metric</th><th>value</th></tr>{rows}</table>"
        + "".join(sections)
        + "</body></html>"
    )
