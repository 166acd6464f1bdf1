"""Submit a job to a Kubeflow Pipelines cluster: compile it, find or create the experiment, register, create the run.

The run's arguments are the job's pipeline parameters (`job.arguments()`), the same values the compiled
pipeline holds as defaults.
"""

from __future__ import annotations

import datetime
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from yolokf.core.errors import ClusterError
from yolokf.pipeline.job import Job
from yolokf.runs.kfp_api import Cluster, normalize_host

DEFAULT_EXPERIMENT = "yolokf"


@dataclass(frozen=True)
class Submission:
    """How to submit: names, where outputs go, and caching."""

    experiment: str = DEFAULT_EXPERIMENT
    run_name: str | None = None
    pipeline_root: str | None = None
    service_account: str | None = None
    cache: bool | None = None  # False: off for every task; True or None: as compiled (on, but the download step)
    upload: bool = False
    description: str | None = None


@dataclass
class Submitted:
    run_id: str
    run_name: str
    url: str
    experiment: str
    created_experiment: bool = False
    version_id: str | None = None
    version_name: str | None = None
    pipeline: str = ""
    mlflow: str = ""  # what became of --mlflow-experiment (KFP's MLflow plugin), one line

    def summary(self) -> list[str]:
        """What `yolokf run --host` prints after submitting."""
        created = " (created)" if self.created_experiment else ""
        lines = [f"Submitted run {self.run_name} to experiment {self.experiment}{created}"]
        if self.version_id:
            lines.append(f"Pipeline: {self.pipeline}, version {self.version_name} ({self.version_id})")
        lines += [f"MLflow: {self.mlflow}"] if self.mlflow else []
        return lines + [f"Run id: {self.run_id}", f"Details: {self.url}"]


def describe_submission(
    host: str, namespace: str | None, job: Job, options: Submission
) -> tuple[list[str], dict[str, Any]]:
    """What `run --host --dry-run` prints: its titles ("Would submit ...") and fields. Compiles the pipeline,
    contacts nothing."""
    host = normalize_host(host)
    with tempfile.TemporaryDirectory(prefix="yolokf-dry-run-") as tmp:
        write_package(job, options.cache, Path(tmp))
    where = f"{host} (namespace {namespace})" if namespace else host
    cache = "off, for every task" if options.cache is False else "on, but the download step reads its data every run"
    titles = [f"Would submit run {options.run_name or default_run_name(job)} to {where}"]
    if options.upload:
        titles.append(f"Would register pipeline {job.pipeline_name}, or a new version of it when it exists")
    return titles, {
        "experiment": f"{options.experiment} (created when missing)",
        "image": job.step.image,
        "parameters": job.arguments(),
        "pipeline root": options.pipeline_root or "the cluster default",
        "service account": options.service_account or "the cluster default",
        "caching": cache,
    }


def default_run_name(job: Job, now: datetime.datetime | None = None) -> str:
    """`yolov8n-coco128-20240131-142501`: model and dataset stems and the local time."""
    now = now or datetime.datetime.now()
    return f"{job.stem}-{now:%Y%m%d-%H%M%S}"


def disable_caching(spec: dict[str, Any]) -> int:
    """`--no-cache`: caching off on every task of a compiled PipelineSpec dict, sub-DAGs included; returns how many.

    `--cache` changes nothing: the tasks are compiled with caching on, but for those that must run every time,
    such as the download step, whose input (a URI) stays the same when the data under it changes
    (yolokf.pipeline.step_options.apply_fetch_options). kfp.Client's submit-time switch (`enable_caching`, kfp 2.17
    `_override_caching_options`) would turn those on too, and reaches no task inside a condition, loop or exit
    handler, so yolokf never passes it.
    """
    dags = [spec.get("root", {}).get("dag", {})]
    dags += [c["dag"] for c in spec.get("components", {}).values() if isinstance(c, dict) and "dag" in c]
    count = 0
    for dag in dags:
        for task in dag.get("tasks", {}).values():
            task.setdefault("cachingOptions", {})["enableCache"] = False
            count += 1
    return count


