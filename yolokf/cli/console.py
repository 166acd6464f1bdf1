"""Everything yolokf draws on a terminal: the consoles, tables, live displays, prompts and progress reporters.

Only the CLI layer imports this module; core modules return data or take a callback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator
    from contextlib import AbstractContextManager

    from rich.console import Console

    from yolokf.data.transfer import Progress as FetchProgress
    from yolokf.image.engine import LayerSink, Step
    from yolokf.runs.follow import Failure
    from yolokf.runs.local import LocalRun, StepEvent
    from yolokf.runs.progress import Epoch
    from yolokf.runs.run_report import RunReport


@functools.cache
def out() -> Console:
    """stdout. Made on first use: importing rich.console costs 50 ms that `compile` and `--help` skip."""
    from rich.console import Console

    return Console(soft_wrap=True)


@functools.cache
def errs() -> Console:
    """stderr: progress, warnings and errors."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def say(text: str, *, err: bool = False) -> None:
    """One plain line (no markup, no highlighting): paths, ids and messages print as they are.

    Plain `print`: rich costs 50 ms to import, which `compile` and other one-line commands skip.
    """
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def yaml_document(titles: list[str], body: dict[str, Any] | str) -> str:
    """A YAML document for stdout (`--dry-run`, `--out -`): titles as comments, so `> file` stays loadable.

    Collections print as one-line JSON (valid YAML flow), scalars through the YAML emitter."""
    import yaml

    if isinstance(body, str):
        text = body.rstrip("\n")
    else:
        lines = []
        for key, value in body.items():
            if isinstance(value, (dict, list, tuple)):
                rendered = json.dumps(value, sort_keys=isinstance(value, dict))
            else:
                rendered = yaml.safe_dump(value, width=1 << 20).removesuffix("\n...\n").strip()
            lines.append(f"{key}: {rendered}")
        text = "\n".join(lines)
    return "\n".join([*(f"# {title}" for title in titles), text])


def say_documents(*documents: str) -> None:
    """YAML documents on stdout, separated by `---`."""
    say("\n---\n".join(documents))


def stdout_writer() -> Callable[[str], None]:
    """Writes text as it comes (a training step's own output) to this stdout, even while sys.stdout is redirected."""
    stream = sys.stdout

    def write(text: str) -> None:
        stream.write(text)
        stream.flush()

    return write


def print_local_run(result: LocalRun) -> None:
    """The end of a local run: the final metrics table and where the outputs are."""
    from rich.table import Table

    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.sweeps.plan import SWEEP_COUNTS

    table = Table(title="The best trial's validation metrics" if result.trials else "Final validation metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.0f}" if name in SWEEP_COUNTS else f"{value:.4f}")
    if result.metrics:
        out().print(table)
    for text in result.tables.values():  # Markdown as written for the KFP UI: per-class results, the exports
        from rich.markdown import Markdown

        out().print(Markdown(text))
    for name, path in result.artifacts.items():
        say(f"{name:>8}: {path}")
    say(f"     log: {result.log}")
    if result.mlflow:
        say(f"  MLflow: {result.mlflow}")
    done = "Trained" if result.metrics else "Evaluated"
    say(f"{done} in {result.seconds:.0f} s; outputs under {result.pipeline_root}")


def print_trials(records: list[dict[str, Any]], metric: str | None, title: str, *, err: bool = False) -> None:
    """A sweep's trial table: planned (`metric` None), or finished, best first."""
    from rich.table import Table

    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.sweeps.plan import trial_table

    header, body = trial_table(records, metric)
    table = Table(title=title)
    for name in header:
        table.add_column(name, justify="left" if name in ("status",) else "right")
    for row in body:
        table.add_row(*row)
    (errs() if err else out()).print(table)


def print_config(title: str, rows: list[tuple[str, str, str]]) -> None:
    """`yolokf config`: each option, its value, and where the value comes from."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("option", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("from", overflow="fold")
    for row in rows:
        table.add_row(*row)
    out().print(table, markup=False, highlight=False)


def print_run_report(run: RunReport, failure: Failure | None = None) -> None:
    """`yolokf status`: state, error, a table of the tasks, the failed step's own error, and the UI link."""
    from rich.table import Table

    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.runs.run_report import format_seconds

    say(f"Run {run.name} ({run.run_id}): {run.state}, {format_seconds(run.seconds)}")
    if run.error:
        say(f"Error: {run.error}")
    if run.parameters:
        say(f"Parameters: {json.dumps(run.parameters, sort_keys=True)}")
    table = Table("task", "state", "time", "outputs (artifact ids)")
    for task in (t for t in run.tasks if t.is_step):
        outputs = ", ".join(f"{k}: {' '.join(v)}" for k, v in sorted(task.outputs.items()))
        table.add_row(task.name, task.state, format_seconds(task.seconds), outputs or "-")
    out().print(table)
    if failure is not None:
        print_failure(failure)
    if run.state == "SUCCEEDED":
        say("Metrics, report and weights: open the run's artifacts in the UI (KFP's API does not serve them).")
    say(f"Details: {run.url}")


