"""What a compiled pipeline lets a run change: the one rule for every pipeline yolokf writes.

People upload the compiled YAML in the Kubeflow UI and edit the run form, so every root input of a pipeline is
a run parameter that the steps handle correctly for any valid value, decided at run time (the kind of dataset,
a sweep's folder, its round budgets, the device against the pod's GPUs). Everything that shapes the graph or
the pods (volumes, accelerator counts, Secrets, node selection, the sweep's rounds, the promote steps) is fixed
at compile time: a constant in the IR, never a parameter. `run_parameters` decides which is which; the pipeline
builder takes its parameters from it, and docs/cluster.md ("What a run can change") lists both groups.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from yolokf.core.settings import training_fields

if TYPE_CHECKING:
    from yolokf.pipeline.job import Job

# `yolokf evaluate` trains nothing: of the training fields only what evaluation and export read (the image size
# is the weights' own, yolokf.promotion.evaluate).
EVALUATE_PARAMETERS = ("model", "data", "batch", "device")


def run_parameters(job: Job) -> dict[str, tuple[type, Any]]:
    """The pipeline's run parameters, in order: name -> (type, compiled default)."""
    defaults = job.arguments()
    types = {f.name: f.type for f in training_fields()}
    names = EVALUATE_PARAMETERS if job.evaluate_only else tuple(types)
    parameters: dict[str, tuple[type, Any]] = {name: (types[name], defaults[name]) for name in names}
    if job.sweep is not None:
        parameters["trials"] = (list, defaults["trials"])
    return parameters