def write_package(job: Job, cache: bool | None, folder: Path) -> Path:
    """Compile the pipeline (the same one `yolokf compile` writes) with the caching choice applied (`--no-cache`:
    `disable_caching`; `--cache` is the compiled pipeline's own choice)."""
    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.pipeline.pipelines import compile_pipeline

    path = compile_pipeline(job, folder / "pipeline.yaml")
    if cache is False:
        docs = list(yaml.safe_load_all(path.read_text()))
        disable_caching(docs[0])
        path.write_text(yaml.safe_dump_all(docs, sort_keys=True))
    return path


def submit(cluster: Cluster, job: Job, options: Submission) -> Submitted:
    """Compile, find or create the experiment, optionally register the pipeline, and create the run.

    When a later step fails, the error says what the earlier steps left on the cluster.
    """
    run_name = options.run_name or default_run_name(job)
    done: list[str] = []
    with tempfile.TemporaryDirectory(prefix="yolokf-submit-") as tmp:
        package = write_package(job, options.cache, Path(tmp))
        try:
            experiment, created = _experiment(cluster, options.experiment)
            if created:
                done.append(f"created experiment {options.experiment!r}")
            pipeline_id = version_id = version_name = None
            if options.upload:
                pipeline_id, version_id, version_name, new_pipeline = _register(
                    cluster, package, job.pipeline_name, run_name, options.description
                )
                done.append(
                    f"registered pipeline {job.pipeline_name!r}"
                    if new_pipeline
                    else f"registered version {version_name!r} of pipeline {job.pipeline_name!r}"
                )
            run = _create_run(
                cluster,
                experiment.experiment_id,
                run_name,
                package,
                job.arguments(),
                options,
                pipeline_id,
                version_id,
                _mlflow_plugin_input(job),
            )
        except ClusterError as exc:
            if done:
                raise ClusterError(
                    f"{exc} No run was created; yolokf had already {', and '.join(done)}, which stay on the "
                    "cluster (rerunning reuses them)."
                ) from None
            raise
    return Submitted(
        run_id=run.run_id,
        run_name=run_name,
        url=cluster.run_url(run.run_id),
        experiment=options.experiment,
        created_experiment=created,
        version_id=version_id,
        version_name=version_name,
        pipeline=job.pipeline_name,
        mlflow=_mlflow_line(job, run),
    )


def _mlflow_plugin_input(job: Job) -> dict[str, Any] | None:
    """`plugins_input` of the run: KFP 2.17's MLflow plugin (KEP-12862) takes the run's experiment there, and only
    there (the kfp SDK does not expose it); sent when `--mlflow-experiment` is given."""
    if not job.tracking.experiment:
        return None
    return {"mlflow": {"experiment_name": job.tracking.experiment}}


def _mlflow_line(job: Job, run: Any) -> str:
    """What became of MLflow for this run, from the plugin's answer (`plugins_output`) and --mlflow."""
    own = f"the steps log to {job.tracking.uri} themselves" if job.tracking.active else ""
    if not job.tracking.experiment:
        return f"{own} (experiment {job.tracking.experiment_name})" if own else ""
    experiment = job.tracking.experiment
    if "mlflow" in (getattr(run, "plugins_output", None) or {}):
        return f"KFP's MLflow plugin logs this run in experiment {experiment}; the steps log into its runs."
    if own:
        return f"the server has no MLflow plugin (plugins_input ignored): {own}, experiment {experiment}."
    return f"the server has no MLflow plugin and no --mlflow is given: nothing is logged to experiment {experiment}."


def _experiment(cluster: Cluster, name: str) -> tuple[Any, bool]:
    client = cluster.client

    def find() -> Any:
        try:
            return client.get_experiment(experiment_name=name, namespace=cluster.namespace)
        except ValueError as exc:
            if str(exc).startswith("No experiment is found"):
                return None
            raise

    experiment = cluster.call(f"Looking up experiment {name!r}", find)
    if experiment is not None:
        return experiment, False
    experiment = cluster.call(
        f"Creating experiment {name!r}",
        client.create_experiment,
        name=name,
        namespace=cluster.namespace,
        _recover=find,
    )
    return experiment, True


