"""How the tests steer runs: an `Outcome` for the next runs, or a schedule of `Poll`s, one per get_run."""

from __future__ import annotations

from dataclasses import dataclass, field

# backend/api/v2beta1/run.proto RuntimeState, and the states a run never leaves.
RUNTIME_STATES = (
    "RUNTIME_STATE_UNSPECIFIED",
    "PENDING",
    "RUNNING",
    "SUCCEEDED",
    "SKIPPED",
    "FAILED",
    "CANCELING",
    "CANCELED",
    "PAUSED",
)
FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED")


def _check_state(state: str) -> None:
    if state not in RUNTIME_STATES:
        raise ValueError(f"{state!r} is not a RuntimeState; use one of {', '.join(RUNTIME_STATES)}")


@dataclass
class Poll:
    """What one get_run answers for a run on a `schedule`: the run's state, and its tasks' states.

    `tasks` maps a task's name (its taskInfo name in the pipeline spec, e.g. "fetch-dataset") to its
    state; inside a sweep's loop, "trial" names every iteration and "trial#1" the second one. Only the
    tasks named appear in run_details.task_details, as on a cluster, where a task is listed once its
    pod exists. None: every task of the pipeline is there with the run's state.

    `logs` appends text to a task's pod log as this poll is answered (a log that grows between polls);
    `gone` names tasks whose pods are deleted from then on (only an archived log remains).
    """

    state: str
    tasks: dict[str, str] | None = None
    logs: dict[str, str] = field(default_factory=dict)
    gone: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for state in [self.state, *(self.tasks or {}).values()]:
            _check_state(state)


@dataclass
class Outcome:
    """How the next runs go.

    By default a run is PENDING, then RUNNING, and in `state` from the `polls`-th get_run on (or
    RUNNING for ever when hang=True); `state` may be any RuntimeState, e.g. PAUSED or
    RUNTIME_STATE_UNSPECIFIED, which a run keeps until it is terminated. `schedule` instead lists one
    `Poll` per get_run; the last one repeats. Example, a finished download while training runs:

        Outcome(schedule=[
            Poll("RUNNING", tasks={"fetch-dataset": "RUNNING"}),
            Poll("RUNNING", tasks={"fetch-dataset": "SUCCEEDED", "train": "RUNNING"}),
            Poll("SUCCEEDED", tasks={"fetch-dataset": "SUCCEEDED", "train": "SUCCEEDED"}),
        ])

    `error` is set as the `error` of a FAILED run and of its FAILED tasks. The 2.17 API server itself
    never fills these fields for a failed workflow (server/api_converter.go toApiRun and
    toApiPipelineTaskDetail only set them when converting the stored run fails); leave it None to
    answer as it does.
    """

    state: str = "SUCCEEDED"
    polls: int = 3
    error: str | None = None
    hang: bool = False
    schedule: list[Poll] | None = None

    def __post_init__(self) -> None:
        _check_state(self.state)
        if self.schedule is not None and not self.schedule:
            raise ValueError("schedule needs at least one Poll")

    def poll(self, n: int) -> Poll:
        """What the `n`-th get_run (from 1) answers."""
        if self.schedule:
            return self.schedule[min(n, len(self.schedule)) - 1]
        if self.hang or n < self.polls:
            return Poll("PENDING" if n == 1 and not self.hang and self.polls > 1 else "RUNNING")
        return Poll(self.state)
