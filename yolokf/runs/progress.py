"""What a training step's log says: its epochs, losses and validation figures, and the step's own error.

The one reader of ultralytics' console output, for `run --wait`, `status --wait`, `yolokf logs` and a failed
run's explanation. It reads the log as a pod writes it, with no terminal: a progress bar's updates joined by
ESC[K on one line that ends when the bar does, then the validation bar and its `all` row. It never raises: a line
it does not know is skipped, so a change in ultralytics' wording costs the live figures, never the run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from yolokf.core.tasks import readable_metrics

# Terminal control sequences (colours, ESC[K) that ultralytics writes even without a terminal.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# "      1/3         0G      1.545      2.249 ...      25         64: 100% ━━━━ 8/8 6.5it/s 1.2s"
_EPOCH_ROW = re.compile(r"^\s*(\d+)/(\d+)\s+(.*?):\s+(\d+)%.*?(\S+)\s*$")
_VAL_BAR = re.compile(r":\s+(\d+)%.*?(\S+)\s*$")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_ALL_ROW = re.compile(rf"^\s*all\s+((?:{_NUMBER}\s*)+)$")
# ultralytics' validation header groups: "Box(P R mAP50 mAP50-95)" -> results.csv's metrics/...(B)
_KINDS = {"Box": "B", "Mask": "M", "Pose": "P"}
_COLUMN = {"P": "precision", "R": "recall", "mAP50": "mAP50", "mAP50-95": "mAP50-95"}
_CLASSIFY = {"top1_acc": "metrics/accuracy_top1", "top5_acc": "metrics/accuracy_top5"}
TRACEBACK = "Traceback (most recent call last)"
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")
TAIL_LINES = 20  # a failed step's last lines shown when it printed no error of its own


@dataclass
class Epoch:
    """One finished epoch as the log shows it; `metrics` keyed as results.csv (metrics/mAP50(B), train/box_loss)."""

    epoch: int
    epochs: int
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None  # the epoch's training plus validation time, from ultralytics' bars

    @property
    def validated(self) -> bool:
        return any(key.startswith("metrics/") for key in self.metrics)

    def readable(self) -> dict[str, float]:
        """The validation figures under yolokf's names (mAP50, mask_mAP50-95, top1_accuracy)."""

        return readable_metrics({k: v for k, v in self.metrics.items() if k.startswith("metrics/")})


def clean(line: str) -> str:
    """The text a terminal would have left: the last update of an ESC[K- or CR-joined line, no colours."""
    parts = [p for p in re.split(r"\x1b\[K|\r", line) if p.strip()]
    return _ANSI.sub("", parts[-1] if parts else "").rstrip()


class EpochParser:
    """Feed it a step's log line by line; it collects the epochs ultralytics reported, in order."""

    def __init__(self) -> None:
        self.epochs: list[Epoch] = []
        self._loss_columns: list[str] = []
        self._val_columns: list[str] = []
        self._current: Epoch | None = None  # trained, not validated yet
        self._done = False  # "N epochs completed": the final validation of best.pt is no epoch

    @property
    def latest(self) -> Epoch | None:
        return self.epochs[-1] if self.epochs else None

    def feed(self, line: str) -> Epoch | None:
        """Read one line; return the epoch it finished (validated, or trained when the run has no validation)."""
        try:
            return self._feed(clean(line))
        except (ValueError, IndexError):  # a line shaped like ours but not: ignore it
            return None

    def feed_all(self, lines: Iterable[str]) -> list[Epoch]:
        return [epoch for line in lines if (epoch := self.feed(line)) is not None]

    def _feed(self, text: str) -> Epoch | None:
        words = text.split()
        if not words:
            return None
        if words[:2] == ["Epoch", "GPU_mem"]:
            self._loss_columns = words
            return self._close()
        if re.match(r"^\d+ epochs? completed in ", text.strip()):
            closed = self._close()
            self._done = True
            return closed
        if (row := _EPOCH_ROW.match(text)) and self._loss_columns:
            return self._epoch_row(row)
        if words[0] in ("Class", "classes") and (bar := _VAL_BAR.search(text)):
            self._val_columns = self._validation_columns(text[: bar.start()].split())
            if self._current is not None and bar[1] == "100":
                self._current.seconds = (self._current.seconds or 0.0) + _seconds(bar[2])
            return None
        if (row := _ALL_ROW.match(text)) and self._current is not None and self._val_columns:
            values = [float(v) for v in row[1].split()]
            classify = self._val_columns[0] in _CLASSIFY.values()
            figures = values if classify else values[2:]  # detection rows start with images and instances
            self._current.metrics.update(zip(self._val_columns, figures, strict=False))
            return self._close()
        return None

    def _epoch_row(self, row: re.Match[str]) -> Epoch | None:
        epoch, epochs = int(row[1]), int(row[2])
        if self._done or row[4] != "100":
            return None  # an update within the epoch; the bar's last one (100%) carries the epoch's losses
        closed = self._close() if self._current is not None and self._current.epoch != epoch else None
        values = row[3].split()
        losses = {
            f"train/{name}": float(value)
            for name, value in zip(self._loss_columns[2:], values[1:], strict=False)
            if name.endswith("loss")
        }
        self._current = Epoch(epoch, epochs, losses, _seconds(row[5]))
        return closed

    @staticmethod
    def _validation_columns(header: list[str]) -> list[str]:
        if header[0] == "classes":
            return [_CLASSIFY.get(name, name) for name in header[1:]]
        columns, kind = [], "B"
        for word in header[3:]:  # Class Images Instances, then the groups
            name = word.rstrip(")")
            if "(" in name:
                group, name = name.split("(", 1)
                kind = _KINDS.get(group, group[:1])
            columns.append(f"metrics/{_COLUMN.get(name, name)}({kind})")
        return columns

    def _close(self) -> Epoch | None:
        current, self._current = self._current, None
        if current is None:
            return None
        if self.epochs and self.epochs[-1].epoch == current.epoch:
            self.epochs[-1] = current
        else:
            self.epochs.append(current)
        return current


def _seconds(text: str) -> float:
    """ultralytics' elapsed time: 1.2s, 1:05, 1:02:03."""
    if text.endswith("s"):
        return float(text[:-1])
    total = 0.0
    for part in text.split(":"):
        total = total * 60 + float(part)
    return total


def parse_epochs(text: str) -> list[Epoch]:
    """Every epoch a whole log reports."""
    parser = EpochParser()
    parser.feed_all(text.splitlines())
    parser._close()
    return parser.epochs


def seconds_left(epochs: list[Epoch]) -> float | None:
    """Time to the last epoch at the pace of the epochs seen (their bars' times), or None before the first."""
    timed = [e.seconds for e in epochs if e.seconds]
    if not epochs or not timed:
        return None
    latest = epochs[-1]
    return max(0, latest.epochs - latest.epoch) * sum(timed) / len(timed)


def step_error(lines: list[str]) -> str | None:
    """The step's own error: the exception line after its last traceback, else a line starting `Error: `."""
    cleaned = [_ANSI.sub("", line).rstrip() for line in lines]
    # A traceback can follow a progress bar that a killed process left without its newline: in the line, not first.
    starts = [i for i, line in enumerate(cleaned) if TRACEBACK in line]
    if starts:
        found = next((line for line in cleaned[starts[-1] + 1 :] if _EXCEPTION_LINE.match(line)), None)
        if found:
            return found.strip()
    return next((line.strip() for line in reversed(cleaned) if line.startswith("Error: ")), None)