def print_failure(failure: Failure) -> None:
    """The failed step's own error line, or its last log lines, and the command for its whole log."""
    if failure.error:
        say(f"Step {failure.step} failed: {failure.error}")
    elif failure.tail:
        say(f"Step {failure.step} failed; the last {len(failure.tail)} lines of its log:")
        print_log_tail(failure.tail, err=False)
    else:
        say(f"Step {failure.step} failed; its log could not be read ({failure.problem}).")
    say(f"Whole log: {failure.command}")


def print_log_tail(lines: list[str], *, err: bool = True) -> None:
    for line in lines:
        say(f"  | {line}", err=err)


def ask_terminate(run_id: str) -> bool:
    """After Ctrl-C while following: terminate the run on the cluster? No (and no terminal to ask on) keeps it."""
    from rich.prompt import Confirm

    try:
        return Confirm.ask(
            f"\nInterrupted. Terminate run {run_id} on the cluster? (no: stop following, it keeps running)",
            console=out(),
            default=False,
        )
    except (EOFError, KeyboardInterrupt):
        return False


class RunDisplay:
    """A followed run's state and its trainings' epochs: live on a terminal; elsewhere (CI logs, pipes) one line
    per change of state and one per new epoch."""

    def __init__(self, console: Console | None = None):
        self.console = console or out()
        self.live: Any = None
        self.last: tuple[str, str] | None = None
        self.epochs: dict[str, int] = {}  # the last epoch printed, by step

    def __enter__(self) -> RunDisplay:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def update(self, run: RunReport) -> None:
        # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
        from yolokf.runs.run_report import TERMINAL_STATES, format_seconds

        task = run.current_task
        task_text = f"task {task.name}: {task.state}" if task else "no task started yet"
        line = f"{run.state:<9} {format_seconds(run.seconds):>9}  {task_text}"
        sweep = len(run.progress) > 1 or any(t.trial is not None for t in run.tasks)
        rows = [p.line(best=sweep) for p in run.progress]
        if self.live is not None:
            from rich.console import Group
            from rich.spinner import Spinner
            from rich.text import Text

            done = run.state in TERMINAL_STATES
            head = Text(line) if done else Spinner("dots", text=line)
            self.live.update(Group(head, *(Text(f"  {row}") for row in rows)) if rows else head)
        else:
            if self.last != (run.state, task_text):
                self.console.print(line, markup=False, highlight=False)
            for progress in run.progress:
                epoch = progress.epoch.epoch if progress.epoch else 0
                if epoch > self.epochs.get(progress.name, 0):
                    self.console.print(progress.line(best=sweep), markup=False, highlight=False)
                    self.epochs[progress.name] = epoch
        self.last = (run.state, task_text)


class BuildReporter:
    """`build-image` progress on a rich console (yolokf.image.engine.BuildEvents): one line per build step,
    a bar per layer while pulling or pushing, never the engine's raw JSON."""

    def __init__(self, console: Console | None) -> None:
        self.console = console
        self._status: Any = None

    def message(self, text: str) -> None:
        self._print(text)

    def step_started(self, step: Step) -> None:
        self._stop_status()
        if self.console is not None and self.console.is_terminal:
            self._status = self.console.status(f"[{step.number}/{step.total}] {self._short(step.instruction)}")
            self._status.start()

    def output(self, line: str) -> None:
        if self._status is not None:
            self._status.update(f"{self._status.status.split(chr(10))[0]}\n  {self._short(line, 100)}")

    def step_done(self, step: Step) -> None:
        self._stop_status()
        how = "base" if step.base else "cached" if step.cached else f"{step.seconds:.1f} s"
        self._print(f"  [{step.number}/{step.total}] {self._short(step.instruction)}  ({how})")

    def failed(self, step: Step | None, tail: list[str]) -> None:
        self._stop_status()
        if step is not None:
            self._print(f"Step {step.number}/{step.total} failed: {step.instruction}", style="bold red")
        for line in tail:
            self._print(f"  | {line}", style="dim")

    def layers(self, title: str) -> AbstractContextManager[LayerSink | None]:
        """A progress bar per layer while pulling or pushing."""
        import contextlib

        console = self.console
        if console is None:
            return contextlib.nullcontext(None)

        @contextlib.contextmanager
        def bars() -> Iterator[LayerSink]:
            from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn

            self._print(title)
            progress = Progress(
                TextColumn("  {task.description}"), BarColumn(), DownloadColumn(), console=console, transient=True
            )
            tasks: dict[str, TaskID] = {}

            def update(layer: str, status: str, current: int | None, total: int | None) -> None:
                if layer not in tasks:
                    tasks[layer] = progress.add_task(layer[:12], total=None)
                description = f"{layer[:12]} {status}"
                if current is not None and total is not None:
                    progress.update(tasks[layer], total=total, completed=current, description=description)
                else:
                    progress.update(tasks[layer], description=description)

            with progress:
                yield update

        return bars()

    def _print(self, text: str, style: str | None = None) -> None:
        if self.console is not None:
            self.console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    @staticmethod
    def _short(text: str, width: int = 90) -> str:
        text = " ".join(text.split())
        return text if len(text) <= width else text[: width - 1] + "…"


