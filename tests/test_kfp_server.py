"""The loopback KFP server answers like the KFP 2.17 API server, seen only through the real kfp.Client.

What the server should do comes from kubeflow/pipelines 2.17.0: backend/src/apiserver/list/list.go
(sort_by, paging), filter/filter.go and server/list_request_util.go (filter), model/*.go (the fields
each list accepts), server/api_converter.go (what a run and its tasks look like).
"""

# No `from __future__ import annotations`: kfp.dsl reads the components' annotations as types.
import datetime
import json
import re

import pytest
from kfp import compiler, dsl
from kfp.client import Client
from kfp_server_api.exceptions import ApiException

from tests.loopback.kfp import EPOCH, KfpServer, Outcome, Poll, fnv1a32

pytestmark = pytest.mark.filterwarnings("ignore:This client only works with Kubeflow Pipeline")

T0 = datetime.datetime(2024, 5, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)


@dsl.component(base_image="python:3.11")
def fetch_dataset(uri: str, dataset: dsl.Output[dsl.Dataset]):
    pass


@dsl.component(base_image="python:3.11")
def train(dataset: dsl.Input[dsl.Dataset], weights: dsl.Output[dsl.Model]):
    pass


@dsl.pipeline(name="two-steps")
def two_steps(uri: str = "s3://bucket/pets.yaml"):
    train(dataset=fetch_dataset(uri=uri).outputs["dataset"])


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime.datetime:
        return self.now

    def at(self, seconds: int) -> None:
        self.now = T0 + datetime.timedelta(seconds=seconds)


@pytest.fixture
def server():
    server = KfpServer().start()
    server.clock = Clock()
    yield server
    server.stop()


@pytest.fixture
def client(server):
    return Client(host=server.url)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipeline") / "two-steps.yaml"
    compiler.Compiler().compile(two_steps, str(path))
    return str(path)


@pytest.fixture
def experiment(server, client):
    return client.create_experiment("pets")


@pytest.fixture
def three_runs(server, client, experiment, package):
    """b-run, A-run and c-run, a minute apart."""
    for offset, name in [(0, "b-run"), (60, "A-run"), (120, "c-run")]:
        server.clock.at(offset)
        client.run_pipeline(experiment.experiment_id, name, pipeline_package_path=package)
    return experiment.experiment_id


def names(items) -> list[str]:
    return [item.display_name for item in items or []]


def predicate(operation, key: str, **value) -> str:
    return json.dumps({"predicates": [{"operation": operation, "key": key, **value}]})


