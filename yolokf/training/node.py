"""What torchrun starts on every node (`python -m yolokf.training.node REQUEST.json`): it trains the request's
job with `yolokf.training.train.train` (checkpoints, resume and metrics as in one pod), as one rank of the
distributed worker (`yolokf.training.distributed`), and rank 0 writes the result file the launcher hands to the
step's outputs. Runs inside a node's pod.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from yolokf.core.errors import YolokfError
from yolokf.core.settings import TrainConfig
from yolokf.training.distributed import world
from yolokf.training.result import result_json
from yolokf.training.train import train


def main(argv: list[str] | None = None) -> int:
    """torchrun's entry on every node: train the request's job; rank 0 writes the result file."""
    args = sys.argv[1:] if argv is None else argv
    # The TrainJob passes the request inline; the local launcher as a file next to the nodes' logs.
    request = json.loads(args[0] if args[0].lstrip().startswith("{") else Path(args[0]).read_text())
    size, rank, _ = world()
    try:
        result = train(
            TrainConfig.from_parameters(request["parameters"]),
            Path(request["workdir"]),
            data=request.get("data") or None,
            checkpoint_dir=request.get("checkpoint_dir") or None,
            run_key=request.get("run_key") or None,
            stop_after=request.get("stop_after") or None,  # a sweep round's budget
            distributed=size > 1,  # one node of one process trains as the one-pod step does
        )
    except YolokfError as exc:
        print(f"yolokf: rank {rank}: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        from torch import distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        Path(request["result"]).write_text(json.dumps(result_json(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
