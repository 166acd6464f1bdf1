"""Pipelines and their versions: upload and upload_version (a multipart YAML file), each spec parsed into
kfp-pipeline-spec's `PipelineSpec` proto and checked as the API server checks it."""

from __future__ import annotations

import email.parser
import email.policy
from typing import Any

import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from tests.loopback.kfp.listing import Listing
from tests.loopback.kfp.protojson import ApiError, emit
from tests.loopback.kfp.state import get


def check_pipeline_spec(doc: Any) -> pipeline_spec_pb2.PipelineSpec:
    """Parse and check a pipeline spec the way the API server does; raise ApiError(400) if invalid."""
    if isinstance(doc, dict) and "pipeline_spec" in doc:  # {pipeline_spec, platform_spec} from kfp.Client
        platform = doc.get("platform_spec") or {}
        try:
            json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
        except json_format.ParseError as exc:
            raise ApiError(400, f"Invalid input error: invalid platform spec: {exc}") from None
        doc = doc["pipeline_spec"]
    if not isinstance(doc, dict):
        raise ApiError(400, "Invalid input error: the pipeline spec is not a YAML/JSON object")
    spec = pipeline_spec_pb2.PipelineSpec()
    try:
        json_format.ParseDict(doc, spec)
    except json_format.ParseError as exc:
        raise ApiError(400, f"Invalid input error: invalid pipeline spec: {exc}") from None
    problems = []
    if not spec.schema_version:
        problems.append("schemaVersion is missing")
    if not spec.pipeline_info.name:
        problems.append("pipelineInfo.name is missing")
    if not spec.root.HasField("dag"):
        problems.append("root.dag is missing")
    executors = set(spec.deployment_spec.fields["executors"].struct_value.fields)
    for name, component in spec.components.items():
        if component.HasField("executor_label") and component.executor_label not in executors:
            problems.append(f"component {name} names executor {component.executor_label}, which is not defined")
    dags = [spec.root.dag] + [c.dag for c in spec.components.values() if c.HasField("dag")]
    for dag in dags:
        for task_name, task in dag.tasks.items():
            if task.component_ref.name not in spec.components:
                problems.append(f"task {task_name} refers to undefined component {task.component_ref.name}")
    if problems:
        raise ApiError(400, "Invalid input error: invalid pipeline spec: " + "; ".join(problems))
    return spec


class PipelinesApi(Listing):
    def _list_pipelines(self, query: dict[str, str]) -> dict[str, Any]:
        options = self._list_options("pipelines", query)
        items = list(self.pipelines.values())
        if self.multi_user and query.get("namespace"):
            items = [p for p in items if p["namespace"] in ("", query["namespace"])]
        return self._page("pipelines", items, options, emit)

    def _get_pipeline(self, pipeline_id: str) -> dict[str, Any]:
        return emit(get(self.pipelines, pipeline_id, "Pipeline"))

    def _list_versions(self, pipeline_id: str, query: dict[str, str]) -> dict[str, Any]:
        options = self._list_options("pipeline_versions", query)
        get(self.pipelines, pipeline_id, "Pipeline")
        items = [v for v in self.versions.values() if v["pipeline_id"] == pipeline_id]
        return self._page("pipeline_versions", items, options, emit)

    def _get_version(self, pipeline_id: str, version_id: str) -> dict[str, Any]:
        version = get(self.versions, version_id, "PipelineVersion")
        if version["pipeline_id"] != pipeline_id:
            raise ApiError(404, f"PipelineVersion {version_id} not found")
        return emit(version)

    def _read_upload(self, body: bytes, ctype: str) -> dict[str, Any]:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {ctype}\r\n\r\n".encode() + body
        )
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == "uploadfile":
                docs = list(yaml.safe_load_all(part.get_content()))
                if not docs or docs[0] is None:
                    raise ApiError(400, "Invalid input error: the uploaded file is empty")
                check_pipeline_spec(docs[0])
                if len(docs) > 1:
                    check_pipeline_spec({"pipeline_spec": docs[0], "platform_spec": docs[1]})
                return docs[0]
        raise ApiError(400, "Invalid input error: Failed to read pipeline from file: no 'uploadfile' part")

    def _upload(self, query: dict[str, str], body: bytes, ctype: str) -> dict[str, Any]:
        spec = self._read_upload(body, ctype)
        name = query.get("name") or query.get("display_name") or spec["pipelineInfo"]["name"]
        namespace = self._namespace(query.get("namespace"), required=False)
        if any(p["name"] == name and p["namespace"] == namespace for p in self.pipelines.values()):
            raise ApiError(
                409,
                "Failed to create a pipeline and a pipeline version: Already exist error: Failed to create a "
                f"new pipeline. The name {name} already exists. Please specify a new name",
            )
        pipeline = {
            "pipeline_id": self._new_id(),
            "name": name,
            "display_name": query.get("display_name") or name,
            "description": query.get("description") or "",
            "created_at": self._now(),
            "namespace": namespace,
        }
        self.pipelines[pipeline["pipeline_id"]] = pipeline
        self._add_version(pipeline["pipeline_id"], name, spec, query.get("description") or "")
        return pipeline

    def _upload_version(self, query: dict[str, str], body: bytes, ctype: str) -> dict[str, Any]:
        spec = self._read_upload(body, ctype)
        pipeline_id = query.get("pipelineid")
        if not pipeline_id:
            raise ApiError(400, "Invalid input error: Pipeline id is empty")
        get(self.pipelines, pipeline_id, "Pipeline")
        name = query.get("name") or query.get("display_name")
        if not name:
            raise ApiError(400, "Invalid input error: Pipeline version name is empty")
        if any(v["pipeline_id"] == pipeline_id and v["name"] == name for v in self.versions.values()):
            raise ApiError(409, f"Already exist error: Pipeline version {name} already exists")
        return self._add_version(pipeline_id, name, spec, query.get("description") or "")

    def _add_version(self, pipeline_id: str, name: str, spec: dict[str, Any], description: str) -> dict[str, Any]:
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": self._new_id(),
            "name": name,
            "display_name": name,
            "description": description,
            "created_at": self._now(),
            "pipeline_spec": spec,
        }
        self.versions[version["pipeline_version_id"]] = version
        return version
