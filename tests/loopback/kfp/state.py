"""What the loopback KFP server holds (experiments, pipelines, versions, runs and their tasks), and the lookups every
API area shares. `KfpServer` sets it up; each API area is a class that reads and writes it."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.loopback.kfp.outcomes import Outcome
from tests.loopback.kfp.protojson import ApiError, timestamp


@dataclass
class Task:
    index: int
    state: str
    created: str
    started: str | None = None
    ended: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)


@dataclass
class PodLog:
    """A step's pod log: `text` so far; `gone` once the pod is deleted (then only the archive has it); `rotated`:
    where the kubelet's newest log file starts, the only one the Kubernetes API serves (KfpServer.log_max_bytes)."""

    text: str = ""
    gone: bool = False
    rotated: int = 0


@dataclass(frozen=True)
class StepSpec:
    """A container task of the pipeline as Argo runs it: its task key, its UI name, the DAGs around it."""

    key: str
    name: str
    trial: int | None
    dags: tuple[tuple[str, int | None], ...]  # enclosing DAG task keys, with the loop iteration where one is
    template: str  # the executor's Argo template (argocompiler/container.go addContainerExecutorTemplate)

    @property
    def label(self) -> str:
        return self.name if self.trial is None else f"{self.name}#{self.trial}"


@dataclass
class Run:
    data: dict[str, Any]
    outcome: Outcome
    polls: int = 0
    terminate_polls: int | None = None
    tasks: dict[str, Task] = field(default_factory=dict)  # the tasks listed so far, by label
    steps: dict[str, StepSpec] = field(default_factory=dict)  # every step the pipeline can run, by label
    workflow: str = ""  # the Argo workflow's name
    logs: dict[str, PodLog] = field(default_factory=dict)  # by label
    spec: dict[str, Any] = field(default_factory=dict)  # the pipeline spec: its DAGs, which Argo's nodes follow


def get(table: dict[str, Any], key: str, kind: str) -> Any:
    if key not in table:
        raise ApiError(404, f"{kind} {key} not found")
    return table[key]


class KfpState:
    """The server's tables and the settings tests steer, with the ids, clock and namespaces they share."""

    multi_user: bool
    namespaces: set[str]
    outcome: Outcome
    reject_runs: str | None
    archive_logs: bool
    log_max_bytes: int
    experiments: dict[str, dict[str, Any]]
    pipelines: dict[str, dict[str, Any]]
    versions: dict[str, dict[str, Any]]
    runs: dict[str, Run]
    clock: Callable[[], datetime.datetime]
    _ids: Iterator[int]

    def _new_id(self) -> str:
        return str(uuid.UUID(int=next(self._ids)))

    def _now(self) -> str:
        return timestamp(self.clock())

    def _namespace(self, namespace: str | None, *, required: bool = True) -> str:
        if not self.multi_user:
            return ""
        if not namespace:
            if required:
                raise ApiError(400, "Invalid input error: In multi-user mode, namespace is required")
            return ""
        if namespace not in self.namespaces:
            raise ApiError(
                403,
                f"Failed to authorize with API: PermissionDenied: User is not authorized to access "
                f"namespace {namespace}",
            )
        return namespace
