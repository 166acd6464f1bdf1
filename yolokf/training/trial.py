"""A sweep trial as the training step sees it: its folder (`trial_name` under `sweep_key`), and its round's
budget (`round_stop`), derived from the values the run received. `yolokf.sweeps.plan` plans the same rounds on
your machine; here they are recomputed in the step, so an edited run form changes the budgets, never the shape.
Plain Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from yolokf.core.settings import TrainConfig
from yolokf.training.checkpoint import default_run_key


@dataclass(frozen=True)
class Round:
    """One round of trials: how many run, and the epochs each has trained when the round ends."""

    trials: int
    epochs: int


def halving_rounds(trials: int, epochs: int, eta: int | None) -> tuple[Round, ...]:
    """Successive halving: as many rounds as `trials` and `epochs` allow (each round keeps 1/eta of the trials
    and trains eta times the epochs of the one before), budgets from `round_budgets`."""
    if eta is None:
        return (Round(trials, epochs),)
    count = 1
    while trials // eta**count >= 1 and epochs // eta**count >= 1:
        count += 1
    return round_budgets(trials, epochs, eta, count)


def round_budgets(trials: int, epochs: int, eta: int | None, count: int) -> tuple[Round, ...]:
    """Round k of `count` runs trials // eta**k trials to epochs // eta**(count-1-k) epochs, at least one of
    each. The number of rounds is the compiled graph's; the steps call this with the run's own `trials` and
    `epochs`, so an edited run form changes the budgets, never the shape."""
    if not eta or count == 1:
        return (Round(trials, epochs),)
    return tuple(Round(max(1, trials // eta**k), max(1, epochs // eta ** (count - 1 - k))) for k in range(count))


def round_stop(spec: dict[str, Any], trials: int, epochs: int) -> int:
    """The epoch a trial stops at in the round `spec` describes (0: train to `epochs`, the last round)."""
    index, count = int(spec.get("round", 0)), int(spec.get("rounds", 1))
    if index >= count - 1:
        return 0
    return round_budgets(trials, epochs, int(spec.get("eta") or 0), count)[index].epochs


def round_keep(spec: dict[str, Any], trials: int, epochs: int) -> int:
    """How many trials go on to the round after the one `spec` describes."""
    index, count = int(spec.get("round", 0)), int(spec.get("rounds", 1))
    return round_budgets(trials, epochs, int(spec.get("eta") or 0), count)[min(index + 1, count - 1)].trials


def sweep_key(config: TrainConfig, trials: list[dict[str, Any]], spec: dict[str, Any]) -> str:
    """The sweep's folder under the checkpoint storage, from what the run received: its training fields, its
    trials and its rounds. A resubmission with the same values finds its trials' checkpoints and resumes them;
    a run with any value edited (the Kubeflow UI's run form) gets a folder of its own. `--run-key` names it."""
    normal = [{"trial": int(t["trial"]), "values": dict(t["values"])} for t in trials]  # kfp.local: floats
    extra = {"trials": normal, "rounds": int(spec.get("rounds", 1)), "eta": int(spec.get("eta") or 0)}
    key = default_run_key(config, kind="sweep", extra=extra)
    return f"{spec['name']}-{key.rsplit('-', 1)[-1]}" if spec.get("name") else key


def trial_name(trial: dict[str, Any]) -> str:
    """A trial's folder and label: trial-03."""
    return f"trial-{int(trial['trial']):02d}"
