"""Runs: create (the spec inline or a pipeline version's, parameters checked as the API server checks them), get,
list and terminate; each get_run moves a run on as its `Outcome` says and lists its tasks as Argo nodes."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.loopback.kfp.argo import ArgoNodes, fnv1a32, in_dependency_order
from tests.loopback.kfp.experiments import ExperimentsApi
from tests.loopback.kfp.outcomes import FINAL_STATES, Poll
from tests.loopback.kfp.pipelines import check_pipeline_spec
from tests.loopback.kfp.protojson import EPOCH, ApiError, emit
from tests.loopback.kfp.state import PodLog, Run, StepSpec, Task, get


def _named(values: dict[str, Any], step: StepSpec) -> Any:
    """A Poll's entry for `step`: by its label ("trial#1"), else by its name ("trial", every iteration)."""
    return values.get(step.label, values.get(step.name))


_PARAMETER_KINDS = {
    "NUMBER_DOUBLE": ((int, float), "double or integer", "number"),
    "NUMBER_INTEGER": ((int, float), "double or integer", "number"),
    "STRING": ((str,), "string", "string"),
    "BOOLEAN": ((bool,), "bool", "bool"),
    "LIST": ((list,), "list", "list"),
    "STRUCT": ((dict,), "struct", "struct"),
}


