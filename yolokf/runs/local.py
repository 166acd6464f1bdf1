"""Run the pipeline on this machine through kfp.local, with the same component a cluster runs.

kfp.local's SubprocessRunner executes the steps in this Python environment (`use_venv=False`, so
nothing is installed); with `--runner docker` its DockerRunner runs each in a container of the yolokf image
(`yolokf.runs.runner`). Outputs go under the pipeline root, where they stay after the run.
What kfp.local prints about itself (executor input, component loading, artifact reprs) goes to the run's
log file only, unless `verbose`, and so does ultralytics' output; the user is shown `StepEvent`s (issue 26).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from yolokf.core.devices import check_visible
from yolokf.core.errors import TrainingError, UsageError
from yolokf.core.offline import check_model
from yolokf.core.tasks import model_task
from yolokf.data.datasets import resolve_data
from yolokf.data.named import to_fetch
from yolokf.data.task_fit import check_task
from yolokf.pipeline.job import Job
from yolokf.runs.progress import TRACEBACK, Epoch, EpochParser, step_error
from yolokf.runs.runner import Runner, kfp_runner, prepare_job, shared_disk, use_images

DEFAULT_PIPELINE_ROOT = Path("yolokf-runs")
METRIC_ORDER = ("precision", "recall", "mAP50", "mAP50-95", "top1_accuracy", "top5_accuracy", "fitness")


@dataclass
class LocalRun:
    """Where a local run left its outputs."""

    pipeline_root: Path
    metrics: dict[str, float]
    artifacts: dict[str, Path]
    seconds: float
    log: Path
    trials: list[dict[str, Any]] = field(default_factory=list)  # a sweep's trials, best first
    tables: dict[str, str] = field(default_factory=dict)  # Markdown outputs: per-class results, the exports
    mlflow: str = ""  # the MLflow run's link (--mlflow, issue 25), as the steps recorded it


# kfp.local's own log records (kfp/local/logging_utils.py: '%(asctime)s - %(levelname)s - %(message)s', one write
# per record), and the executor's inside the step ('[KFP Executor %(asctime)s %(levelname)s]: ...').
_KFP_RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} - [A-Z]+ - ")
_EXECUTOR_RECORD = "[KFP Executor "
_STEP_INDENT = "    "  # kfp.local indents the step's lines (logging_utils.indented_print)
_TASK_END = re.compile(r" - [A-Z]+ - Task '([^']*)' finished with status (SUCCESS|FAILURE)")  # not "Pipeline ..."
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_OUTPUT_FILE = re.compile(r'"outputFile": "([^"]+)"')  # in the executor input: where the task's outputs go


@dataclass(frozen=True)
class StepEvent:
    """What a local run reports as it goes, for the console to draw (one line or bar a step, its result).

    `kind`: "note" (a line of yolokf's own: where outputs go, a step's `yolokf: ...` result), "started",
    "epoch" (a training epoch ultralytics reported), "succeeded", "failed", "retrying" (--retries), and "raw"
    (with `verbose`: everything, as kfp.local and ultralytics printed it). `step` is the step's display name, the
    one the cluster's run display shows ("train", "evaluate", "export onnx", "quality gate").
    """

    kind: str
    step: str = ""
    text: str = ""
    epoch: Epoch | None = None


class _StepOutput(io.TextIOBase):
    """kfp.local's stdout during a run: everything into the log file; yolokf's own lines, each step's start and end
    and a training's epochs to `emit`; ultralytics' and the exporters' output stays in the log (issue 26)."""

    def __init__(
        self, log: TextIO, emit: Callable[[StepEvent], None], verbose: bool, names: dict[str, str] | None = None
    ):
        self.log, self.emit, self.verbose = log, emit, verbose
        self.names = names or {}  # kfp.local's task names -> the display names a cluster shows
        self.pending = ""
        self.in_executor_input = False
        self.failing = False
        self.task = ""  # the task kfp.local runs now
        self.failed_task = ""  # the task kfp.local just reported failed (it may retry it)
        self.epochs = EpochParser()
        self.tail: deque[str] = deque(maxlen=5000)  # an exception can list every bad file after it
        self.succeeded: list[str] = []  # the tasks kfp.local reported successful, in order
        self.output_files: dict[str, str] = {}  # task -> its executor output file, from its executor input

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self.log.flush()
        if self.verbose:
            self.emit(StepEvent("raw", self._name(self.task), text))
        if _KFP_RECORD.match(text):
            self._record(_ANSI.sub("", text))
            return len(text)
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            self._line(line.removeprefix(_STEP_INDENT))
        return len(text)

    def _name(self, task: str) -> str:
        return self.names.get(task, task)

    def _record(self, record: str) -> None:
        """kfp.local's own log records: a task that starts shows its output again, and one that starts again
        after it failed is a retry (--retries), which the user is told with the error it restarts after."""
        task = record.split("'")[1] if record.count("'") >= 2 else ""
        if " - Executing task " in record:
            if self.failed_task and task == self.failed_task:
                failed = f"yolokf: step {self._name(task)} failed ({self.failure()})"
                self.emit(StepEvent("retrying", self._name(task), f"{failed}; restarting it (--retries)."))
            self.failing, self.failed_task, self.task, self.epochs = False, "", task, EpochParser()
            self.emit(StepEvent("started", self._name(task)))
        elif end := _TASK_END.search(record):
            if end[2] == "SUCCESS":
                self.succeeded.append(end[1])
                self.emit(StepEvent("succeeded", self._name(end[1])))
            else:
                self.failed_task = end[1]
                self.emit(StepEvent("failed", self._name(end[1]), self.failure()))

    def _line(self, line: str) -> None:
        if self.in_executor_input:  # the executor logs its whole input as indented JSON
            self.in_executor_input = line.rstrip() != "}"
            if found := _OUTPUT_FILE.search(line):
                self.output_files[self.task] = found[1]
            return
        if line.startswith(_EXECUTOR_RECORD):
            self.in_executor_input = line.rstrip().endswith("Got executor_input:")
            return
        if not line.strip() or set(line.strip()) == {"-"}:  # blank, or kfp.local's separator rules
            return
        self.tail.append(line)
        if TRACEBACK in line:  # first, or after a progress bar a killed process left without its newline
            self.failing = True  # the step is dying: its traceback goes to the log, its last line to the error
        if self.verbose or self.failing:
            return
        text = _ANSI.sub("", line).strip()
        if text.startswith("yolokf: "):
            self.emit(StepEvent("note", self._name(self.task), text))
        elif (epoch := self.epochs.feed(line)) is not None:
            self.emit(StepEvent("epoch", self._name(self.task), epoch=epoch))

    def without_outputs(self, containers: set[str]) -> list[str]:
        """Tasks of `containers` reported successful whose executor never wrote its output file: kfp.local's
        DockerRunner reports a container that exited before it was waited on as a success (kubeflow/pipelines#13332),
        and the KFP executor writes that file last, on every success (kfp/dsl/executor.py `write_executor_output`)."""
        written = {task for task, path in self.output_files.items() if Path(path).is_file()}
        return [task for task in self.succeeded if task in containers and task not in written]

    def failure(self) -> str:
        """The step's own error: the exception line after its last traceback, else its last lines."""

        lines = [_ANSI.sub("", line) for line in self.tail]
        return step_error(lines) or " | ".join(line.strip() for line in lines[-3:]) or "no output"


