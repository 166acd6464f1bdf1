"""ultralytics' `device` against the accelerators a step has: one rule for compile, a local run and the pod.

A pod with `--gpus N` sees its GPUs as 0..N-1, whatever the node's numbering (the device plugin maps them), so
`--gpus N` trains on all N and an explicit `--device` must name exactly N of them. Inside the step the same
rule is checked against what torch sees, so a `device` edited in the Kubeflow UI that names GPUs the pod lacks
fails at once with one line instead of ultralytics' traceback.
"""

from __future__ import annotations

import re

from yolokf.core.errors import UsageError


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


def check_visible(device: str, *, where: str, flag: str, advice: str) -> None:
    """Refuse a CUDA `device` naming GPUs torch cannot see (`where`: this pod, this machine); `advice` says what
    to do instead when there is none."""
    indexes = gpu_indexes(device)
    if indexes is None:
        return
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise UsageError(f"{flag} {device}: {where} has no CUDA GPU that torch can use. {advice}")
    if max(indexes) >= count:
        raise UsageError(f"{flag} {device}: {where} has {count} CUDA GPU(s), numbered 0 to {count - 1}.")
