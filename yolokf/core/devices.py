"""ultralytics' `device` against the accelerators a step has: one rule for compile, a local run and the pod.

A pod with `--gpus N` sees its GPUs as 0..N-1, whatever the node's numbering (the device plugin maps them), so
`--gpus N` trains on all N and an explicit `--device` must name exactly N of them. Inside the step the
`device` it received (the run form may have edited it) is checked again (`check_visible`): one that names GPUs the
pod lacks fails at once with one line instead of ultralytics' traceback; in a pod that holds N GPUs (`GPUS_ENV`,
compiled in with `--gpus N`), `cpu` fails with one line (N GPUs held and none used: recompile without --gpus), and
a device that names fewer than N GPUs trains on those, after one warning line naming both counts: whoever edited
the run form presumably meant it, but the N GPUs stay held, and paid for, until the step ends.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from yolokf.core.errors import UsageError

# The GPUs a step's pod holds, set by the pipeline on the steps that run the model (`--gpus N`, step_options).
GPUS_ENV = "YOLOKF_GPUS"


def gpu_indexes(device: str) -> list[int] | None:
    """The CUDA indexes `device` names (`0`, `0,1`, `cuda:1`, `cuda`), or None for '', cpu, mps and the like."""
    wanted = device.strip().lower().replace(" ", "")
    if re.fullmatch(r"cuda|-1", wanted):
        return [0]
    match = re.fullmatch(r"(?:cuda:)?(\d+(?:,\d+)*)", wanted)
    return [int(i) for i in match[1].split(",")] if match else None


def device_for_gpus(gpus: int | None, device: str) -> str:
    """The ultralytics `device` a step with `gpus` accelerators trains on; UsageError when `device` cannot work.

    No `--gpus`: `device` as given. `--gpus 0`: cpu. `--gpus N`: '0,..,N-1', or `device` when it names exactly
    N distinct indexes below N.
    """
    if gpus is None:
        return device
    if gpus == 0:
        if device.strip() and device.strip().lower() != "cpu":
            raise UsageError(f"--gpus 0 trains on CPU, but --device {device} names another device; leave --device out.")
        return "cpu"
    every = ",".join(str(i) for i in range(gpus))
    if not device.strip():
        return every
    indexes = gpu_indexes(device)
    if indexes is None or len(set(indexes)) != len(indexes) or len(indexes) != gpus or max(indexes) >= gpus:
        raise UsageError(
            f"--gpus {gpus} gives the step {gpus} GPU(s), numbered {every} inside its pod; --device {device} must "
            f"name all of them ({every}), or leave --device out."
        )
    return ",".join(str(i) for i in indexes)


def held_gpus() -> int | None:
    """The GPUs this step's pod holds (`--gpus N`, compiled in as GPUS_ENV); None outside such a pod."""
    value = os.environ.get(GPUS_ENV, "").strip()
    return int(value) if value.isdigit() else None


def check_held(device: str, held: int | None, *, flag: str = "device", say: Callable[[str], None] = print) -> None:
    """The rule for a step whose pod holds `held` GPUs: `cpu` is refused (UsageError), a `device` that names fewer
    of them is warned about in one line (`say`) and kept. No rule without `held` or with 0 GPUs held."""
    if not held:
        return
    every = ",".join(str(i) for i in range(held))
    wanted = device.strip().lower()
    if wanted == "cpu":
        raise UsageError(
            f"{flag} cpu: this step holds {held} GPU(s) (compiled with --gpus {held}) and would leave them idle; "
            f"compile without --gpus (or with --gpus 0) to train on CPU, or set {flag} to {every}."
        )
    indexes = gpu_indexes(device) if wanted else [0]  # '': ultralytics trains on the current (first) GPU
    if indexes is not None and len(set(indexes)) < held:
        used, given = sorted(set(indexes)), device.strip() or "''"
        say(
            f"yolokf: warning: this step holds {held} GPUs (--gpus {held}) but {flag} {given} trains on "
            f"{len(used)} of them ({','.join(map(str, used))}); the others stay idle. Set {flag} to {every} to use "
            f"them all, or compile with --gpus {len(used)}."
        )


def check_node_device(device: str, processes: int, *, flag: str = "device") -> None:
    """On a `--nodes` node, torchrun starts `processes` training processes (one a GPU, `--gpus N`), and each trains
    on the GPU `device` lists at its local rank (yolokf.training.distributed): a `device` naming fewer GPUs than
    that is refused in one line, where it would fail in one process with an IndexError."""
    indexes = gpu_indexes(device)
    if indexes is None or len(set(indexes)) >= processes:
        return  # cpu (Gloo), or enough GPUs
    every = ",".join(str(i) for i in range(processes))
    raise UsageError(
        f"{flag} {device}: this node runs {processes} training processes, one a GPU (--gpus {processes}), and "
        f"{device} names {len(set(indexes))}; set {flag} to {every}, or compile with --gpus {len(set(indexes))}."
    )


def check_visible(device: str, *, where: str, flag: str, advice: str) -> None:
    """Refuse a CUDA `device` naming GPUs torch cannot see (`where`: this pod, this machine); `advice` says what
    to do instead when there is none. In a step's pod that holds GPUs, `check_held`'s rule is applied first."""
    check_held(device, held_gpus(), flag=flag, say=lambda line: print(line, flush=True))
    indexes = gpu_indexes(device)
    if indexes is None:
        return
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise UsageError(f"{flag} {device}: {where} has no CUDA GPU that torch can use. {advice}")
    if max(indexes) >= count:
        raise UsageError(f"{flag} {device}: {where} has {count} CUDA GPU(s), numbered 0 to {count - 1}.")
