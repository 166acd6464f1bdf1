"""Resume after preemption: where a training keeps `last.pt`, and what state that checkpoint is in.

With a checkpoint folder (a mounted PVC on the cluster, any folder locally) the training step trains with
ultralytics `project=<folder>`, `name=<run key>`, so `last.pt` lands there after every epoch. A retried or
re-submitted step with the same run key finds it and resumes (docs/cluster.md, "Resume").
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yolokf.core.settings import TrainConfig


def default_run_key(config: TrainConfig, *, kind: str = "", extra: dict[str, Any] | None = None) -> str:
    """A run key from what defines the training, so the same inputs find the same checkpoint.

    Device and workers are left out: a retry on another node (other GPUs) still resumes. A sweep adds its
    trials and rounds (`extra`) and names itself (`kind`): `yolov8n-sweep-<digest>`.
    """
    fields = {name: value for name, value in config.parameters().items() if name not in ("device", "workers")}
    identity = {"config": fields, **extra} if extra else fields
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(config.model).stem)[:40] or (kind or "run")
    return "-".join(part for part in (stem, kind, digest) if part)


@dataclass(frozen=True)
class Checkpoint:
    """ultralytics' `last.pt` of an earlier attempt."""

    path: Path
    epochs_done: int  # completed epochs
    finished: bool  # training ended (optimizer stripped) or reached its last epoch


def find_checkpoint(save_dir: Path, epochs: int) -> Checkpoint | None:
    """The usable `last.pt` under `save_dir`, or None (none yet, or unreadable: killed while writing it)."""
    last = save_dir / "weights" / "last.pt"
    if not last.is_file():
        return None
    from ultralytics.utils.patches import torch_load

    try:
        ckpt = torch_load(last, map_location="cpu")
    except Exception as exc:  # a truncated file from a kill mid-save: start over rather than fail
        print(f"yolokf: ignoring unreadable checkpoint {last} ({exc}); training starts over.", flush=True)
        return None
    epoch = int(ckpt.get("epoch", -1))
    if epoch < 0 or ckpt.get("optimizer") is None:  # ultralytics' strip_optimizer() at the end of training
        return Checkpoint(last, epochs_done=epochs, finished=True)
    return Checkpoint(last, epochs_done=epoch + 1, finished=epoch + 1 >= epochs)


def clear_run(save_dir: Path) -> None:
    """Remove what an attempt left without a usable checkpoint, so results.csv does not mix two runs."""
    if save_dir.exists():
        shutil.rmtree(save_dir)