def fetch_bar(label: str) -> AbstractContextManager[Callable[[FetchProgress], None]]:
    """A progress bar for `yolokf fetch` on a terminal (files, bytes, rate, time left); nothing elsewhere."""
    import contextlib

    console = errs()
    if not console.is_terminal:
        return contextlib.nullcontext(lambda progress: None)

    @contextlib.contextmanager
    def bar() -> Iterator[Callable[[FetchProgress], None]]:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[files]}"),
            console=console,
            transient=True,
        )
        task = progress.add_task(label, total=None, files="")

        def update(state: FetchProgress) -> None:
            files = f"{state.files_done:,}/{state.files_total:,} files"
            progress.update(task, total=state.bytes_total, completed=state.bytes_done, files=files)

        with progress:
            yield update

    return bar()


def _figures(epoch: Epoch) -> str:
    """An epoch's validation figures (or, without validation, its losses) in one short text."""
    shown = epoch.readable() or {k.removeprefix("train/"): v for k, v in epoch.metrics.items()}
    return "  ".join(f"{name} {value:.3f}" for name, value in shown.items())


class LocalDisplay:
    """A local run as the user sees it (issue 26): each step one line (a bar on a terminal) and its result,
    yolokf's own lines, nothing of ultralytics' or the exporters' output (that is in the run's log; `-v` shows it).
    Off a terminal (CI, `> file`) every event is one plain line: `train: epoch 3/15 mAP50 0.412`."""

    def __init__(self, verbose: bool = False) -> None:
        # This stdout, kept: kfp.local's output is redirected while the run goes on.
        self.stream = sys.stdout
        self.verbose = verbose
        self.live = self.stream.isatty() and not verbose
        self.started: dict[str, float] = {}
        self.progress: Any = None
        self.bars: dict[str, Any] = {}

    def __enter__(self) -> LocalDisplay:
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

            self.progress = Progress(
                SpinnerColumn(finished_text=" "),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[figures]}"),
                console=Console(file=self.stream, soft_wrap=True),
            )
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, event: StepEvent) -> None:
        import time

        # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
        from yolokf.runs.run_report import format_seconds

        if event.kind == "raw":
            self.stream.write(event.text)
            self.stream.flush()
            return
        if event.kind == "started":
            self.started[event.step] = time.monotonic()
        took = format_seconds(time.monotonic() - self.started.get(event.step, time.monotonic()))
        text = {
            "note": event.text,
            "retrying": event.text,
            "started": f"{event.step}: running",
            "epoch": f"{event.step}: epoch {event.epoch.epoch}/{event.epoch.epochs}  " + _figures(event.epoch)
            if event.epoch
            else "",
            "succeeded": f"{event.step}: done in {took}",
            "failed": f"{event.step}: failed after {took}",
        }.get(event.kind, event.text)
        if self.progress is None:
            self.stream.write(text.rstrip() + "\n")
            self.stream.flush()
            return
        self._draw(event, text, took)

    def _draw(self, event: StepEvent, text: str, took: str) -> None:
        bar = self.bars.get(event.step)
        if event.kind == "started":
            self.bars[event.step] = self.progress.add_task(event.step, total=None, figures="")
        elif event.kind == "epoch" and bar is not None and event.epoch:
            figures = _figures(event.epoch)
            self.progress.update(bar, total=event.epoch.epochs, completed=event.epoch.epoch, figures=figures)
        elif event.kind in ("succeeded", "failed") and bar is not None:
            task = self.progress.tasks[bar]
            mark = f"[green]✓[/] {event.step} done" if event.kind == "succeeded" else f"[red]✗ {event.step} failed[/]"
            if task.total and task.completed < task.total:  # a sweep round's stop, or a failure mid-training
                mark += f" after epoch {task.completed:.0f} of {task.total:.0f}"
            # The bar ends full, so its spinner stops: the description says how far it went.
            done = task.completed or 1
            self.progress.update(bar, total=done, completed=done, description=f"{mark} in {took}")
            self.bars.pop(event.step, None)
        else:
            self.progress.console.print(text, markup=False, highlight=False)
