"""The code inside a sweep's selection steps: rank the trials of a round, keep the best, report the sweep.

Trials hand their results over as JSON output parameters (one per trial, collected after the ParallelFor),
never as collected artifacts: fan-in of artifacts after a ParallelFor fails on open-source KFP backends
(kubeflow/pipelines#10035). The best trial's weights are read from the checkpoint storage the trials share.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from yolokf.core.errors import TrainingError
from yolokf.sweeps.plan import SWEEP_COUNTS
from yolokf.sweeps.report import render_html, render_markdown
from yolokf.training.trial import round_keep


def _records(results: list[Any]) -> list[dict[str, Any]]:
    """The trials' summaries: JSON text on a cluster, already parsed under kfp.local (whose protobuf Struct
    turns whole numbers into floats: trial and epochs are made whole again)."""
    records = [json.loads(r) if isinstance(r, str) else dict(r) for r in results]
    for record in records:
        record["trial"] = int(record["trial"])
        record["epochs"] = int(record.get("epochs") or 0)
        if "round" in record:
            record["round"] = int(record["round"])
    return records


def _usable(record: dict[str, Any], metric: str) -> bool:
    """A trial that reported `metric`: succeeded, or stopped by successive halving."""
    return record.get("status") != "failed" and isinstance(record.get("metrics", {}).get(metric), (int, float))


def rank(records: list[dict[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    """The trials that reported `metric`, best first. Ties go to the lower validation loss: after a short
    budget every mAP is often 0 while the loss already separates the trials. Then the lower trial number."""
    usable = [r for r in records if _usable(r, metric)]
    sign = -1.0 if mode == "max" else 1.0

    def key(record: dict[str, Any]) -> tuple[float, float, int]:
        loss = record.get("val_loss")
        return sign * float(record["metrics"][metric]), float(loss) if loss is not None else math.inf, record["trial"]

    return sorted(usable, key=key)


def _check_some_succeeded(records: list[dict[str, Any]], ranked: list[dict[str, Any]], metric: str) -> None:
    if ranked:
        return
    failed = [r for r in records if r.get("status") == "failed"]
    first = failed[0] if failed else records[0] if records else None
    if first is None:
        raise TrainingError("The sweep has no trial results.")
    why = first.get("error") or f"it did not report {metric} (it reports {', '.join(first.get('metrics', {}))})"
    raise TrainingError(f"All {len(records)} trials failed; trial {first['trial']}: {why}")


def _merge(history: list[Any], records: list[dict[str, Any]], round_: int) -> list[dict[str, Any]]:
    merged = {r["trial"]: r for r in _records(history)}
    for record in records:
        merged[record["trial"]] = {**record, "round": round_}
    return [merged[k] for k in sorted(merged)]


def select_step(
    results: list[Any],
    history: list[Any],
    metric: str,
    mode: str,
    trials: list[Any],
    epochs: int,
    sweep: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """After the round `sweep` describes: the best trials to continue (as trial items), and every trial's record.

    How many go on follows from the run's own `trials` and `epochs` (`yolokf.sweeps.plan.round_keep`)."""

    round_, keep = int(sweep["round"]), round_keep(sweep, len(trials), int(epochs))
    records = _records(results)
    ranked = rank(records, metric, mode)
    _check_some_succeeded(records, ranked, metric)
    kept = ranked[:keep]
    print(
        f"yolokf: round {round_ + 1}: {len(ranked)} of {len(records)} trials reported {metric}; continuing "
        + ", ".join(f"trial {r['trial']} ({r['metrics'][metric]:.4f})" for r in kept),
        flush=True,
    )
    return [{"trial": r["trial"], "values": r["values"]} for r in kept], _merge(history, records, round_)


def report_step(
    results: list[Any],
    history: list[Any],
    metric: str,
    mode: str,
    rounds: int,
    *,
    best: Any,
    metrics: Any,
    report: Any,
    table: Any,
) -> list[dict[str, Any]]:
    """After the last round: the best trial's weights, its metrics, the sweep report; returns every trial's record."""

    records = _records(results)
    ranked = rank(records, metric, mode)
    _check_some_succeeded(records, ranked, metric)
    winner = ranked[0]
    trials = _merge(history, records, rounds - 1)
    for record in trials:
        if record.get("status") == "succeeded" and record.get("round", rounds - 1) < rounds - 1:
            record["status"] = "stopped"  # successive halving did not continue it
    ordered = rank(trials, metric, mode) + [r for r in trials if not _usable(r, metric)]
    weights = Path(winner["weights"])
    if not weights.is_file():
        raise TrainingError(f"The best trial's weights {weights} are missing; is the checkpoint storage shared?")
    Path(best.path).mkdir(parents=True, exist_ok=True)
    shutil.copy2(weights, Path(best.path) / "best.pt")
    best.metadata.update(
        {
            "framework": "ultralytics",
            "trial": winner["trial"],
            "values": winner["values"],
            "parameters": winner.get("parameters", {}),
            "metrics": winner["metrics"],
            "epochs_done": winner["epochs"],
            "metric": metric,
            "mode": mode,
            **({"mlflow_run": winner["mlflow_run"]} if winner.get("mlflow_run") else {}),  # the sweep's MLflow run
        }
    )
    for name, value in winner["metrics"].items():
        metrics.log_metric(name, value)
    counts = {
        "trials": len(trials),
        "failed_trials": sum(1 for r in trials if r.get("status") == "failed"),
        "trial_epochs": sum(r["epochs"] for r in trials),
    }
    assert set(counts) == set(SWEEP_COUNTS)
    for name, count in counts.items():
        metrics.log_metric(name, count)
    pages = ((report, render_html(ordered, winner, metric, mode)), (table, render_markdown(ordered, metric)))
    for artifact, text in pages:
        Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
        Path(artifact.path).write_text(text)
    value = winner["metrics"][metric]
    print(f"yolokf: best trial {winner['trial']}: {metric} {value:.4f} {winner['values']}", flush=True)
    return ordered
