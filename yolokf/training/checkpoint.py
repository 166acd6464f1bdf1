"""Resume after preemption: where a training keeps `last.pt`, and what state that checkpoint is in.

With a checkpoint folder (a mounted PVC on the cluster, any folder locally) the training step trains with
ultralytics `project=<folder>`, `name=<run key>`, so `last.pt` lands there after every epoch. A retried or
re-submitted step with the same run key finds it and resumes (docs/cluster.md, "Resume").

A checkpoint is never deleted because it could not be read (issue 24): ultralytics writes `last.pt` in place, so
a kill during that write leaves half a file; yolokf's trainings write it whole or not at all (`keep_saves_whole`),
so such a kill costs the one epoch being saved. A file cut short all the same (written by another program) is
kept, with its run folder, beside the new run; any other read error (NFS `EIO`, a version skew) fails the step,
the file untouched, for a retry to try again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yolokf.core.errors import TrainingError
from yolokf.core.settings import TrainConfig

# A zip file (torch.save's format) ends with this record; a file cut short has lost it.
_ZIP_END = b"PK\x05\x06"
_ZIP_END_SEARCH = 65536 + 22  # the record (22 bytes) plus the longest comment a zip may carry


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
    """The usable `last.pt` under `save_dir`, or None: none yet, or a file cut short (a kill while it was written).

    Raises TrainingError, leaving the file as it is, when a whole file cannot be read (storage errors, a
    checkpoint of another torch or ultralytics): starting over would throw its epochs away.
    """
    last = save_dir / "weights" / "last.pt"
    if not last.is_file():
        return None
    from ultralytics.utils.patches import torch_load

    try:
        ckpt = torch_load(last, map_location="cpu")
    except Exception as exc:
        if _cut_short(last):
            print(f"yolokf: {last} was cut short (killed while it was saved); training starts over.", flush=True)
            return None
        raise TrainingError(
            f"Could not read the checkpoint {last} ({type(exc).__name__}: {exc}); it is left as it is. "
            f"Retry the step once the storage answers, or move {save_dir} away to start over."
        ) from exc
    epoch = int(ckpt.get("epoch", -1))
    if epoch < 0 or ckpt.get("optimizer") is None:  # ultralytics' strip_optimizer() at the end of training
        return Checkpoint(last, epochs_done=epochs, finished=True)
    return Checkpoint(last, epochs_done=epoch + 1, finished=epoch + 1 >= epochs)


def _cut_short(path: Path) -> bool:
    """Whether `path` lacks the end of a zip file (torch.save's format). A read error here propagates."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - _ZIP_END_SEARCH))
        return _ZIP_END not in handle.read()


def set_aside(save_dir: Path) -> Path | None:
    """Make room for a new run at `save_dir`: a folder holding weights is renamed `<name>.set-aside-<time>` and
    kept (returned); one without weights (an attempt killed before its first epoch) is removed, so that
    results.csv does not mix two runs."""
    if not save_dir.exists():
        return None
    if not any(save_dir.glob("weights/*.pt")):
        shutil.rmtree(save_dir)
        return None
    aside = save_dir.with_name(f"{save_dir.name}.set-aside-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}")
    save_dir.rename(aside)
    print(f"yolokf: kept the earlier attempt's run folder as {aside}.", flush=True)
    return aside


class _WholeFile(type(Path())):  # type: ignore[misc]
    """A path whose `write_bytes` writes a sibling file and renames it over the target (POSIX rename is atomic):
    a reader, or a resume after a kill, sees the old file or the new one, never half of one."""

    def write_bytes(self, data: Any) -> int:
        partial = self.with_name(f"{self.name}.partial")
        with partial.open("wb") as handle:
            written = handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, self)
        return written


def keep_saves_whole(trainer: Any) -> None:
    """ultralytics callback (on_pretrain_routine_start): `last.pt` and `best.pt` are saved whole or not at all.

    ultralytics' `save_model` writes them with `Path.write_bytes`, in place (engine/trainer.py); its DDP workers
    receive the trainer's callbacks (utils/dist.py `generate_ddp_file`), so this holds with `--gpus N` too.
    """
    trainer.last, trainer.best = _WholeFile(trainer.last), _WholeFile(trainer.best)