def _spec_tasks(pipeline: Any) -> Iterator[tuple[str, Any]]:
    """Every task of the compiled spec as kfp.local names it, (key, task), sub-DAGs of loops and conditions
    included."""
    spec = pipeline.pipeline_spec
    for dag in [spec.root.dag] + [c.dag for c in spec.components.values() if c.HasField("dag")]:
        yield from dag.tasks.items()


def display_names(pipeline: Any) -> dict[str, str]:
    """kfp.local's task names (`yolo-export-2`) -> the display names the pipeline gave them (`export onnx`), the
    names a cluster's run display shows, read from the compiled spec (sub-DAGs of loops included)."""
    return {key: task.task_info.name or key for key, task in _spec_tasks(pipeline)}


def container_tasks(pipeline: Any) -> set[str]:
    """kfp.local's names of the tasks that run a container (not an importer, not a sub-DAG of a loop or condition)."""
    spec = pipeline.pipeline_spec
    executors = spec.deployment_spec["executors"]
    return {
        key
        for key, task in _spec_tasks(pipeline)
        if (label := spec.components[task.component_ref.name].executor_label)
        and label in executors
        and "container" in executors[label]
    }


def preflight(job: Job, runner: Runner) -> None:
    """Fail before starting kfp.local when the model, device or dataset cannot work here. In containers the device
    is --gpus's (checked against the engine), and a dataset not on this machine is the download step's to fetch."""
    check_model(job.config.model)
    if runner.docker and (not Path(job.config.data).expanduser().exists() or to_fetch(job.config.data)):
        return
    if not runner.docker:
        check_device(job.config.device)
    if job.source is None:  # s3://, gs://, https:// go through the pipeline's download step
        data = resolve_data(job.config.data)
        task = model_task(job.config.model)
        if task is not None:
            check_task(task, Path(data), job.config.model)


def check_device(device: str) -> None:
    """Refuse a CUDA device this machine lacks (`0`, `0,1`, `cuda:1`); other backends are left to ultralytics."""
    check_visible(
        device,
        where="this machine",
        flag="--device",
        advice="Leave --device out or use --device cpu here, or train on a cluster with --host URL --gpus N.",
    )


