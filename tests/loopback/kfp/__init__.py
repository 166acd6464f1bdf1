"""A stateful Kubeflow Pipelines v2beta1 REST API server on loopback, for tests.

No KFP backend can run on the test machines, so this speaks the part of the API that the real
`kfp.Client` 2.17 calls (the paths and JSON of kfp_server_api's generated client): healthz,
experiments, pipeline upload and versions, runs create/get/list/terminate. It follows the API
server of kubeflow/pipelines 2.17.0 (backend/src/apiserver) where yolokf depends on it:

- Responses are proto3 JSON as its gateway emits them (common.CustomMarshaler: snake_case names,
  zero values left out, so a run in RUNTIME_STATE_UNSPECIFIED has no `state`), and timestamps are
  whole seconds; a time the server does not have yet (finished_at of a running run, end_time of a
  running task) is 1970-01-01T00:00:00Z, as server/api_converter.go writes time.Unix(0, 0).
- Errors are google.rpc.Status JSON (plus the `error` field older gateways added), with the
  message built as the server wraps its errors, e.g. "Failed to create list options: Invalid
  input error: Invalid sorting field: \"foo\" on listable type Run".
- List calls take `sort_by`, `filter`, `page_size` and `page_token` as list/list.go,
  filter/filter.go and server/list_request_util.go read them (see `listing.Listable`); the database is
  MySQL with a case-insensitive collation, so string comparisons ignore case.
- Request bodies are parsed as strictly as protojson with DiscardUnknown=false: unknown fields
  and values of the wrong type are answered with 400. Every pipeline spec that arrives (upload,
  upload_version, run create) is parsed into kfp-pipeline-spec's `PipelineSpec` proto and checked.
- A run's task details are its Argo nodes, hung as Argo hangs them: a task that has dependencies under what it
  depends on, not under its DAG (argo.py says where in Argo and argocompiler).
- A terminated run is CANCELING, then FAILED, as the workflow Argo stopped; terminating a run that is CANCELING or
  has ended is a 400 (runs.py `_terminate`).

Tests steer it per test: `outcome` decides how runs go (SUCCEEDED, FAILED, CANCELED, PAUSED... after
some polls, hang in RUNNING, or a `schedule` of `Poll`s that gives the run's and each task's state
per get_run), `fail()` answers the next N matching requests with an HTTP error (or drops the
connection), `token`/`cookie` make it refuse requests without them (a Dex/oauth2-proxy front
redirects to its login page), `multi_user` needs a namespace the caller may use, `clock` sets the
time. Every request is recorded in `requests` for assertions.

The modules, by API area: server (settings, routes, what stands in front), experiments, pipelines (uploads,
versions, spec checks), runs, argo (the workflow's nodes and pod names), logs (step logs), listing and filters
(list calls), outcomes (how tests steer runs), protojson (bodies, answers, errors), state (what the server holds).
"""

from tests.loopback.kfp.argo import fnv1a32
from tests.loopback.kfp.outcomes import FINAL_STATES, RUNTIME_STATES, Outcome, Poll
from tests.loopback.kfp.pipelines import check_pipeline_spec
from tests.loopback.kfp.protojson import EPOCH, ApiError
from tests.loopback.kfp.server import API, KfpServer
from tests.loopback.kfp.state import PodLog

__all__ = [
    "API",
    "EPOCH",
    "FINAL_STATES",
    "RUNTIME_STATES",
    "ApiError",
    "KfpServer",
    "Outcome",
    "PodLog",
    "Poll",
    "check_pipeline_spec",
    "fnv1a32",
]