def stamp(seconds: int) -> str:
    return (T0 + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_of(raised: pytest.ExceptionInfo[ApiException]) -> tuple[str, str]:
    """The Status message and its google.rpc.Status detail of a 400 answer."""
    assert raised.value.status == 400
    body = json.loads(raised.value.body)
    assert body["code"] == 3 and len(body["details"]) == 1, body
    return body["message"], body["details"][0]["message"]


@pytest.mark.parametrize(
    ("sort_by", "expected"),
    [
        ("", ["b-run", "A-run", "c-run"]),  # created_at, the default
        ("created_at", ["b-run", "A-run", "c-run"]),
        ("created_at desc", ["c-run", "A-run", "b-run"]),
        ("CREATED_AT DESC", ["c-run", "A-run", "b-run"]),  # the server lowercases sort_by
        ("display_name", ["A-run", "b-run", "c-run"]),  # MySQL utf8_general_ci: case does not count
        ("name asc", ["A-run", "b-run", "c-run"]),
        ("display_name desc", ["c-run", "b-run", "A-run"]),
    ],
)
def test_list_runs_sorts_both_ways(client, three_runs, sort_by, expected):
    runs = client.list_runs(experiment_id=three_runs, sort_by=sort_by).runs
    assert len(runs) == 3
    assert names(runs) == expected


def test_runs_created_in_the_same_second_sort_by_id_in_the_same_direction(server, client, experiment, package):
    # created_at is kept in whole seconds; list.go then orders by the UUID key, ASC or DESC like the field.
    ids = [client.run_pipeline(experiment.experiment_id, "nightly", package).run_id for _ in range(3)]
    newest_first = client.list_runs(experiment_id=experiment.experiment_id, sort_by="created_at desc").runs
    oldest_first = client.list_runs(experiment_id=experiment.experiment_id, sort_by="created_at").runs
    assert len(newest_first) == 3 and len(oldest_first) == 3
    assert [r.run_id for r in newest_first] == ids[::-1]
    assert [r.run_id for r in oldest_first] == ids


def test_list_experiments_and_pipelines_sort_both_ways(server, client, package):
    for offset, name in [(0, "Beta"), (60, "alpha"), (120, "gamma")]:
        server.clock.at(offset)
        client.create_experiment(name)
        client.upload_pipeline(package, pipeline_name=f"{name}-pipeline")
    by_name = client.list_experiments(sort_by="display_name").experiments
    by_name_desc = client.list_experiments(sort_by="display_name desc").experiments
    assert len(by_name) == 3 and len(by_name_desc) == 3
    assert names(by_name) == ["alpha", "Beta", "gamma"]
    assert names(by_name_desc) == ["gamma", "Beta", "alpha"]
    newest = client.list_pipelines(sort_by="created_at desc").pipelines
    oldest = client.list_pipelines(sort_by="created_at").pipelines
    assert len(newest) == 3 and len(oldest) == 3
    assert names(newest) == ["gamma-pipeline", "alpha-pipeline", "Beta-pipeline"]
    assert names(oldest) == ["Beta-pipeline", "alpha-pipeline", "gamma-pipeline"]


def test_list_pipeline_versions_sorts_and_filters(server, client, package):
    pipeline = client.upload_pipeline(package, pipeline_name="pets")
    for offset, version in [(60, "v2"), (120, "v10")]:
        server.clock.at(offset)
        client.upload_pipeline_version(package, pipeline_version_name=version, pipeline_id=pipeline.pipeline_id)
    versions = client.list_pipeline_versions(pipeline.pipeline_id, sort_by="created_at desc").pipeline_versions
    assert len(versions) == 3
    assert names(versions) == ["v10", "v2", "pets"]
    found = client.list_pipeline_versions(
        pipeline.pipeline_id, filter=predicate("EQUALS", "display_name", string_value="V2")
    ).pipeline_versions
    assert len(found) == 1
    assert names(found) == ["v2"]


@pytest.mark.parametrize(
    ("filter_", "expected"),
    [
        (predicate("EQUALS", "display_name", string_value="B-RUN"), ["b-run"]),  # case-insensitive collation
        (predicate(1, "name", stringValue="c-run"), ["c-run"]),  # kfp.Client's own form: a number, JSON names
        (predicate("NOT_EQUALS", "display_name", string_value="b-run"), ["A-run", "c-run"]),
        (predicate("GREATER_THAN", "created_at", timestamp_value=stamp(60)), ["c-run"]),
        (predicate("GREATER_THAN_EQUALS", "created_at", timestamp_value=stamp(60)), ["A-run", "c-run"]),
        (predicate("LESS_THAN", "created_at", long_value=str(int(T0.timestamp()) + 60)), ["b-run"]),
        (predicate("LESS_THAN_EQUALS", "created_at", int_value=int(T0.timestamp()) + 60), ["b-run", "A-run"]),
        (predicate("IN", "display_name", string_values={"values": ["c-run", "b-run", "z"]}), ["b-run", "c-run"]),
        (predicate("IS_SUBSTRING", "display_name", string_value="-RUN"), ["b-run", "A-run", "c-run"]),
        (predicate("IS_SUBSTRING", "display_name", string_value="a_r"), ["A-run"]),  # LIKE: _ is a wildcard
    ],
)
def test_filter_operations(client, three_runs, filter_, expected):
    runs = client.list_runs(experiment_id=three_runs, filter=filter_).runs
    assert len(runs or []) == len(expected)
    assert names(runs) == expected


def test_filter_predicates_are_anded_and_total_size_counts_matches(client, three_runs):
    both = json.dumps(
        {
            "predicates": [
                {"operation": "IS_SUBSTRING", "key": "display_name", "string_value": "run"},
                {"operation": "LESS_THAN", "key": "created_at", "timestamp_value": stamp(120)},
            ]
        }
    )
    found = client.list_runs(experiment_id=three_runs, filter=both)
    assert len(found.runs) == 2
    assert names(found.runs) == ["b-run", "A-run"] and found.total_size == 2


def test_filter_value_is_url_decoded_once_more(client, experiment, package):
    # list_request_util.go parseAPIFilter runs url.QueryUnescape on the decoded query value: "+" is a space.
    for name in ("a+b", "a b"):
        client.run_pipeline(experiment.experiment_id, name, package)
    runs = client.list_runs(
        experiment_id=experiment.experiment_id, filter=predicate("EQUALS", "display_name", string_value="a+b")
    ).runs
    assert len(runs) == 1
    assert names(runs) == ["a b"]


def test_kfp_clients_own_name_lookups_go_through_the_filter(client, package):
    pipeline = client.upload_pipeline(package, pipeline_name="pets")
    client.upload_pipeline(package, pipeline_name="pets-2")
    client.create_experiment("Pets")
    assert client.get_pipeline_id("pets") == pipeline.pipeline_id
    assert client.get_pipeline_id("nope") is None
    assert client.get_experiment(experiment_name="pets").display_name == "Pets"


RUN_FILTER_ERRORS = [
    pytest.param(
        predicate("STARTS_WITH", "display_name", string_value="b"),
        "Invalid input error: failed to parse valid filter from {raw}: "
        'proto: invalid value for enum field operation: "STARTS_WITH"',
        id="unknown-operation-name",
    ),
    pytest.param(
        predicate(4, "display_name", string_value="b"),
        "UnknownApiVersionError: Error using Filter.Predicate.Operation with go_client.Predicate_Operation",
        id="unknown-operation-number",
    ),
    pytest.param(
        predicate("EQUALS", "size", int_value=3),
        'Invalid input error: no support for filtering on unrecognized field "size"',
        id="unknown-key",
    ),
    pytest.param(
        '{"predicates": [',
        "Invalid input error: failed to parse valid filter from {raw}: proto: syntax error",
        id="malformed-json",
    ),
    pytest.param(
        json.dumps({"predicates": [{"op": "EQUALS", "key": "display_name", "string_value": "b"}]}),
        'Invalid input error: failed to parse valid filter from {raw}: proto: unknown field "op"',
        id="unknown-predicate-field",
    ),
    pytest.param(
        predicate("IN", "display_name", string_value="b"),
        "Invalid input error: cannot use IN operator with scalar type string",
        id="in-with-a-scalar",
    ),
    pytest.param(
        predicate("EQUALS", "display_name", string_values={"values": ["b"]}),
        "Invalid input error: cannot use scalar operator EQUALS on array type []string",
        id="equals-with-a-list",
    ),
    pytest.param(
        predicate("EQUALS", "display_name"),
        "UnknownApiVersionError: Error using Filter.Predicate.Value with <nil>",
        id="no-value",
    ),
    pytest.param(
        predicate("EQUALS", "", string_value="b"),
        "Invalid input error: Predicate key cannot be empty for operation EQUALS and value b",
        id="empty-key",
    ),
]


@pytest.mark.parametrize(("filter_", "error"), RUN_FILTER_ERRORS)
def test_bad_filter_is_answered_400_with_the_servers_message(client, three_runs, filter_, error):
    with pytest.raises(ApiException, match=r"^\(400\)") as raised:
        client.list_runs(experiment_id=three_runs, filter=filter_)
    message, _ = status_of(raised)
    raw = json.dumps(filter_)  # Go's %q of the filter
    assert message.startswith("Failed to create list options: " + error.format(raw=raw)), message


def test_unknown_sort_field_is_answered_400_on_every_list(client, three_runs, package):
    with pytest.raises(ApiException, match=r"Invalid sorting field") as raised:
        client.list_runs(experiment_id=three_runs, sort_by="size desc")
    assert status_of(raised) == (
        'Failed to create list options: Invalid input error: Invalid sorting field: "size" on listable type Run',
        'Invalid sorting field: "size" on listable type Run',
    )
    with pytest.raises(ApiException, match=r"Invalid sorting field") as raised:
        client.list_experiments(sort_by="size")
    assert status_of(raised)[1] == 'Invalid sorting field: "size" on listable type Experiment'
    with pytest.raises(ApiException, match=r"Invalid sorting field") as raised:
        client.list_pipelines(sort_by="size")
    assert status_of(raised) == (
        "Failed to list pipelines due invalid list options: pageToken: , pageSize: 10, sortBy: size, filter: : "
        'Invalid input error: Invalid sorting field: "size" on listable type Pipeline',
        'Invalid sorting field: "size" on listable type Pipeline',
    )


def test_sort_by_with_a_third_word_is_answered_400(client, three_runs):
    with pytest.raises(ApiException, match=r"invalid sort by format") as raised:
        client.list_runs(experiment_id=three_runs, sort_by="created_at sideways")
    assert status_of(raised)[1] == (
        'Received invalid sort by format "created_at sideways". '
        'Supported format: "field_name", "field_name desc", or "field_name asc"'
    )


def test_a_page_token_keeps_the_sort_and_filter_of_the_first_page(client, three_runs):
    first = client.list_runs(experiment_id=three_runs, sort_by="created_at desc", page_size=2)
    assert len(first.runs) == 2
    assert names(first.runs) == ["c-run", "A-run"] and first.total_size == 3 and first.next_page_token
    rest = client.list_runs(experiment_id=three_runs, page_token=first.next_page_token, page_size=2)
    assert len(rest.runs) == 1
    assert names(rest.runs) == ["b-run"] and not rest.next_page_token
    with pytest.raises(ApiException, match=r"page token does not match") as raised:
        client.list_runs(experiment_id=three_runs, page_token=first.next_page_token, sort_by="display_name")
    assert status_of(raised)[1].startswith("page token does not match the supplied sort by and/or filtering criteria")


def test_tasks_in_different_states_at_once(server, client, experiment, package):
    server.outcome = Outcome(
        schedule=[
            Poll("RUNNING", tasks={"fetch-dataset": "RUNNING"}),
            Poll("RUNNING", tasks={"fetch-dataset": "SUCCEEDED", "train": "RUNNING"}),
            Poll("SUCCEEDED", tasks={"fetch-dataset": "SUCCEEDED", "train": "SUCCEEDED"}),
        ]
    )
    run_id = client.run_pipeline(experiment.experiment_id, "r", package).run_id

    server.clock.at(10)
    first = client.get_run(run_id)
    pods = [t for t in first.run_details.task_details if t.display_name == "executor(0)"]
    assert len(pods) == 1  # train has no pod yet, so it is not listed
    assert pods[0].state == "RUNNING"
    assert "train" not in names(first.run_details.task_details)

    server.clock.at(70)
    second = client.get_run(run_id)
    assert second.state == "RUNNING"
    assert second.finished_at == datetime.datetime.fromisoformat(EPOCH)  # not finished: time.Unix(0, 0)
    fetched, training = executors(second)["fetch-dataset"], executors(second)["train"]
    assert fetched.state == "SUCCEEDED" and training.state == "RUNNING"
    assert (fetched.start_time, fetched.end_time) == (
        T0 + datetime.timedelta(seconds=10),
        T0 + datetime.timedelta(seconds=70),
    )
    assert training.end_time == datetime.datetime.fromisoformat(EPOCH)
    assert not fetched.state_history, "NodeStatuses carry no history"
    (step,) = [t for t in second.run_details.task_details if t.display_name == "fetch-dataset"]
    assert sorted(step.outputs) == ["metrics", "weights"], "a step's artifacts, on its task's node"
    (running,) = [t for t in second.run_details.task_details if t.display_name == "train"]
    assert not running.outputs
    (entrypoint,) = [t for t in second.run_details.task_details if t.display_name == server.runs[run_id].workflow]
    assert len(entrypoint.child_tasks) == 1 and entrypoint.state == "RUNNING"  # its retry: <workflow>(0)
    (retried,) = [t for t in second.run_details.task_details if t.display_name == f"{server.runs[run_id].workflow}(0)"]
    assert len(retried.child_tasks) == 1  # root-driver; root hangs under root-driver(0)

    third = client.get_run(run_id)
    assert third.state == "SUCCEEDED" and third.finished_at != datetime.datetime.fromisoformat(EPOCH)
    assert len(third.run_details.task_details) == 18  # the entrypoint, root and each step, all in retry nodes
    assert {t.state for t in third.run_details.task_details} == {"SUCCEEDED"}


def executors(run) -> dict:
    """The executor node of each step, by task key, found as yolokf finds them (yolokf.runs.steplogs)."""
    from yolokf.runs.steplogs import Node, step_pods

    details = run.run_details.task_details
    nodes = [
        Node(t.display_name, t.state, tuple(c.pod_name for c in t.child_tasks or []), i) for i, t in enumerate(details)
    ]
    found = step_pods(nodes)
    return {pod.key: details[pod.node.index] for pod in found}


def test_task_details_are_argo_nodes_without_pod_names(server, client, experiment, package):
    """2.17 lists a run's Argo nodes (common/util/workflow.go NodeStatuses) through toApiPipelineTaskDetail, which
    sets neither pod_name nor parent_task_id; child_tasks carry node IDs, <workflow>-<fnv1a32(node name)>."""
    server.outcome = Outcome(schedule=[Poll("RUNNING", tasks={"fetch-dataset": "RUNNING"})])
    run_id = client.run_pipeline(experiment.experiment_id, "r", package).run_id
    details = client.get_run(run_id).run_details.task_details
    workflow = server.runs[run_id].workflow
    assert re.fullmatch(r"two-steps-[0-9a-f]{5}", workflow)
    assert sorted(names(details)) == sorted(
        [workflow, f"{workflow}(0)", "root-driver", "root-driver(0)", "root", "root(0)", "fetch-dataset-driver"]
        + ["fetch-dataset-driver(0)", "fetch-dataset", "fetch-dataset(0)", "executor", "executor(0)"]
    )
    assert not any(t.pod_name or t.parent_task_id for t in details)
    children = [c.pod_name for t in details for c in t.child_tasks or []]
    assert len(children) == 11 and all(c.startswith(workflow + "-") for c in children)
    executor = f"{workflow}(0).root(0).fetch-dataset(0).executor(0)"
    (retry,) = [t for t in details if t.display_name == "executor"]
    assert [c.pod_name for c in retry.child_tasks] == [f"{workflow}-{fnv1a32(executor)}"]
    assert server.node_id(run_id, "fetch-dataset") == f"{workflow}-{fnv1a32(executor)}"
    assert server.pod_name(run_id, "fetch-dataset") == f"{workflow}-system-container-impl-{fnv1a32(executor)}"


def test_node_graph_hangs_each_task_under_what_it_depends_on(server, client, experiment, package):
    """Argo names a DAG task's node after its DAG (argo-workflows v4.0.5 workflow/controller/dag.go 112-114) but
    hangs a task that has dependencies under their outbound nodes (505-528), a retry node's being its last attempt
    (operator.go 3251-3255); argocompiler makes root depend on root-driver, each task on its driver and each
    driver on the task's dependencies (kubeflow/pipelines 2.17.0 argocompiler/dag.go 170, 316, 335)."""
    server.outcome = Outcome(schedule=[Poll("RUNNING", tasks={"fetch-dataset": "SUCCEEDED", "train": "RUNNING"})])
    run_id = client.run_pipeline(experiment.experiment_id, "r", package).run_id
    details = client.get_run(run_id).run_details.task_details
    workflow = server.runs[run_id].workflow
    entry, root = f"{workflow}(0)", f"{workflow}(0).root(0)"
    fetch, train = f"{root}.fetch-dataset(0)", f"{root}.train(0)"
    children = {
        workflow: [entry],
        entry: [f"{entry}.root-driver"],
        f"{entry}.root-driver": [f"{entry}.root-driver(0)"],
        f"{entry}.root-driver(0)": [f"{entry}.root"],
        f"{entry}.root": [root],
        root: [f"{root}.fetch-dataset-driver"],
        f"{root}.fetch-dataset-driver": [f"{root}.fetch-dataset-driver(0)"],
        f"{root}.fetch-dataset-driver(0)": [f"{root}.fetch-dataset"],
        f"{root}.fetch-dataset": [fetch],
        fetch: [f"{fetch}.executor", f"{root}.train-driver"],  # train reads the download's output
        f"{fetch}.executor": [f"{fetch}.executor(0)"],
        f"{root}.train-driver": [f"{root}.train-driver(0)"],
        f"{root}.train-driver(0)": [f"{root}.train"],
        f"{root}.train": [train],
        train: [f"{train}.executor"],
        f"{train}.executor": [f"{train}.executor(0)"],
        f"{fetch}.executor(0)": [],
        f"{train}.executor(0)": [],
    }
    listed = sorted((t.display_name, sorted(c.pod_name for c in t.child_tasks or [])) for t in details)
    expected = sorted(
        (
            name if name in (workflow, entry) else name.rsplit(".", 1)[-1],
            sorted(f"{workflow}-{fnv1a32(c)}" for c in kids),
        )
        for name, kids in children.items()
    )
    assert listed == expected


def test_terminate_ends_failed_and_a_second_terminate_is_refused(server, client, experiment, package):
    """A terminated run is CANCELING, then FAILED, as Argo ends a workflow whose deadline became 0 (2.17.0
    resource/resource_manager.go 1537-1540); terminating a run that is no longer PENDING, RUNNING, PAUSED or
    unspecified updates no row: 400 (storage/run_store.go 823-844)."""
    server.outcome = Outcome(schedule=[Poll("RUNNING", tasks={"fetch-dataset": "SUCCEEDED", "train": "RUNNING"})])
    run_id = client.run_pipeline(experiment.experiment_id, "r", package).run_id
    assert client.get_run(run_id).state == "RUNNING"
    client.terminate_run(run_id)
    message = f"Failed to terminate a run: Failed to terminate run {run_id}: Invalid input error: Failed to "
    message += f"terminate a run {run_id}. Row not found"
    for expected_state in ("CANCELING", "FAILED"):
        with pytest.raises(ApiException) as refused:
            client.terminate_run(run_id)
        assert refused.value.status == 400 and json.loads(refused.value.body)["message"] == message
        run = client.get_run(run_id)
        assert run.state == expected_state
    assert [s.state for s in run.state_history] == ["PENDING", "RUNNING", "CANCELING", "FAILED"]
    assert {key: task.state for key, task in executors(run).items()} == {
        "fetch-dataset": "SUCCEEDED",
        "train": "FAILED",
    }
    assert not run.error, "the API server sets no error on a terminated run"


def test_fnv1a32_is_gos_hash_fnv_new32a():
    # Values of Go's fnv.New32a().Sum32(), the hash Argo names nodes and pods with.
    assert fnv1a32("") == 2166136261
    assert fnv1a32("a") == 3826002220
    assert fnv1a32("foobar") == 3214735720


def test_paused_run_is_served_then_goes_on(server, client, experiment, package):
    server.outcome = Outcome(schedule=[Poll("RUNNING"), Poll("PAUSED"), Poll("PAUSED"), Poll("SUCCEEDED")])
    run_id = client.run_pipeline(experiment.experiment_id, "r", package).run_id
    states = [client.get_run(run_id).state for _ in range(5)]
    assert len(states) == 5
    assert states == ["RUNNING", "PAUSED", "PAUSED", "SUCCEEDED", "SUCCEEDED"]
    run = client.get_run(run_id)
    assert len(run.state_history) == 4
    assert [s.state for s in run.state_history] == ["PENDING", "RUNNING", "PAUSED", "SUCCEEDED"]


def test_paused_outcome_stays_paused_until_terminated(server, client, experiment, package):
    server.outcome = Outcome("PAUSED", polls=1)
    run_id = client.run_pipeline(experiment.experiment_id, "r", package).run_id
    assert [client.get_run(run_id).state for _ in range(3)] == ["PAUSED"] * 3
    steps = executors(client.get_run(run_id))
    assert len(steps) == 2
    assert {t.state for t in steps.values()} == {"PAUSED"}
    client.terminate_run(run_id)
    assert [client.get_run(run_id).state for _ in range(2)] == ["CANCELING", "FAILED"]


def test_unspecified_state_is_left_out_as_protojson_does(server, client, experiment, package):
    server.outcome = Outcome("RUNTIME_STATE_UNSPECIFIED", polls=1)
    run_id = client.run_pipeline(experiment.experiment_id, "r", package).run_id
    run = client.get_run(run_id)
    assert run.state is None  # enum 0 is not emitted (EmitUnpopulated: false)
    steps = executors(run)
    assert len(steps) == 2
    assert all(t.state is None for t in steps.values())


def test_a_schedule_naming_a_task_the_pipeline_lacks_fails_the_create(server, client, experiment, package):
    server.outcome = Outcome(schedule=[Poll("RUNNING", tasks={"trian": "RUNNING"})])
    with pytest.raises(ApiException, match=r"the outcome names tasks \['trian'\]"):
        client.run_pipeline(experiment.experiment_id, "r", package)
    with pytest.raises(ValueError, match=r"'PAUSD' is not a RuntimeState"):
        Poll("PAUSD")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"display_name": "x", "colour": "red"}, 'proto: unknown field "colour"'),
        ({"display_name": 5}, "proto: invalid value for string field display_name: 5"),
        ({"displayName": "x", "storage_state": "GONE"}, 'proto: invalid value for enum field storage_state: "GONE"'),
    ],
)
def test_request_bodies_are_parsed_strictly(client, body, message):
    with pytest.raises(ApiException, match=r"^\(400\)") as raised:
        client._experiment_api.experiment_service_create_experiment(body)
    assert json.loads(raised.value.body)["message"] == message


