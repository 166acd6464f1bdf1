"""yolokf's distributed worker: one YOLO training across nodes, one process per GPU (or one per CPU node).

ultralytics 8.4 cannot train across nodes (ultralytics#20341, #7282): its trainer takes its world size from the
count of `device` entries (0 on CPU), initialises the process group with that local count, wraps the model with
`device_ids=[device.index]` (which DistributedDataParallel refuses for a CPU model), and its final validation
builds a CUDA model on every rank. `distributed_trainer` subclasses the task's own trainer so that, under
`torchrun` (Kubeflow Trainer's `torch-distributed` runtime, or `yolokf run --nodes N` locally):

- the world is torchrun's global WORLD_SIZE, RANK and LOCAL_RANK (ultralytics reads RANK and LOCAL_RANK from the
  environment once WORLD_SIZE > 1, so its rank-0-only saving, logging and stop broadcast already hold);
- the process group is NCCL on CUDA (LOCAL_RANK picks the node's GPU) and Gloo on CPU;
- the data is sharded by ultralytics' own distributed samplers, which follow the initialised process group;
- the final validation of best.pt runs on every rank over its shard of the validation set, rank 0 gathering
  (the weights broadcast from rank 0, so no rank needs best.pt on its own disk).

`python -m yolokf.training.node REQUEST.json` is what torchrun starts on every node (`yolokf.training.node`).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

# How long a rank waits for the others in one collective: a node lost mid-epoch fails the run after this.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


def world() -> tuple[int, int, int]:
    """torchrun's (WORLD_SIZE, RANK, LOCAL_RANK); (1, 0, 0) outside torchrun."""
    return (
        int(os.environ.get("WORLD_SIZE", "1")),
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def distributed_trainer(base: Any) -> Any:
    """`base` (the task's ultralytics trainer, such as DetectionTrainer) trained over torchrun's global world."""
    import torch
    from torch import distributed as dist
    from torch import nn
    from ultralytics.utils import LOCAL_RANK, RANK
    from ultralytics.utils.torch_utils import TORCH_2_13, strip_optimizer

    world_size = world()[0]

    class DistributedTrainer(base):  # type: ignore[misc]
        device: Any
        model: Any

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.world_size = world_size  # ultralytics counted this node's devices (0 on CPU)
            self.ddp = False  # torchrun started every process: never spawn ultralytics' own DDP workers
            self.on_cpu = self.device.type == "cpu"

        def _setup_ddp(self) -> None:
            if self.on_cpu:
                backend = "gloo"
            else:
                index = int(self.args.device.split(":", 1)[-1].split(",")[LOCAL_RANK])
                self.device = torch.device("cuda", index)
                torch.cuda.set_device(index)
                os.environ["TORCH_NCCL_BLOCKING_WAIT"] = "1"  # a lost node times out instead of hanging
                backend = "nccl"
            dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT, rank=RANK, world_size=world_size)

        def _setup_train(self) -> None:
            if self.on_cpu:
                # check_amp turns AMP off on CPU on rank 0 only; the other ranks must agree before the loop.
                self.args.amp = False
                # ultralytics wraps with device_ids=[device.index], which DDP refuses on CPU: one rank's view
                # until _build_train_pipeline (called right after that wrap) restores the world and wraps.
                self.world_size = 1
            super()._setup_train()

        def _build_train_pipeline(self) -> None:
            if self.on_cpu and not isinstance(self.model, nn.parallel.DistributedDataParallel):
                self.world_size = world_size
                # The keywords ultralytics passes on CUDA, without device_ids.
                sync: dict[str, Any] = {"forward_sync_buffers" if TORCH_2_13 else "broadcast_buffers": False}
                self.model = nn.parallel.DistributedDataParallel(
                    self.model, find_unused_parameters=not bool(self.args.compile), **sync
                )
            super()._build_train_pipeline()

        def final_eval(self) -> None:
            # ultralytics validates best.pt with a fresh model on every rank, on CUDA; here rank 0 strips the
            # checkpoints, broadcasts best.pt's weights into every rank's EMA, and all ranks validate together.
            if RANK == 0 and self.last.exists():
                ckpt = strip_optimizer(self.last)
                if self.best.exists():
                    strip_optimizer(self.best, updates={"train_results": ckpt.get("train_results")})
            found = [self.best.exists() if RANK == 0 else None]
            dist.broadcast_object_list(found, src=0)
            if not found[0]:
                return
            if RANK == 0:
                from ultralytics.nn.tasks import load_checkpoint

                best, _ = load_checkpoint(self.best)
                self.ema.ema.load_state_dict(best.state_dict())
            for tensor in self.ema.ema.state_dict().values():
                dist.broadcast(tensor, src=0)
            self.validator.args.plots = self.args.plots
            self.validator.args.compile = False
            metrics = self.validator(trainer=self)  # rank 0 gathers every rank's shard; None elsewhere
            if metrics is not None:
                metrics.pop("fitness", None)
                self.metrics = metrics
            self.epoch += 1  # as ultralytics: the best weights' metrics logged at step epochs+1
            self.run_callbacks("on_fit_epoch_end")
            self.epoch -= 1

    DistributedTrainer.__name__ = DistributedTrainer.__qualname__ = f"Distributed{base.__name__}"
    return DistributedTrainer