def _name_filter(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def _register(
    cluster: Cluster, package: Path, name: str, version_name: str, description: str | None
) -> tuple[str, str, str, bool]:
    """Upload the pipeline, or a new version of it when it exists. Returns ids, version name, new?"""
    client = cluster.client
    namespace = cluster.namespace if cluster.multi_user else None

    def find_pipeline() -> Any:
        found = client.list_pipelines(filter=_name_filter(name), namespace=namespace, page_size=2)
        return found.pipelines[0] if found.pipelines else None

    def find_version(pipeline_id: str, version: str) -> Any:
        found = client.list_pipeline_versions(pipeline_id, filter=_name_filter(version), page_size=2)
        return found.pipeline_versions[0] if found.pipeline_versions else None

    pipeline = cluster.call(f"Looking up pipeline {name!r}", find_pipeline)
    if pipeline is None:
        pipeline = cluster.call(
            f"Registering pipeline {name!r}",
            client.upload_pipeline,
            str(package),
            pipeline_name=name,
            description=description,
            namespace=namespace,
            _recover=find_pipeline,
        )
        pipeline_id = pipeline.pipeline_id
        versions = cluster.call(
            f"Reading the versions of pipeline {name!r}", client.list_pipeline_versions, pipeline_id, page_size=1
        )
        if not versions.pipeline_versions:
            raise ClusterError(f"Registering pipeline {name!r} failed: the server made no version for it.")
        version = versions.pipeline_versions[0]
        return pipeline_id, version.pipeline_version_id, version.display_name or version.name or name, True
    pipeline_id = pipeline.pipeline_id
    version = cluster.call(
        f"Registering version {version_name!r} of pipeline {name!r}",
        client.upload_pipeline_version,
        str(package),
        pipeline_version_name=version_name,
        pipeline_id=pipeline_id,
        description=description,
        _recover=lambda: find_version(pipeline_id, version_name),
    )
    return pipeline_id, version.pipeline_version_id, version_name, False


def _run_with_plugins(client: Any, plugins: dict[str, Any], **kwargs: Any) -> Any:
    """`client.run_pipeline(**kwargs)` with `plugins_input`: the body kfp.Client sends (its own job config), through
    the client's own RunServiceApi (kfp-server-api 2.17's V2beta1Run has `plugins_input`; run_pipeline has no way)."""
    import kfp_server_api

    config = client._create_job_config(
        params=kwargs["params"],
        pipeline_package_path=kwargs.get("pipeline_package_path"),
        pipeline_id=kwargs.get("pipeline_id"),
        version_id=kwargs.get("version_id"),
        enable_caching=None,
        cache_key=None,
        pipeline_root=kwargs["pipeline_root"],
    )
    body = kfp_server_api.V2beta1Run(
        experiment_id=kwargs["experiment_id"],
        display_name=kwargs["job_name"],
        pipeline_spec=config.pipeline_spec,
        pipeline_version_reference=config.pipeline_version_reference,
        runtime_config=config.runtime_config,
        service_account=kwargs["service_account"],
        plugins_input=plugins,
    )
    return client._run_api.run_service_create_run(run=body)


def _create_run(
    cluster: Cluster,
    experiment_id: str,
    run_name: str,
    package: Path,
    params: dict[str, Any],
    options: Submission,
    pipeline_id: str | None,
    version_id: str | None,
    plugins: dict[str, Any] | None = None,
) -> Any:
    client = cluster.client

    def runs_named() -> list[Any]:
        found = client.list_runs(
            experiment_id=experiment_id, filter=_name_filter(run_name), sort_by="created_at desc", page_size=50
        )
        return list(found.runs or [])

    # A create whose answer is lost may still have reached the server: before sending it again, look for a
    # run with this name that was not there before (names may repeat, e.g. a nightly --run-name).
    existing = {run.run_id for run in cluster.call(f"Looking up runs named {run_name!r}", runs_named)}

    def find_run() -> Any:
        return next((run for run in runs_named() if run.run_id not in existing), None)

    source: dict[str, Any] = (
        {"pipeline_id": pipeline_id, "version_id": version_id}
        if version_id
        else {"pipeline_package_path": str(package)}
    )
    if plugins:
        return cluster.call(
            f"Creating run {run_name!r}",
            _run_with_plugins,
            client,
            plugins,
            experiment_id=experiment_id,
            job_name=run_name,
            params=params,
            pipeline_root=options.pipeline_root or None,
            service_account=options.service_account or None,
            _recover=find_run,
            **source,
        )
    return cluster.call(
        f"Creating run {run_name!r}",
        client.run_pipeline,
        experiment_id=experiment_id,
        job_name=run_name,
        params=params,
        pipeline_root=options.pipeline_root or None,
        service_account=options.service_account or None,
        _recover=find_run,
        **source,
    )