def test_request_body_json_names_are_accepted(server, client):
    created = client._experiment_api.experiment_service_create_experiment({"displayName": "camel"})
    assert created.display_name == "camel"
    assert created.description is None  # "" is not emitted
    assert created.last_run_created_at == datetime.datetime.fromisoformat(EPOCH)


def get(server: KfpServer, path: str) -> tuple[int, str]:
    """A plain GET, as a browser or yolokf's log reader sends it: (status, body)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(server.url + path) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_ui_pod_logs_serve_the_live_log_then_the_archive(server, client, experiment, package):
    """frontend/server/handlers/pod-logs.ts: podname required; the live log by pod name; the archive after."""
    server.outcome = Outcome(
        schedule=[
            Poll("RUNNING", tasks={"fetch-dataset": "RUNNING"}, logs={"fetch-dataset": "one\n"}),
            Poll("RUNNING", tasks={"fetch-dataset": "RUNNING"}, logs={"fetch-dataset": "two\n"}),
            Poll("SUCCEEDED", tasks={"fetch-dataset": "SUCCEEDED"}, gone=("fetch-dataset",)),
        ]
    )
    run_id = client.run_pipeline(experiment.experiment_id, "r", package).run_id
    pod = server.pod_name(run_id, "fetch-dataset")
    assert get(server, "/k8s/pod/logs") == (400, "podname argument is required")
    client.get_run(run_id)
    assert get(server, f"/k8s/pod/logs?podname={pod}") == (200, "one\n")
    client.get_run(run_id)
    assert get(server, f"/pipeline/k8s/pod/logs?podname={pod}") == (200, "one\ntwo\n"), "a log grows between polls"
    node = server.node_id(run_id, "fetch-dataset")
    assert get(server, f"/k8s/pod/logs?podname={node}")[0] == 500, "Kubernetes knows pods by name, not node ID"
    client.get_run(run_id)
    assert get(server, f"/k8s/pod/logs?podname={pod}") == (200, "one\ntwo\n"), "the pod is gone: its archived log"
    server.archive_logs = False
    assert get(server, f"/k8s/pod/logs?podname={pod}") == (
        500,
        "Could not get main container logs: Error: Unable to find corresponding log artifact in node.",
    )


def test_ui_pod_logs_need_a_namespace_the_user_may_read_on_multi_user():
    server = KfpServer(multi_user=True).start()
    try:
        client = Client(host=server.url, namespace="kubeflow-user")
        experiment = client.create_experiment("pets", namespace="kubeflow-user")
        server.outcome = Outcome(
            schedule=[Poll("RUNNING", tasks={"fetch-dataset": "RUNNING"}, logs={"fetch-dataset": "x\n"})]
        )
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            package = f"{folder}/p.yaml"
            compiler.Compiler().compile(two_steps, package)
            run_id = client.run_pipeline(experiment.experiment_id, "r", package).run_id
        client.get_run(run_id)
        pod = server.pod_name(run_id, "fetch-dataset")
        assert get(server, f"/k8s/pod/logs?podname={pod}") == (422, "podnamespace argument is required")
        assert get(server, f"/k8s/pod/logs?podname={pod}&podnamespace=other") == (403, "Access denied to namespace")
        assert get(server, f"/k8s/pod/logs?podname={pod}&podnamespace=kubeflow-user") == (200, "x\n")
        status, body = get(server, f"/apis/v1alpha1/runs/{run_id}/nodes/{pod}/log")
        assert (status, body) == (200, "x\n"), "multi-user: the API server reads the live pod in the run's namespace"
    finally:
        server.stop()


def test_api_node_log_answers_errors_with_200_and_reads_only_the_archive_single_user(
    server, client, experiment, package
):
    """server/run_log_server.go writes 200 before reading; resource_manager.go ReadLog reads the pod in the run's
    namespace ("" in single-user mode, so never), then the archive by node ID or pod name; follow is ignored."""
    server.outcome = Outcome(
        schedule=[
            Poll("RUNNING", tasks={"fetch-dataset": "RUNNING"}, logs={"fetch-dataset": "one\n"}),
            Poll("SUCCEEDED", tasks={"fetch-dataset": "SUCCEEDED"}, gone=("fetch-dataset",)),
        ]
    )
    run_id = client.run_pipeline(experiment.experiment_id, "r", package).run_id
    client.get_run(run_id)
    pod, node = server.pod_name(run_id, "fetch-dataset"), server.node_id(run_id, "fetch-dataset")
    status, body = get(server, f"/apis/v1alpha1/runs/{run_id}/nodes/{pod}/log?follow=true")
    assert status == 200
    assert json.loads(body) == {
        "error_message": f"BadRequestError: Failed to read logs for run {run_id}: InternalServerError: Failed to "
        f"read logs from archive {pod} due to error fetching the log file: The specified key does not exist.",
        "error_details": json.loads(body)["error_details"],
    }
    client.get_run(run_id)
    assert get(server, f"/apis/v1alpha1/runs/{run_id}/nodes/{node}/log") == (200, "one\n")
    assert get(server, f"/apis/v1alpha1/runs/{run_id}/nodes/{pod}/log") == (200, "one\n")
    status, body = get(server, "/apis/v1alpha1/runs/no-such-run/nodes/x/log")
    assert status == 200 and json.loads(body)["error_message"].startswith(
        "BadRequestError: Failed to read logs for run no-such-run due to run fetching error"
    )
    server.api_logs = False
    assert get(server, f"/apis/v1alpha1/runs/{run_id}/nodes/{node}/log")[0] == 404  # a server without the route


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"uri": "s3://b/x", "epochs": 3}, "parameter(s) provided are not required by pipeline: epochs"),
        (
            {"uri": 3},
            "input parameter uri requires type string, but the input parameter is not of string value type",
        ),
    ],
)
def test_run_parameters_are_checked_against_the_root_input_definitions(client, experiment, package, params, message):
    """template/v2_template.go validatePipelineJobInputs, as CreateRun wraps it."""
    with pytest.raises(ApiException) as raised:
        client.run_pipeline(experiment.experiment_id, "r", package, params=params)
    assert status_of(raised) == (
        "Failed to create a new run: Failed to generate the ExecutionSpec: invalid pipeline job inputs: "
        f"Invalid input error: {message}",
        message,
    )


def test_number_parameters_must_be_numbers(server, client, experiment):
    @dsl.pipeline(name="numbers")
    def numbers(epochs: int = 3, lr: float = 0.1, cache: bool = False):
        fetch_dataset(uri="s3://b/x")

    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        package = f"{folder}/p.yaml"
        compiler.Compiler().compile(numbers, package)
        with pytest.raises(ApiException) as raised:
            client.run_pipeline(experiment.experiment_id, "r", package, params={"epochs": "7"})
        assert status_of(raised)[1] == (
            "input parameter epochs requires type double or integer, but the parameter value is not of number "
            "value type"
        )
        with pytest.raises(ApiException) as raised:
            client.run_pipeline(experiment.experiment_id, "r", package, params={"cache": 1})
        assert status_of(raised)[1] == (
            "input parameter cache requires type bool, but the input parameter is not of bool value type"
        )
        ok = client.run_pipeline(experiment.experiment_id, "r", package, params={"epochs": 7, "lr": 1, "cache": True})
        assert server.runs[ok.run_id].data["runtime_config"]["parameters"] == {"epochs": 7, "lr": 1, "cache": True}
