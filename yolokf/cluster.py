"""How the training step runs on Kubernetes: image, and (issue 5) GPUs, shm, scheduling.

All step settings are applied here, in one place, for compile and remote run alike.
kfp.local ignores them, so local runs are unaffected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StepOptions:
    """Kubernetes-side settings of the training task."""

    image: str


def apply_step_options(task: Any, options: StepOptions) -> None:
    """Apply `options` to the training task with kfp's task methods and kfp-kubernetes."""
    task.set_container_image(options.image)
    task.set_display_name("train")
