"""The `torch-distributed` runtime: a TrainJob runs as `numNodes` processes of `spec.trainer.command + args`, each
with the PET_* variables torchrun reads, on the loopback address; its condition becomes `Complete` or `Failed` when
they end.

Each node's output is kept as the kubelet keeps a container's: every line stamped with the time it was written
(RFC3339Nano, as `kubectl logs --timestamps` shows it), in a file rotated once it passes `log_max_bytes` (the
kubelet's containerLogMaxSize, 10 MiB by default), and only the newest file is served. `replace_node` kills a node's
process and starts it again as a new pod of another name, as the runtime's Job replaces a failed pod.

A node that exits non-zero is restarted in its pod (a new container: the kubelet serves the new one's log), as the
`node` Job's pods are: Trainer v2.3's torch-distributed runtime sets no backoffLimit
(manifests/base/runtimes/torch_distributed.yaml), so batch/v1's default of 6 failures applies, and the TrainJob
fails, its other nodes stopped, once the Job has failed more often than that (`backoff_limit`)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yolokf.training.launch import free_port


@dataclass
class TrainJobRun:
    body: dict[str, Any]
    processes: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    pods: list[str] = field(default_factory=list)  # each node's current pod name
    created: list[str] = field(default_factory=list)  # each current pod's creationTimestamp
    restarts: int = 0  # failed containers restarted, all nodes together (the Job's failures)
    stopped: bool = False  # deleted: its pods are killed, not restarted
    failed_at: dict[int, float] = field(default_factory=dict)  # a failed node waiting for its restart
    node_restarts: dict[int, int] = field(default_factory=dict)  # each node's container restarts
    commands: list[tuple[list[str], dict[str, str]]] = field(default_factory=list)


def now() -> str:
    """The current time as the kubelet stamps a log line: RFC3339Nano, trailing zeros trimmed."""
    nanos = time.time_ns()
    fraction = f"{nanos % 1_000_000_000:09d}".rstrip("0")
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(nanos // 1_000_000_000))
        + (f".{fraction}" if fraction else "")
        + "Z"
    )


class TorchRuntime:
    workdir: Path
    versions: int
    log_max_bytes: int = 10 << 20
    backoff_limit: int = 6  # batch/v1 JobSpec.backoffLimit's default
    # The kubelet restarts a failed container after 10 s, doubling each time up to 5 minutes (CrashLoopBackOff:
    # kubernetes pkg/kubelet/kubelet.go backOffPeriod, MaxContainerBackOff). The other nodes fail meanwhile (their
    # collectives lose the peer) and torchrun's static rendezvous meets again once all have restarted.
    restart_backoff: float = 10.0

    def _version(self) -> str:
        self.versions += 1
        return str(self.versions)

    def _start(self, run: TrainJobRun, trainer: dict[str, Any]) -> None:
        nodes, procs = int(trainer.get("numNodes") or 1), int(trainer.get("numProcPerNode") or 1)
        port = free_port()
        for rank in range(nodes):
            env = {**os.environ, **{e["name"]: e.get("value", "") for e in trainer.get("env") or []}}
            env.update(
                PET_NNODES=str(nodes),
                PET_NPROC_PER_NODE=str(procs),
                PET_NODE_RANK=str(rank),
                PET_MASTER_ADDR="127.0.0.1",
                PET_MASTER_PORT=str(port),
            )
            run.commands.append(([*trainer["command"], *trainer.get("args", [])], env))
            run.processes.append(None)  # type: ignore[arg-type]
            run.logs.append(Path())
            run.pods.append("")
            run.created.append("")
            self._run_node(run, rank)
        threading.Thread(target=self._watch, args=(run,), daemon=True).start()

    def _run_node(self, run: TrainJobRun, rank: int, *, restart: bool = False) -> None:
        """Node `rank`'s pod: JobSet names it <jobset>-<job>-<job index>-<completion index>-<5 random letters>.
        `restart`: a new container in the same pod."""
        name = run.body["metadata"]["name"]
        pod = run.pods[rank] if restart else f"{name}-node-0-{rank}-{uuid.uuid4().hex[:5]}"
        command, env = run.commands[rank]
        run.restarts += restart
        run.node_restarts[rank] = run.node_restarts.get(rank, 0) + restart
        log = self.workdir / f"{pod}-{run.restarts}.log" if restart else self.workdir / f"{pod}.log"
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        if not restart:
            run.created[rank] = now()[:19] + "Z"
        run.processes[rank], run.logs[rank], run.pods[rank] = process, log, pod
        threading.Thread(target=self._stamp, args=(process, log), daemon=True).start()

    def _stamp(self, process: subprocess.Popen, log: Path) -> None:
        """The kubelet's log writer: each line stamped, the file rotated past log_max_bytes (only the newest kept)."""
        assert process.stdout is not None
        out = log.open("ab")
        for line in process.stdout:
            out.write(now().encode() + b" " + line)
            out.flush()
            if out.tell() > self.log_max_bytes:
                out.close()
                log.replace(log.with_suffix(".log.1"))
                out = log.open("ab")
        out.close()

    def replace_node(self, run: TrainJobRun, rank: int) -> str:
        """Node `rank`'s pod failed and its Job started a new one: the old process killed, the command started
        again under a new pod name; the new name."""
        from yolokf.training.launch import kill_node

        old = run.processes[rank]
        self._run_node(run, rank)  # the new pod first: the TrainJob fails only once the Job gives up (backoffLimit)
        kill_node(old.pid)
        old.wait()
        return run.pods[rank]

    def lose_node(self, run: TrainJobRun, rank: int) -> None:
        """Node `rank`'s machine lost: its torchrun agent and workers SIGKILLed, left for the runtime to reap (its
        exit code is what `_watch` sees)."""
        import psutil

        agent = psutil.Process(run.processes[rank].pid)
        for process in [*agent.children(recursive=True), agent]:
            process.kill()

    def _watch(self, run: TrainJobRun) -> None:
        failed: list[int] = []
        while True:  # each node's current process: a replaced pod's old one does not count
            codes = [process.poll() for process in run.processes]
            failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
            if failed and run.restarts + len(failed) <= self.backoff_limit and not run.stopped:
                for rank in failed:
                    backoff = min(300.0, self.restart_backoff * 2 ** run.node_restarts.get(rank, 0))
                    due = run.failed_at.setdefault(rank, time.monotonic()) + backoff
                    if time.monotonic() >= due and not run.stopped:
                        del run.failed_at[rank]
                        self._run_node(run, rank, restart=True)
                time.sleep(0.1)
                continue
            if failed or all(code is not None for code in codes):
                break
            time.sleep(0.1)
        self._stop_nodes(run)  # a failed Job fails the JobSet: its other nodes are stopped
        condition = (
            {"type": "Failed", "status": "True", "reason": "FailedJobs", "message": f"node {failed[0]} failed"}
            if failed
            else {"type": "Complete", "status": "True", "reason": "JobsCompleted", "message": "TrainJob completed"}
        )
        run.body["status"] = {"conditions": [condition]}
        run.body["metadata"]["resourceVersion"] = self._version()

    @classmethod
    def _kill(cls, run: TrainJobRun) -> None:
        """Delete a TrainJob's pods: every node's torchrun agent and the workers it started in their own sessions."""
        run.stopped = True
        cls._stop_nodes(run)

    @staticmethod
    def _stop_nodes(run: TrainJobRun) -> None:
        from yolokf.training.launch import kill_node

        for process in run.processes:
            if process.poll() is None:
                kill_node(process.pid)
            process.wait()
