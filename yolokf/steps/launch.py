"""The training step across nodes (`--nodes N`, issue 19): it starts the distributed worker on every node, waits,
and hands rank 0's weights, metrics, report and run folder to the step's outputs as the one-pod step does.

On this machine (`yolokf run --nodes N` without --host) the nodes are N `torchrun` processes rendezvousing on the
loopback address, one CPU process each (Gloo): a multi-node configuration checked on a laptop before a cluster.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from yolokf.datasets import step_data
from yolokf.errors import TrainingError
from yolokf.settings import TrainConfig
from yolokf.steps.distributed import result_from_json
from yolokf.steps.train import TrainResult, write_outputs

LOOPBACK = "127.0.0.1"
RESULT_FILE = "yolokf-result.json"
REQUEST_FILE = "yolokf-request.json"
RESUME_ADVICE = "rerun with --retries N and --checkpoint-dir (or --checkpoint-pvc) to resume from the last epoch"


def torchrun_command(nodes: int, node_rank: int, procs: int, master: str, port: int, request: str) -> list[str]:
    """The command every node runs: torchrun starting yolokf's distributed worker with the run's request."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nodes}",
        f"--node-rank={node_rank}",
        f"--nproc-per-node={procs}",
        f"--master-addr={master}",
        f"--master-port={port}",
        "-m",
        "yolokf.steps.distributed",
        request,
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("yolokf:") or "Error" in line]
    return (errors or lines or [""])[-1][:300]


def _pipe(stream: IO[str], log: IO[str], echo: bool) -> None:
    for line in stream:
        log.write(line)
        log.flush()
        if echo:
            print(line, end="", flush=True)


class LocalNodes:
    """N torchrun node processes on the loopback address; node 0's output is this step's log."""

    def __init__(self, nodes: int, request: Path):
        self.nodes, self.request = nodes, request
        self.logs = [request.parent / f"node-{rank}.log" for rank in range(nodes)]
        self.processes: list[subprocess.Popen[str]] = []

    def start(self) -> None:
        port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for rank in range(self.nodes):
            command = torchrun_command(self.nodes, rank, 1, LOOPBACK, port, str(self.request))
            # Each node in its own session: a node is lost as a whole (the test kills one), and cleaned up so.
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                start_new_session=True,
            )
            log = self.logs[rank].open("w")
            assert process.stdout is not None
            threading.Thread(target=_pipe, args=(process.stdout, log, rank == 0), daemon=True).start()
            self.processes.append(process)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes:
            process.wait()

    def wait(self) -> None:
        """Return when every node succeeded; TrainingError naming the first node lost (or failed) otherwise."""
        try:
            while True:
                codes = [process.poll() for process in self.processes]
                failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
                if failed:
                    time.sleep(1)  # the others notice the lost peer; a node killed by a signal is the cause
                    rank, code = min(failed, key=lambda item: item[1] is not None and item[1] >= 0)
                    raise TrainingError(self._failure(rank, code))
                if all(code == 0 for code in codes):
                    return
                time.sleep(0.5)
        finally:
            self.stop()

    def _failure(self, rank: int, code: int | None) -> str:
        what = (
            f"was killed ({signal.Signals(-code).name})"
            if code is not None and code < 0
            else f"failed (exit {code}): {_last_line(self.logs[rank])}"
        )
        return f"Node {rank} of {self.nodes} {what}; the training stopped ({RESUME_ADVICE})."


def run_local_nodes(
    config: TrainConfig,
    nodes: int,
    workdir: Path,
    *,
    data: str,
    checkpoint_dir: str | None = None,
    run_key: str | None = None,
) -> TrainResult:
    """Train `config` on `nodes` loopback nodes; rank 0's result."""
    result = workdir / RESULT_FILE
    request = workdir / REQUEST_FILE
    request.write_text(
        json.dumps(
            {
                "parameters": config.parameters(),
                "workdir": str(workdir),
                "data": data,
                "checkpoint_dir": checkpoint_dir or "",
                "run_key": run_key or "",
                "result": str(result),
            }
        )
    )
    print(f"yolokf: training on {nodes} nodes (torchrun on {LOOPBACK}, Gloo); node 0's log follows.", flush=True)
    group = LocalNodes(nodes, request)
    group.start()
    group.wait()
    if not result.exists():
        raise TrainingError(f"The nodes finished without rank 0's result; see {group.logs[0]}.")
    return result_from_json(json.loads(result.read_text()))


def launch_step(
    *,
    nodes: int,
    weights: Any,
    metrics: Any,
    report: Any,
    run_dir: Any,
    summary: str | None = None,
    dataset: Any = None,
    checkpoint_dir: str = "",
    run_key: str = "",
    **parameters: Any,
) -> None:
    """Entry point of the pipeline's training component across nodes: `parameters` are its training fields."""
    config = TrainConfig.from_parameters(parameters)
    with tempfile.TemporaryDirectory(prefix="yolokf-nodes-") as workdir:
        local_data = step_data(config.data, dataset, Path(workdir))
        result = run_local_nodes(
            config, nodes, Path(workdir), data=local_data, checkpoint_dir=checkpoint_dir, run_key=run_key
        )
        write_outputs(result, config, weights=weights, metrics=metrics, report=report, run_dir=run_dir)
    print("yolokf-metrics " + json.dumps(result.metrics), flush=True)
    if summary is not None:
        Path(summary).parent.mkdir(parents=True, exist_ok=True)
        Path(summary).write_text(json.dumps({"status": "succeeded", "metrics": result.metrics}))
