"""A hyperparameter sweep, planned once: its trials, its rounds (successive halving), and how the best is chosen.

`plan_sweep` turns `yolokf tune`'s flags into a `Sweep` that `compile`, a local run and `tune --host` all use:
the trials become the pipeline's `trials` parameter (its compiled default), each round a `dsl.ParallelFor`
over the same training component. With `--halving ETA` every trial trains a short budget of epochs, the best
1/ETA continue from their checkpoint, and so on until `--epochs` (docs/tune.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from yolokf.errors import UsageError
from yolokf.search_space import Dimension, parse_space, sample
from yolokf.settings import SWEEP_MODES, SweepOptions, TrainConfig, auto_optimizer_hint, ignored_under_auto

# What a sweep's Metrics hold beside the best trial's metrics: counts, shown as whole numbers.
SWEEP_COUNTS = ("trials", "failed_trials", "trial_epochs")


@dataclass(frozen=True)
class Round:
    """One round of trials: how many run, and the epochs each has trained when the round ends."""

    trials: int
    epochs: int


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
    from yolokf.tasks import model_task, task_metrics

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


def sweep_key(config: TrainConfig, trials: list[dict[str, Any]], spec: dict[str, Any]) -> str:
    """The sweep's folder under the checkpoint storage, from what the run received: its training fields, its
    trials and its rounds. A resubmission with the same values finds its trials' checkpoints and resumes them;
    a run with any value edited (the Kubeflow UI's run form) gets a folder of its own. `--run-key` names it."""
    from yolokf.steps.checkpoint import default_run_key  # plain Python: hashes the fields like a run's key

    normal = [{"trial": int(t["trial"]), "values": dict(t["values"])} for t in trials]  # kfp.local: floats
    extra = {"trials": normal, "rounds": int(spec.get("rounds", 1)), "eta": int(spec.get("eta") or 0)}
    key = default_run_key(config, kind="sweep", extra=extra)
    return f"{spec['name']}-{key.rsplit('-', 1)[-1]}" if spec.get("name") else key


def trial_name(trial: dict[str, Any]) -> str:
    """A trial's folder and label: trial-03."""
    return f"trial-{int(trial['trial']):02d}"


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
