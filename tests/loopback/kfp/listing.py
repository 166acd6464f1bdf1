"""List calls: `sort_by`, `filter`, `page_size` and `page_token` as list/list.go, filter/filter.go and
server/list_request_util.go read them, over the fields model/{run,experiment,pipeline,pipeline_version}.go declare;
the database is MySQL with a case-insensitive collation, so string comparisons ignore case."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

from google.protobuf import json_format

from tests.loopback.kfp.filters import (
    OPERATION_ORDER,
    OPERATIONS,
    InvalidInput,
    Predicate,
    go_quote,
    invalid_input,
    matches,
    parse_filter_json,
    predicates,
    query_unescape,
    sort_value,
    sql_compare,
)
from tests.loopback.kfp.protojson import ApiError, seconds
from tests.loopback.kfp.state import KfpState


@dataclass(frozen=True)
class Options:
    """list.Options: the sort column, its direction, the filter (by model column) and the offset."""

    sort: str
    desc: bool
    filter: tuple[tuple[str, str, Any], ...]  # (operation, model column, value), grouped as filter.go does
    page_size: int
    offset: int = 0

    def token(self, offset: int) -> str:
        doc = {"Offset": offset, "SortByFieldName": self.sort, "IsDesc": self.desc, "Filter": self.filter}
        return base64.b64encode(json.dumps(doc).encode()).decode()


@dataclass(frozen=True)
class Listable:
    """A resource the API lists, as its backend/src/apiserver/model/<kind>.go declares it."""

    type_name: str  # the Go type, named in "Invalid sorting field" errors
    fields: dict[str, str]  # APIToModelFieldMap: the keys sort_by and filter accept, to model columns
    key: str  # JSON name of the id (the UUID column, the tie-breaker of every sort)
    columns: dict[str, Callable[[dict[str, Any]], Any]]  # model column -> its value for a stored item
    metric_sort: bool = False  # runs also sort by "metric:<name>"


def _page_size(size: int) -> int:
    """list.go validatePageSize: 0 means 20, more than 200 means 200."""
    if size < 0:
        raise invalid_input(f"The page size should be greater than 0. Got {size}")
    return min(size or 20, 200)


class Listing(KfpState):
    """The list calls' options and pages, shared by experiments, pipelines, versions and runs."""

    _listables: dict[str, Listable]

    # Listing follows server/list_request_util.go validatedListOptions, list/list.go NewOptions and
    # filter/filter.go, and the fields of model/{run,experiment,pipeline,pipeline_version}.go.
    def _make_listables(self) -> dict[str, Listable]:
        def text(key: str) -> Callable[[dict[str, Any]], Any]:
            return lambda item: item.get(key) or ""

        def stored_seconds(key: str) -> Callable[[dict[str, Any]], Any]:
            return lambda item: seconds(item.get(key))

        def run_namespace(run: dict[str, Any]) -> str:
            return self.experiments[run["experiment_id"]]["namespace"]

        def run_conditions(run: dict[str, Any]) -> str:
            # model/run.go RuntimeState.ToV1: the Conditions column keeps v1 (Argo phase) names.
            return {
                "PENDING": "Pending",
                "PAUSED": "Pending",
                "RUNNING": "Running",
                "SUCCEEDED": "Succeeded",
                "SKIPPED": "Skipped",
                "FAILED": "Failed",
                "CANCELED": "Failed",
                "CANCELING": "Terminating",
            }.get(run["state"], "Unknown")

        return {
            "runs": Listable(
                "Run",
                {
                    "run_id": "UUID",
                    "id": "UUID",
                    "display_name": "DisplayName",
                    "name": "DisplayName",
                    "created_at": "CreatedAtInSec",
                    "finished_at": "FinishedAtInSec",
                    "description": "Description",
                    "scheduled_at": "ScheduledAtInSec",
                    "storage_state": "StorageState",
                    "status": "Conditions",
                    "namespace": "Namespace",
                    "experiment_id": "ExperimentUUID",
                    "state": "State",
                    "state_history": "StateHistory",
                    "runtime_details": "PipelineRuntimeManifest",
                    "recurring_run_id": "JobUUID",
                },
                "run_id",
                {
                    "UUID": text("run_id"),
                    "DisplayName": text("display_name"),
                    "CreatedAtInSec": stored_seconds("created_at"),
                    "FinishedAtInSec": stored_seconds("finished_at"),
                    "Description": text("description"),
                    "ScheduledAtInSec": stored_seconds("scheduled_at"),
                    "StorageState": text("storage_state"),
                    "Conditions": run_conditions,
                    "Namespace": run_namespace,
                    "ExperimentUUID": text("experiment_id"),
                    "State": text("state"),
                    "StateHistory": lambda run: json.dumps(run.get("state_history") or []),
                    "PipelineRuntimeManifest": text("_runtime_manifest"),
                    "JobUUID": text("recurring_run_id"),
                },
                metric_sort=True,
            ),
            "experiments": Listable(
                "Experiment",
                {
                    "id": "UUID",
                    "experiment_id": "UUID",
                    "name": "Name",
                    "display_name": "Name",
                    "created_at": "CreatedAtInSec",
                    "last_run_created_at": "LastRunCreatedAtInSec",
                    "description": "Description",
                    "namespace": "Namespace",
                    "storage_state": "StorageState",
                },
                "experiment_id",
                {
                    "UUID": text("experiment_id"),
                    "Name": text("display_name"),
                    "CreatedAtInSec": stored_seconds("created_at"),
                    "LastRunCreatedAtInSec": stored_seconds("last_run_created_at"),
                    "Description": text("description"),
                    "Namespace": text("namespace"),
                    "StorageState": text("storage_state"),
                },
            ),
            "pipelines": Listable(
                "Pipeline",
                {
                    "id": "UUID",
                    "pipeline_id": "UUID",
                    "name": "Name",
                    "display_name": "DisplayName",
                    "created_at": "CreatedAtInSec",
                    "description": "Description",
                    "namespace": "Namespace",
                },
                "pipeline_id",
                {
                    "UUID": text("pipeline_id"),
                    "Name": text("name"),
                    "DisplayName": text("display_name"),
                    "CreatedAtInSec": stored_seconds("created_at"),
                    "Description": text("description"),
                    "Namespace": text("namespace"),
                },
            ),
            "pipeline_versions": Listable(
                "PipelineVersion",
                {
                    "id": "UUID",
                    "pipeline_version_id": "UUID",
                    "name": "Name",
                    "display_name": "DisplayName",
                    "created_at": "CreatedAtInSec",
                    "status": "Status",
                    "description": "Description",
                    "pipeline_spec": "PipelineSpec",
                },
                "pipeline_version_id",
                {
                    "UUID": text("pipeline_version_id"),
                    "Name": text("name"),
                    "DisplayName": text("display_name"),
                    "CreatedAtInSec": stored_seconds("created_at"),
                    "Status": lambda version: "READY",
                    "Description": text("description"),
                    "PipelineSpec": lambda version: json.dumps(version.get("pipeline_spec")),
                },
            ),
        }

    def _list_options(self, kind: str, query: dict[str, str]) -> Options:
        """Read sort_by, filter, page_size and page_token; raise ApiError(400) as the API server does."""
        page_token, sort_by, raw_filter = (query.get(k, "") for k in ("page_token", "sort_by", "filter"))
        page_size = int(query.get("page_size") or 0)
        tags: dict[str, str] = {}
        if kind in ("runs", "experiments"):  # run_server.go ListRuns, experiment_server.go ListExperiments
            wrap = "Failed to create list options"
        else:  # server/pipeline_server.go ListPipelines / ListPipelineVersions
            what = "pipelines" if kind == "pipelines" else "pipeline versions"
            try:
                raw_filter, tags = self._tag_filters(raw_filter)
            except InvalidInput as exc:
                message = f"Failed to list {what} due to invalid tag filter in filter spec: {exc.internal}"
                raise ApiError(400, message, exc.external) from None
            wrap = (
                f"Failed to list {what} due invalid list options: pageToken: {page_token}, pageSize: {page_size}, "
                f"sortBy: {sort_by}, filter: {raw_filter}"
            )
        try:
            options = self._validated_list_options(self._listables[kind], page_token, page_size, sort_by, raw_filter)
        except InvalidInput as exc:
            raise ApiError(400, f"{wrap}: {exc.internal}", exc.external) from None
        if tags:
            options = dataclasses.replace(
                options, filter=options.filter + tuple(("TAG", k, v) for k, v in tags.items())
            )
        return options

    def _tag_filters(self, raw: str) -> tuple[str, dict[str, str]]:
        """pipeline_server.go extractTagFiltersFromFilterSpec: "tags.<key>" EQUALS predicates."""
        if not raw:
            return raw, {}
        try:
            decoded = query_unescape(raw)
        except ValueError as exc:
            raise invalid_input(f"failed to decode filter spec: {exc}") from None
        try:
            message = parse_filter_json(decoded)
        except ValueError as exc:
            raise invalid_input(f"failed to parse filter spec: {exc}") from None
        tags, rest = {}, []
        for p in message.predicates:
            if not p.key.startswith("tags."):
                rest.append(json_format.MessageToDict(p, preserving_proto_field_name=True))
                continue
            if p.operation != 1:
                name = OPERATIONS.get(p.operation, "OPERATION_UNSPECIFIED" if not p.operation else str(p.operation))
                raise invalid_input(
                    f"only EQUALS operation is supported for tag filtering, got {name} for key {go_quote(p.key)}"
                )
            if p.WhichOneof("value") != "string_value":
                raise invalid_input(f"tag filter value must be a string for key {go_quote(p.key)}")
            tags[p.key.removeprefix("tags.")] = p.string_value
        if not tags:
            return raw, {}
        # The rest goes on as protojson writes it, query-escaped (url.QueryEscape).
        return (quote_plus(json.dumps({"predicates": rest}, separators=(",", ":"))) if rest else ""), tags

    def _validated_list_options(
        self, listable: Listable, page_token: str, page_size: int, sort_by: str, raw_filter: str
    ) -> Options:
        if not page_token:
            return self._new_options(listable, page_size, sort_by, raw_filter)
        try:
            doc = json.loads(base64.b64decode(page_token, validate=True))
            token = Options(
                doc["SortByFieldName"],
                doc["IsDesc"],
                tuple(tuple(p) for p in doc["Filter"]),
                _page_size(page_size),
                int(doc["Offset"]),
            )
        except (binascii.Error, ValueError, KeyError, TypeError) as exc:  # util.NewInvalidInputErrorWithDetails
            raise InvalidInput(f"InvalidInputError: Invalid page token: {exc}", "Invalid page token") from None
        if sort_by or raw_filter:
            fresh = self._new_options(listable, page_size, sort_by, raw_filter)
            if (fresh.sort, fresh.desc, fresh.filter) != (token.sort, token.desc, token.filter):
                raise invalid_input(
                    "page token does not match the supplied sort by and/or filtering criteria. Either specify the "
                    "same criteria or leave the latter empty if page token is specified"
                )
        return token

    def _new_options(self, listable: Listable, page_size: int, sort_by: str, raw_filter: str) -> Options:
        found: list[Predicate] = []
        if raw_filter:
            try:
                message = parse_filter_json(query_unescape(raw_filter))
            except ValueError as exc:
                raise invalid_input(f"failed to parse valid filter from {go_quote(raw_filter)}: {exc}") from None
            found = predicates(message)
        size = _page_size(page_size)
        words = sort_by.lower().split()
        if len(words) > 2 or (len(words) == 2 and words[1] not in ("desc", "asc")):
            raise invalid_input(
                f"Received invalid sort by format {go_quote(sort_by)}. Supported format: "
                '"field_name", "field_name desc", or "field_name asc"'
            )
        sort = "CreatedAtInSec"  # every listable's DefaultSortField
        if words:
            if words[0] in listable.fields:
                sort = listable.fields[words[0]]
            elif listable.metric_sort and words[0].startswith("metric:"):
                sort = words[0]
            else:
                raise invalid_input(
                    f"Invalid sorting field: {go_quote(words[0])} on listable type {listable.type_name}"
                )
        grouped: list[tuple[str, str, Any]] = []
        for operation in OPERATION_ORDER:
            for p in found:
                if p.operation != operation:
                    continue
                if p.key not in listable.fields:
                    raise invalid_input(f"no support for filtering on unrecognized field {go_quote(p.key)}")
                grouped.append((operation, listable.fields[p.key], p.value))
        return Options(sort, len(words) == 2 and words[1] == "desc", tuple(grouped), size)

    def _page(
        self, kind: str, items: list[dict[str, Any]], options: Options, render: Callable[[Any], dict[str, Any]]
    ) -> dict[str, Any]:
        listable = self._listables[kind]

        def value(item: dict[str, Any], column: str) -> Any:
            return listable.columns[column](item) if column in listable.columns else None  # metric:<name>

        def keep(item: dict[str, Any]) -> bool:
            for operation, column, expected in options.filter:
                if operation == "TAG":
                    if sql_compare((item.get("tags") or {}).get(column, ""), expected) != 0:
                        return False
                elif not matches(value(item, column), operation, expected):
                    return False
            return True

        items = sorted(
            (i for i in items if keep(i)),
            key=lambda i: (sort_value(value(i, options.sort)), i[listable.key]),
            reverse=options.desc,
        )
        page = items[options.offset : options.offset + options.page_size]
        out: dict[str, Any] = {}
        if page:
            out[kind] = [render(i) for i in page]
        if items:
            out["total_size"] = len(items)
        if options.offset + options.page_size < len(items):
            out["next_page_token"] = options.token(options.offset + options.page_size)
        return out
