"""The `torch-distributed` runtime: a TrainJob runs as `numNodes` processes of `spec.trainer.command + args`, each
with the PET_* variables torchrun reads, on the loopback address; its condition becomes `Complete` or `Failed` when
they end."""

from __future__ import annotations

import os
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yolokf.training.launch import free_port


@dataclass
class TrainJobRun:
    body: dict[str, Any]
    processes: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)


class TorchRuntime:
    workdir: Path
    versions: int

    def _version(self) -> str:
        self.versions += 1
        return str(self.versions)

    def _start(self, run: TrainJobRun, trainer: dict[str, Any]) -> None:
        nodes, procs = int(trainer.get("numNodes") or 1), int(trainer.get("numProcPerNode") or 1)
        port = free_port()
        name = run.body["metadata"]["name"]
        for rank in range(nodes):
            env = {**os.environ, **{e["name"]: e.get("value", "") for e in trainer.get("env") or []}}
            env.update(
                PET_NNODES=str(nodes),
                PET_NPROC_PER_NODE=str(procs),
                PET_NODE_RANK=str(rank),
                PET_MASTER_ADDR="127.0.0.1",
                PET_MASTER_PORT=str(port),
            )
            log = self.workdir / f"{name}-node-{rank}.log"
            with log.open("w") as out:
                process = subprocess.Popen(
                    [*trainer["command"], *trainer.get("args", [])],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            run.processes.append(process)
            run.logs.append(log)
        threading.Thread(target=self._watch, args=(run,), daemon=True).start()

    def _watch(self, run: TrainJobRun) -> None:
        codes = [process.wait() for process in run.processes]
        failed = [rank for rank, code in enumerate(codes) if code != 0]
        condition = (
            {"type": "Failed", "status": "True", "reason": "FailedJobs", "message": f"node {failed[0]} failed"}
            if failed
            else {"type": "Complete", "status": "True", "reason": "JobsCompleted", "message": "TrainJob completed"}
        )
        run.body["status"] = {"conditions": [condition]}
        run.body["metadata"]["resourceVersion"] = self._version()

    @staticmethod
    def _kill(run: TrainJobRun) -> None:
        """Delete a TrainJob's pods: every node's torchrun agent and the workers it started in their own sessions."""
        from yolokf.training.launch import kill_node

        for process in run.processes:
            kill_node(process.pid)
            process.wait()