def _check_run_parameters(spec: dict[str, Any], parameters: dict[str, Any]) -> None:
    """template/v2_template.go validatePipelineJobInputs (2.17.0, lines 442-530), wrapped as CreateRun wraps it:
    a parameter the root does not define, one of the wrong type, or a required one missing is a 400."""
    defined = ((spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {}

    def invalid(message: str) -> ApiError:
        return ApiError(
            400,
            "Failed to create a new run: Failed to generate the ExecutionSpec: invalid pipeline job inputs: "
            f"Invalid input error: {message}",
            message,
        )

    for name, definition in sorted(defined.items()):
        if name not in parameters:
            if not definition.get("isOptional") and "defaultValue" not in definition:
                raise invalid(
                    f"parameter {name} is not optional, yet has neither default value nor user provided value"
                )
            continue
        kind = definition.get("parameterType", "PARAMETER_TYPE_ENUM_UNSPECIFIED")
        if kind not in _PARAMETER_KINDS:
            raise invalid(f"input parameter {name} has unspecified type")
        types, wanted, value_type = _PARAMETER_KINDS[kind]
        value = parameters[name]
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            the = "parameter value" if value_type == "number" else "input parameter"
            raise invalid(
                f"input parameter {name} requires type {wanted}, but the {the} is not of {value_type} value type"
            )
    extra = [name for name in parameters if name not in defined]
    if extra:
        raise invalid(f"parameter(s) provided are not required by pipeline: {', '.join(extra)}")


def _pipeline_steps(spec: dict[str, Any], parameters: dict[str, Any]) -> list[StepSpec]:
    """Every container task the pipeline runs, loop iterations apart, with its executor's Argo template."""
    platform = spec.get("platform_spec") or {}
    executors = ((platform.get("platforms") or {}).get("kubernetes") or {}).get("deploymentSpec", {})
    executors = executors.get("executors") or {}
    spec = spec.get("pipeline_spec", spec)
    components = spec["components"]
    root_inputs = (spec["root"].get("inputDefinitions") or {}).get("parameters") or {}
    steps: list[StepSpec] = []

    def count(iterator: dict[str, Any]) -> int:
        items = iterator.get("items") or {}
        if "raw" in items:
            return len(json.loads(items["raw"]))
        name = (items.get("inputParameter") or "").removeprefix("pipelinechannel--")
        value = parameters.get(name, (root_inputs.get(name) or {}).get("defaultValue"))
        return len(value) if isinstance(value, list) else 1

    def walk(dag: dict[str, Any], dags: tuple[tuple[str, int | None], ...], trial: int | None) -> None:
        for key in in_dependency_order(dag["tasks"]):
            task = dag["tasks"][key]
            component = components[task["componentRef"]["name"]]
            if "dag" in component:
                iterator = task.get("parameterIterator")
                for i in range(count(iterator)) if iterator else [None]:
                    walk(component["dag"], (*dags, (key, i)), i if i is not None else trial)
                continue
            template = ("retry-" if task.get("retryPolicy") else "") + "system-container-impl"
            metadata = (executors.get(component.get("executorLabel", "")) or {}).get("podMetadata")
            if metadata is not None:
                annotations, labels = metadata.get("annotations") or {}, metadata.get("labels") or {}
                template = f"metadata-{len(annotations)}-{len(labels)}-{template}"
            steps.append(StepSpec(key, (task.get("taskInfo") or {}).get("name", key), trial, dags, template))

    walk(spec["root"]["dag"], (), None)
    return steps


def run_json(run: dict[str, Any]) -> dict[str, Any]:
    """server/api_converter.go toApiRun."""
    out = emit({**run, "finished_at": run.get("finished_at") or EPOCH})
    runtime_config = emit(run.get("runtime_config") or {})
    if runtime_config:
        out["runtime_config"] = runtime_config
    else:
        out.pop("runtime_config", None)
    if "state_history" in out:
        out["state_history"] = [emit(h) for h in out["state_history"]]
    return out


class RunsApi(ExperimentsApi):
    def _create_run(self, body: dict[str, Any]) -> dict[str, Any]:
        if not body.get("display_name"):
            raise ApiError(400, "Invalid input error: The run name is empty")
        reference = body.get("pipeline_version_reference") or {}
        if body.get("pipeline_spec") is not None:
            spec = body["pipeline_spec"]
            check_pipeline_spec(spec)
        elif reference.get("pipeline_version_id"):
            version = get(self.versions, reference["pipeline_version_id"], "PipelineVersion")
            spec = version["pipeline_spec"]
        else:
            raise ApiError(400, "Invalid input error: A run must have a pipeline spec or a pipeline version")
        if self.reject_runs:
            raise ApiError(400, self.reject_runs)
        spec_inner = spec.get("pipeline_spec", spec)
        parameters = (body.get("runtime_config") or {}).get("parameters") or {}
        _check_run_parameters(spec_inner, parameters)
        steps = {step.label: step for step in _pipeline_steps(spec, parameters)}
        tasks = list(steps)
        named = {t for p in self.outcome.schedule or [] for t in [*(p.tasks or {}), *p.logs, *p.gone]}
        unknown = sorted(named - set(tasks) - {step.name for step in steps.values()})
        if unknown:  # a mistake in the test, said where the test sees it
            raise ApiError(500, f"loopback server: the outcome names tasks {unknown}; the pipeline has {tasks}")
        experiment_id = body.get("experiment_id")
        if experiment_id:
            experiment = get(self.experiments, experiment_id, "Experiment")
        elif self.multi_user:
            raise ApiError(400, "Invalid input error: In multi-user mode, a run must belong to an experiment")
        else:
            experiment = next(iter(self.experiments.values()), None) or self._create_experiment(
                {"display_name": "Default"}
            )
        self._namespace(experiment["namespace"] or None, required=self.multi_user)
        now = self._now()
        run = {
            "experiment_id": experiment["experiment_id"],
            "run_id": self._new_id(),
            "display_name": body["display_name"],
            "storage_state": "AVAILABLE",
            "description": body.get("description") or "",
            "runtime_config": body.get("runtime_config") or {},
            "service_account": body.get("service_account") or "pipeline-runner",
            "created_at": now,
            "scheduled_at": now,
            "state": "PENDING",
            "state_history": [{"update_time": now, "state": "PENDING"}],
        }
        if body.get("pipeline_spec") is not None:
            run["pipeline_spec"] = body["pipeline_spec"]
        if reference:
            run["pipeline_version_reference"] = reference
        workflow = re.sub(r"[^a-z0-9-]+", "-", spec_inner["pipelineInfo"]["name"].lower()).strip("-")
        workflow += "-" + format(fnv1a32(run["run_id"]), "x")[:5]  # generateName: the pipeline's name, a suffix
        self.runs[run["run_id"]] = Run(run, self.outcome, steps=steps, workflow=workflow, spec=spec_inner)
        run["_tasks"] = tasks
        experiment["last_run_created_at"] = run["created_at"]
        return run_json(run)

    def _list_runs(self, query: dict[str, str]) -> dict[str, Any]:
        options = self._list_options("runs", query)
        runs = [r.data for r in self.runs.values()]
        if query.get("experiment_id"):
            runs = [r for r in runs if r["experiment_id"] == query["experiment_id"]]
        elif self.multi_user:
            namespace = self._namespace(query.get("namespace"))
            runs = [r for r in runs if self.experiments[r["experiment_id"]]["namespace"] == namespace]
        return self._page("runs", runs, options, run_json)

    def _get_run(self, run_id: str) -> dict[str, Any]:
        if run_id not in self.runs:
            raise ApiError(404, f"Run {run_id} not found")
        run = self.runs[run_id]
        self._advance(run)
        return run_json(run.data)

    def _advance(self, run: Run) -> None:
        data, outcome = run.data, run.outcome
        if data["state"] in FINAL_STATES:
            return
        run.polls += 1
        if run.terminate_polls is not None:
            # A terminated workflow's deadline is 0: while it is not over, the persistence agent reports the run
            # CANCELING; once Argo has stopped it, the run is what the workflow ended as, Failed
            # (resource/resource_manager.go 1537-1540, TerminateWorkflow 1023-1024). Its pods are killed: the
            # tasks that had not ended fail with it.
            state = "CANCELING" if run.polls - run.terminate_polls < 2 else "FAILED"
            tasks = {
                n: t.state if t.state in FINAL_STATES or state == "CANCELING" else "FAILED"
                for n, t in run.tasks.items()
            }
            poll = Poll(state, tasks)
        else:
            poll = outcome.poll(run.polls)
        state, now = poll.state, self._now()
        if data["state_history"][-1]["state"] != state:  # storage/run_store.go UpdateRun 618-623
            data["state_history"].append({"update_time": now, "state": state})
        data["state"] = state
        error = {"code": 2, "message": outcome.error} if outcome.error else None
        if state == "FAILED" and error:
            data["error"] = error
        if state in FINAL_STATES:
            data["finished_at"] = now
        if poll.tasks is None:
            states = dict.fromkeys(data["_tasks"], "CANCELED" if state == "CANCELING" else state)
        else:
            states = {n: s for n in data["_tasks"] if (s := _named(poll.tasks, run.steps[n])) is not None}
        for label, step in run.steps.items():
            log = run.logs.setdefault(label, PodLog())
            log.text += _named(poll.logs, step) or ""
            if self.log_max_bytes and len(log.text) - log.rotated > self.log_max_bytes:
                log.rotated = len(log.text)  # the kubelet renamed the full file; new lines go to a new one
            log.gone = log.gone or step.label in poll.gone or step.name in poll.gone
        for name, task_state in states.items():
            task = run.tasks.setdefault(name, Task(data["_tasks"].index(name), "", now))
            if task_state != task.state:
                task.history.append({"update_time": now, "state": task_state})
            task.state = task_state
            if task_state not in ("PENDING", "RUNTIME_STATE_UNSPECIFIED") and not task.started:
                task.started = now
            if task_state in FINAL_STATES and not task.ended:
                task.ended = now
        data["run_details"] = {
            "pipeline_context_id": "1",
            "pipeline_run_context_id": "2",
            "task_details": self._task_details(run, error),
        }

    def _task_details(self, run: Run, error: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The run's task details as 2.17 lists them: one per Argo node (common/util/workflow.go NodeStatuses,
        server/api_converter.go toApiPipelineTaskDetail): display name, state, times and children's node IDs;
        no pod name, no parent. Every task is wrapped in a retry node, as on a default install."""
        return ArgoNodes(run, error).details()

    def _terminate(self, run_id: str) -> dict[str, Any]:
        run = self.runs.get(run_id)
        if run is None:
            raise ApiError(404, f"Run {run_id} not found")
        if run.data["state"] not in ("PAUSED", "PENDING", "RUNNING", "RUNTIME_STATE_UNSPECIFIED"):
            # storage/run_store.go TerminateRun 823-844: only a run in one of those states is updated; a run that
            # ended, or is CANCELING from an earlier terminate, is not found by the UPDATE.
            cause = f"Failed to terminate a run {run_id}. Row not found"
            raise ApiError(
                400, f"Failed to terminate a run: Failed to terminate run {run_id}: Invalid input error: {cause}", cause
            )
        run.data["state"] = "CANCELING"  # the UPDATE sets it; the history gets it from the next report (line 824)
        run.terminate_polls = run.polls
        return {}
