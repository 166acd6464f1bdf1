"""A step's MLflow run: runs inside the steps (training, evaluation, export, registration) and in `check_server`.

Which run a step logs into (docs/mlflow.md):
- KFP's MLflow plugin injected `MLFLOW_RUN_ID` (the task's nested run under the KFP run's parent): that run, on the
  server of the injected `MLFLOW_TRACKING_URI` (else `--mlflow`), whatever its experiment. No second run.
- else, with `--mlflow`: one run per KFP run in `--mlflow-experiment`, found by the tag `yolokf.kfp_run_id` (the
  training, evaluation, exports and registration all log there), and under it one nested run per sweep trial.

The server is asked once before the step's work starts: a wrong password or an unreachable server fails the step in
one line then (`TrackingError`). Once it works, a logging call that fails later (a restarted server, a full disk)
only warns, once, and the training goes on: losing a curve must not cost a training.
MLflow's client is the only one used (`mlflow_client`); credentials come from its environment variables.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yolokf.core.errors import TrackingError
from yolokf.core.tasks import readable_metrics
from yolokf.tracking.plan import DEFAULT_EXPERIMENT, run_link

KFP_RUN_TAG = "yolokf.kfp_run_id"
KFP_URL_TAG = "yolokf.kfp_run_url"
TRIAL_TAG = "yolokf.trial"
ROLE_TAG = "yolokf.role"  # "pipeline": the KFP run's own run; "trial": a sweep trial's, nested under it
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a run under this one
# The start-of-step check: a refused or unreachable server is reported in seconds, not after MLflow's 7 retries.
CHECK_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
AUTH_ADVICE = (
    "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN), or on a cluster give "
    "--mlflow-secret NAME"
)


def mlflow_client(uri: str) -> Any:
    """The one place yolokf makes MLflow's client; credentials and TLS from MLflow's environment variables."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def tracking_errors(uri: str, action: str) -> Iterator[None]:
    """MLflow's and the network's exceptions as one TrackingError line that says what to do."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(describe(uri, action, exc)) from exc


def describe(uri: str, action: str, exc: BaseException) -> str:
    status = getattr(exc, "get_http_status_code", lambda: None)()
    text = str(exc)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)[:200]
    if status in (401, 403) or " 401" in text or " 403" in text:
        return f"MLflow at {uri} refused the credentials ({action}): {AUTH_ADVICE}."
    if any(word in text for word in ("Connection refused", "Max retries exceeded", "Failed to resolve", "timed out")):
        return f"MLflow at {uri} cannot be reached ({action}): check --mlflow (MLFLOW_TRACKING_URI) and the network."
    return f"MLflow at {uri}: {action} failed: {first}"


@contextlib.contextmanager
def _few_retries() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in CHECK_ENV}
    for name, value in CHECK_ENV.items():
        os.environ.setdefault(name, value)  # a value the user set wins
    try:
        yield
    finally:
        for name, before in saved.items():
            if before is None:
                os.environ.pop(name, None)


def check_server(uri: str) -> None:
    """Fail in one line now when the server at `uri` does not answer or refuses the credentials."""
    with _few_retries(), tracking_errors(uri, "listing experiments"):
        mlflow_client(uri).search_experiments(max_results=1)


def epoch_metrics(values: dict[str, Any]) -> dict[str, float]:
    """One epoch's values (a results.csv row, or the trainer's losses, metrics and learning rates) as MLflow metrics:
    the losses and learning rates under ultralytics' names (train/box_loss, lr/pg0), the metrics under readable ones
    (mAP50, mask_mAP50-95), so the live curves and the ones caught up from results.csv are the same series."""
    metrics: dict[str, float] = {}
    for key, value in values.items():
        key = key.strip()
        if key.startswith(("train/", "val/", "lr/")) and _number(value) is not None:
            metrics[key.replace("(", "").replace(")", "")] = float(value)
    metrics.update(readable_metrics({k.strip(): v for k, v in values.items() if k.strip().startswith("metrics/")}))
    return metrics


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass
class StepRun:
    """The MLflow run a step logs into. Logging calls warn once and go on when the server fails mid-step."""

    client: Any
    uri: str
    run_id: str
    experiment_id: str
    own: bool  # created or found by yolokf (it sets the run's status); False: injected by KFP's plugin
    parent_id: str = ""  # a sweep trial's: the KFP run's own run, which the trial's is nested under
    warned: bool = False
    logged_steps: set[int] = field(default_factory=set)

    @property
    def link(self) -> str:
        return run_link(self.uri, self.experiment_id, self.run_id)

    @property
    def top_link(self) -> str:
        """The link to show at the end of the run: a sweep's own run rather than one trial's."""
        return run_link(self.uri, self.experiment_id, self.parent_id or self.run_id)

    def safely(self, what: str, call: Callable[[], Any]) -> bool:
        """`call()`; a failure warns once (one line) and is otherwise ignored."""
        try:
            call()
        except Exception as exc:
            if not self.warned:
                self.warned = True
                print(f"yolokf: warning: {describe(self.uri, what, exc)}; going on without it.", flush=True)
            return False
        return True

    def log_metrics(self, metrics: dict[str, float], step: int = 0, what: str = "logging metrics") -> bool:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items() if _number(value) is not None]
        return bool(batch) and self.safely(what, lambda: self.client.log_batch(self.run_id, metrics=batch))

    def log_params(self, params: dict[str, Any]) -> None:
        """Parameters not logged yet (MLflow refuses to change one: a retried step logs the same ones again)."""
        from mlflow.entities import Param

        def log() -> None:
            known = self.client.get_run(self.run_id).data.params
            new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in known]
            for start in range(0, len(new), 100):  # MLflow takes at most 100 parameters a request
                self.client.log_batch(self.run_id, params=new[start : start + 100])

        self.safely("logging parameters", log)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)[:8000]) for k, v in tags.items()]
        self.safely("setting tags", lambda: self.client.log_batch(self.run_id, tags=batch))

    def log_artifact(self, path: Path, artifact_path: str) -> None:
        path = Path(path)
        if path.is_dir():
            self.safely("uploading artifacts", lambda: self.client.log_artifacts(self.run_id, str(path), artifact_path))
        elif path.is_file():
            self.safely("uploading artifacts", lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_dict(self, values: Any, artifact_file: str) -> None:
        self.safely("uploading artifacts", lambda: self.client.log_dict(self.run_id, values, artifact_file))

    def log_text(self, text: str, artifact_file: str) -> None:
        self.safely("uploading artifacts", lambda: self.client.log_text(self.run_id, text, artifact_file))

    def on_epoch(self, epoch: int, values: dict[str, Any]) -> None:
        """A training epoch's losses, metrics and learning rates at step `epoch` (1 = the first), live."""
        if epoch in self.logged_steps or self.warned:  # after a failure, no live call slows the training
            return
        if self.log_metrics(epoch_metrics(values), epoch, "logging an epoch's metrics"):
            self.logged_steps.add(epoch)

    def log_epochs(self, rows: list[dict[str, str]]) -> None:
        """results.csv's epochs that no live call logged (multi-GPU DDP and `--nodes` train in other processes; a
        resumed training's earlier epochs): each once, at its epoch, so a retried step adds no second point."""

        def catch_up() -> None:
            metrics = [epoch_metrics(row) for row in rows]
            if not metrics or not metrics[0]:
                return
            key = next(iter(metrics[0]))
            done = self.logged_steps | {m.step for m in self.client.get_metric_history(self.run_id, key)}
            for row, values in zip(rows, metrics, strict=True):
                epoch = int(float(row.get("epoch") or 0))
                if epoch and epoch not in done:
                    self.log_metrics(values, epoch)
                    self.logged_steps.add(epoch)

        self.safely("logging the epochs", catch_up)

    def finish(self, failed: bool = False) -> None:
        """Set the run's status when yolokf owns it (the plugin ends the runs it injected)."""
        if self.own:
            status = "FAILED" if failed else "FINISHED"
            self.safely("ending the run", lambda: self.client.set_terminated(self.run_id, status))


