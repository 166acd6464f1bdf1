"""The code inside the quality-gate step: does the evaluated model meet every `--gate`?

It decides inside the pipeline (the registration step runs under `dsl.If` on its answer), so a cluster run
needs nothing from the CLI. A miss says which metric missed and by how much; with `--gate-action fail` the step
fails the run, with `skip` it answers "skip" and the run succeeds without registering.
"""

from __future__ import annotations

import json
from typing import Any

from yolokf.core.errors import QualityGateError
from yolokf.core.tasks import task_metrics
from yolokf.promotion.plan import parse_gate

PASS, SKIP = "pass", "skip"


def check_gates(metrics: dict[str, float], gates: list[str], task: str | None = None) -> list[str]:
    """How each missed gate misses; [] when all pass. `task`: the evaluated weights' own (issue 15: a gate on a
    metric the model's task does not report is a miss that says so, whatever the compiled model's name said)."""
    misses = []
    for gate in (parse_gate(text) for text in gates):
        if task and task_metrics(task) and gate.metric not in task_metrics(task):
            misses.append(f"a {task} model does not report {gate.metric} (it reports {', '.join(task_metrics(task))})")
        elif gate.metric not in metrics:
            misses.append(f"{gate.metric} was not reported (the evaluation reports {', '.join(metrics)})")
        elif not gate.passes(metrics[gate.metric]):
            misses.append(gate.miss(metrics[gate.metric]))
    return misses


def gate_step(*, evaluation: str, gates: list, action: str) -> str:
    """Check the evaluated metrics against the quality gates (yolokf): pass, or skip (fail fails the run)."""
    record: dict[str, Any] = json.loads(evaluation) if isinstance(evaluation, str) else dict(evaluation)
    misses = check_gates(record["metrics"], gates, record.get("task"))
    if not misses:
        print(f"yolokf: quality gate passed on the {record['split']} split: {', '.join(gates)}", flush=True)
        return PASS
    message = f"Quality gate missed on the {record['split']} split: {'; '.join(misses)}."
    if action == "fail":
        raise QualityGateError(message + " The run fails (--gate-action fail).")
    print(f"yolokf: {message} Nothing is registered (--gate-action skip).", flush=True)
    return SKIP
