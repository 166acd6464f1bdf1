"""A hyperparameter sweep, planned once: its trials, its rounds (successive halving), and how the best is chosen.

`plan_sweep` turns `yolokf tune`'s flags into a `Sweep` that `compile`, a local run and `tune --host` all use:
the trials become the pipeline's `trials` parameter (its compiled default), each round a `dsl.ParallelFor`
over the same training component. With `--halving ETA` every trial trains a short budget of epochs, the best
1/ETA continue from their checkpoint, and so on until `--epochs` (docs/tune.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from yolokf.core.errors import UsageError
from yolokf.core.settings import SWEEP_MODES, SweepOptions, TrainConfig, auto_optimizer_hint, ignored_under_auto
from yolokf.core.tasks import model_task, task_metrics
from yolokf.sweeps.space import Dimension, parse_space, sample
from yolokf.training.trial import Round, halving_rounds

# What a sweep's Metrics hold beside the best trial's metrics: counts, shown as whole numbers.
SWEEP_COUNTS = ("trials", "failed_trials", "trial_epochs")


@dataclass(frozen=True)
class Sweep:
    """A planned sweep: what the pipeline runs."""

    space: tuple[Dimension, ...]
    trials: tuple[dict[str, Any], ...]  # {"trial": index, "values": {key: value}}: the pipeline's `trials`
    rounds: tuple[Round, ...]
    parallel: int
    metric: str
    mode: str
    sampler: str
    eta: int | None = None  # --halving: each round keeps the best 1/eta
    name: str = ""  # --run-key: the stem of the sweep's folder (the step adds what the run received)

    @property
    def halving(self) -> bool:
        return len(self.rounds) > 1

    def round_spec(self, index: int) -> dict[str, Any]:
        """What a round's steps are told at compile time (the graph's shape); the budgets follow from the run's
        `epochs` and `trials`, in the steps (`round_budgets`)."""
        return {"round": index, "rounds": len(self.rounds), "eta": self.eta or 0, "name": self.name}

    def trial_epochs(self) -> int:
        """Trial-epochs the rounds spend when no trial fails: the sweep's compute budget."""
        spent, before = 0, 0
        for round_ in self.rounds:
            spent += round_.trials * (round_.epochs - before)
            before = round_.epochs
        return spent


def plan_sweep(config: TrainConfig, options: SweepOptions, *, run_key: str | None = None) -> Sweep:
    """Check `options` against `config` and draw the trials; nothing runs and nothing is written."""
    if options.trials < 1:
        raise UsageError(f"--trials must be at least 1, got {options.trials}.")
    if options.parallel < 1:
        raise UsageError(f"--parallel must be at least 1, got {options.parallel}.")
    if options.mode not in SWEEP_MODES:
        raise UsageError(f"--mode {options.mode!r}: use max or min.")
    if options.halving is not None and options.halving < 2:
        raise UsageError(f"--halving must be at least 2 (keep the best 1/ETA each round), got {options.halving}.")

    task = model_task(config.model)
    known = task_metrics(task)
    if known and options.metric not in known:
        raise UsageError(f"--metric {options.metric!r}: a {task} model reports {', '.join(known)}.")
    space = parse_space(list(options.space), config)
    sampled_optimizer = {str(v).lower() for d in space if d.key == "optimizer" for v in d.choices}
    if not sampled_optimizer or "auto" in sampled_optimizer:
        ignored = ignored_under_auto([d.key for d in space], config.train_args)
        if ignored:
            raise UsageError(f"--space {ignored[0]}: {auto_optimizer_hint(ignored)}.")
    values = sample(space, options.trials, options.sampler, config.seed)
    trials: tuple[dict[str, Any], ...] = tuple({"trial": i, "values": v} for i, v in enumerate(values))
    for trial in trials:
        config.with_values(trial["values"])  # each trial's whole config is valid before anything runs
    rounds = halving_rounds(len(trials), config.epochs, options.halving)
    if options.halving and len(rounds) == 1:
        raise UsageError(
            f"--halving {options.halving} needs at least {options.halving} trials and {options.halving} epochs "
            "to make a second round; raise --trials and --epochs, or leave --halving out."
        )
    return Sweep(
        space=space,
        trials=trials,
        rounds=rounds,
        parallel=options.parallel,
        metric=options.metric,
        mode=options.mode,
        sampler=options.sampler,
        eta=options.halving,
        name=run_key or "",
    )


def searched_keys(records: list[dict[str, Any]]) -> list[str]:
    return sorted({key for record in records for key in record.get("values", {})})


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value else f"{value:.4f}".rstrip("0").rstrip(".")
    return "" if value is None else str(value)


def trial_table(records: list[dict[str, Any]], metric: str | None) -> tuple[list[str], list[list[str]]]:
    """The trial table (header, rows) the CLI, the Markdown and the HTML report show; planned trials have no
    status or metric yet (`metric` None)."""
    keys = searched_keys(records)
    done = metric is not None
    header = ["trial", *(["status", "epochs"] if done else []), *keys, *([metric] if metric else [])]
    body = [
        [
            str(int(r["trial"])),  # kfp.local hands whole numbers back as floats
            *([r.get("status", ""), str(int(r.get("epochs") or 0))] if done else []),
            *(_cell(r.get("values", {}).get(k)) for k in keys),
            *([_cell(r.get("metrics", {}).get(metric))] if metric else []),
        ]
        for r in records
    ]
    return header, body