def open_run(mlflow: dict[str, Any], kfp_run: str, *, name: str, trial: str = "") -> StepRun | None:
    """The step's MLflow run (see the module docstring), checked with the server before any work; None when neither
    KFP's plugin nor `--mlflow` asks for one. `trial`: a sweep trial's name (its own run, nested)."""
    injected = os.environ.get("MLFLOW_RUN_ID", "").strip()
    uri = (os.environ.get("MLFLOW_TRACKING_URI", "").strip() if injected else "") or mlflow.get("uri") or ""
    if not uri:
        return None
    client = mlflow_client(uri)
    with _few_retries():
        if injected:
            with tracking_errors(uri, f"opening the injected run {injected}"):
                run = client.get_run(injected)
            step_run = StepRun(client, uri, injected, run.info.experiment_id, own=False)
            if trial:
                step_run.set_tags({TRIAL_TAG: trial})
            return step_run
        experiment_name = mlflow.get("experiment") or DEFAULT_EXPERIMENT
        with tracking_errors(uri, f"opening experiment {experiment_name!r}"):
            experiment_id = _experiment(client, experiment_name)
        tags = {KFP_RUN_TAG: kfp_run or "local", ROLE_TAG: "pipeline"}
        if mlflow.get("kfp_ui") and kfp_run:
            tags[KFP_URL_TAG] = f"{mlflow['kfp_ui'].rstrip('/')}/#/runs/details/{kfp_run}"
        with tracking_errors(uri, "opening the run"):
            parent = _find_or_create(client, experiment_id, tags, name)
            run_id, parent_id = parent, ""
            if trial:
                parent_id = parent
                nested = {**tags, ROLE_TAG: "trial", TRIAL_TAG: trial, PARENT_TAG: parent}
                run_id = _find_or_create(client, experiment_id, nested, trial)
            client.update_run(run_id, status="RUNNING")
    return StepRun(client, uri, run_id, experiment_id, own=True, parent_id=parent_id)


def _experiment(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise TrackingError(
                f"MLflow experiment {name!r} is deleted: restore it, or give another --mlflow-experiment."
            )
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except Exception:  # another step created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def _find_or_create(client: Any, experiment_id: str, tags: dict[str, str], name: str) -> str:
    """The run with `tags`, created when missing. Parallel trials may create the same parent at once: each then keeps
    the earliest (start time, then id) and deletes its own, so all of them log into one."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items() if k != KFP_URL_TAG)

    def found() -> list[Any]:
        runs = client.search_runs([experiment_id], query, max_results=50, order_by=["attributes.start_time ASC"])
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    existing = found()
    if existing:
        return str(existing[0].info.run_id)
    mine = client.create_run(experiment_id, tags=tags, run_name=name).info.run_id
    first = found()[0].info.run_id
    if first != mine:
        client.delete_run(mine)
    return str(first)