def run_local(
    job: Job,
    pipeline_root: Path = DEFAULT_PIPELINE_ROOT,
    *,
    emit: Callable[[StepEvent], None] = print,
    verbose: bool = False,
    runner: Runner | None = None,
) -> LocalRun:
    """Run `job` (from `plan_local_job`) through kfp.local and return the outputs' locations and final metrics.

    `emit` receives what the user is shown (`StepEvent`s): where outputs go, each step's start, epochs, own lines
    and end (with `verbose`, all of kfp.local's and ultralytics' output). The whole log is in `<pipeline root>/logs/`.
    `runner` (`yolokf.runs.runner.choose_runner`): kfp.local's SubprocessRunner unless given.
    """
    from kfp import local

    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.pipeline.pipelines import build

    runner = runner or Runner()  # kfp.local's SubprocessRunner
    preflight(job, runner)
    job, runner = prepare_job(job, runner)
    pipeline_root = Path(pipeline_root).resolve()
    if job.sweep is not None:
        # Trials run one after another here, and keep their weights where the selection steps find them.
        folder = job.step.checkpoint_dir or str(pipeline_root / "sweeps")
        job = replace(job, step=replace(job.step, checkpoint_dir=folder), sweep=replace(job.sweep, parallel=1))
    log_path = pipeline_root / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}.log"
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"Cannot create --pipeline-root {pipeline_root}: {exc.strerror}.") from None
    local.init(runner=kfp_runner(runner), pipeline_root=str(pipeline_root))
    pipeline = build(job)
    use_images(pipeline, runner)
    containers = container_tasks(pipeline) if runner.docker else set()  # a subprocess's exit code is its own
    where = f"outputs go to {pipeline_root}, the full log to {log_path}"
    emit(StepEvent("note", "", f"Training locally {runner.describe()}: {where}"))
    started = time.perf_counter()
    with log_path.open("w") as log:
        output = _StepOutput(log, emit, verbose, display_names(pipeline))
        try:
            with contextlib.redirect_stdout(output), warnings.catch_warnings(), _environment(shared_disk(runner)):
                # kfp.local says, rightly, that cluster settings and the image do not apply here.
                warnings.filterwarnings("ignore", message=r".*(have no effect|non-Python base image)", category=Warning)
                task = pipeline()
        except (RuntimeError, ValueError) as exc:
            # kfp.local raises RuntimeError for a failed task, and a ValueError when a pipeline output names a task a
            # failure left unrun (yolokf evaluate's summary); any other ValueError is not a step's.
            _check_outputs(output, containers, log_path)
            if isinstance(exc, ValueError) and not output.failed_task:
                raise
            name = output.names.get(output.failed_task, output.failed_task)
            what = f"The local step '{name}'" if name else "A local step"
            what = "The local training step" if name == "train" else what
            raise TrainingError(f"{what} failed: {output.failure()} (full log: {log_path})") from None
    _check_outputs(output, containers, log_path)
    outputs: dict[str, Any] = task.outputs if hasattr(task, "outputs") else {}
    metrics = _ordered(outputs["metrics"].metadata) if "metrics" in outputs else {}
    tables: dict[str, str] = {
        name: Path(outputs[name].path).read_text() for name in ("classes", "exports") if name in outputs
    }
    # Output[Metrics] is metadata only under kfp.local: list the artifacts that are files or folders.
    artifacts = {name: Path(a.path) for name, a in outputs.items() if hasattr(a, "path") and Path(a.path).exists()}
    trials = list(outputs.get("trials") or [])
    links = (getattr(a, "metadata", {}).get("mlflow_run") for a in outputs.values())
    seconds = time.perf_counter() - started
    return LocalRun(pipeline_root, metrics, artifacts, seconds, log_path, trials, tables, next(filter(None, links), ""))


def _check_outputs(output: _StepOutput, containers: set[str], log_path: Path) -> None:
    """A step reported successful without its outputs failed (kubeflow/pipelines#13332): say which, not the error
    of a step after it that read nothing."""
    if missing := output.without_outputs(containers):
        raise TrainingError(
            f"Step {output.names.get(missing[0], missing[0])} failed: {output.failure()} (it wrote no outputs; "
            f"kfp.local reported its container a success, kubeflow/pipelines#13332; full log: {log_path})"
        )


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in this process's environment, which the subprocess runner's steps inherit, for the run only."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _ordered(logged: dict[str, Any]) -> dict[str, float]:
    """Metrics in METRIC_ORDER, then the rest by name; numbers only (the split is metadata too)."""
    numbers = {name: float(value) for name, value in logged.items() if isinstance(value, (int, float))}
    first = [name for name in METRIC_ORDER if name in numbers]
    return {name: numbers[name] for name in first + sorted(set(numbers) - set(first))}
