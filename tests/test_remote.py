"""`yolokf run --host` and `yolokf status` against a stateful KFP v2beta1 API server on loopback.

The real kfp.Client talks to tests/loopback/kfp over real sockets (http and https); nothing in
kfp is patched. Only yolokf's own retry pacing is shortened.
"""

import datetime
import io
import itertools
import logging
import os
import re
import signal
import traceback

import pytest
import yaml
from google.protobuf import json_format
from kfp import compiler, dsl
from kfp.pipeline_spec import pipeline_spec_pb2
from rich.console import Console
from typer.testing import CliRunner

from tests.conftest import CliResult
from tests.loopback.kfp import KfpServer, Outcome, Poll, check_pipeline_spec
from tests.loopback.tls import self_signed_cert
from yolokf.cli.app import main
from yolokf.cli.console import RunDisplay
from yolokf.core.errors import ClusterError, RunFailedError, UsageError
from yolokf.core.settings import TrainConfig
from yolokf.pipeline.job import Job, plan_job
from yolokf.pipeline.step_options import StepOptions
from yolokf.runs import follow, kfp_api, submit
from yolokf.runs.kfp_api import Connection
from yolokf.training.launch import free_port

TOKEN = "kfp-secret-token-3f9a1c"
IMAGE = "registry.example.com/ml/yolokf:0.1.0-abc"
ENV_VARS = (
    "KFP_HOST",
    "KF_PIPELINES_ENDPOINT",
    "KF_PIPELINES_UI_ENDPOINT",
    "KFP_NAMESPACE",
    "KFP_TOKEN",
    "YOLOKF_KFP_TOKEN",
    "YOLOKF_KFP_TOKEN_FILE",
    "KF_PIPELINES_SA_TOKEN_PATH",
    "KFP_COOKIE",
    "YOLOKF_KFP_COOKIE",
    "YOLOKF_KFP_COOKIE_FILE",
    "YOLOKF_CA_BUNDLE",
    "YOLOKF_PIPELINE_ROOT",
    "YOLOKF_EXPERIMENT",
    "YOLOKF_DEBUG",
)


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("YOLOKF_POLL_INTERVAL", "0.01")
    monkeypatch.setenv("YOLOKF_IMAGE", IMAGE)
    monkeypatch.setattr(kfp_api, "RETRY", kfp_api.RetryPolicy(attempts=3, first_delay=0.01))


@pytest.fixture
def kfp():
    server = KfpServer().start()
    yield server
    server.stop()


@pytest.fixture
def secured():
    server = KfpServer(token=TOKEN).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_kfp(cert):
    server = KfpServer(tls=cert).start()
    yield server
    server.stop()


def cli(args: list, input: str | None = None, env: dict[str, str] | None = None) -> CliResult:
    """`yolokf ARGS` through its real entry point (like conftest's `invoke`, plus stdin)."""
    runner = CliRunner()
    with runner.isolation(input=input, env=env) as (out, errb, _):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return CliResult(code, out.getvalue().decode(), errb.getvalue().decode() if errb is not None else "")


def run_args(server: KfpServer, *extra) -> list:
    return ["run", "--host", server.url, "--epochs", "7", "--imgsz", "320", *extra]


def run_id_of(result: CliResult) -> str:
    match = re.search(r"Run id: (\S+)", result.stdout)
    assert match, result.output
    return match[1]


def spec_of(run_request) -> dict:
    body = run_request.json()["pipeline_spec"]
    return body.get("pipeline_spec", body)


def test_run_host_submits_the_compiled_pipeline_with_the_cli_values(kfp):
    result = cli(
        run_args(kfp, "--model", "yolov8s.pt", "--set", "lr0=0.005", "--experiment", "pets")
        + ["--run-name", "pets-try-1", "--pipeline-root", "minio://mlpipeline/v2/artifacts"]
        + ["--service-account", "trainer"]
    )
    assert result.exit_code == 0, result.output
    run_id = run_id_of(result)
    assert f"Details: {kfp.url}/#/runs/details/{run_id}" in result.stdout
    assert "Submitted run pets-try-1 to experiment pets (created)" in result.stdout

    (experiment,) = kfp.experiments.values()
    assert experiment["display_name"] == "pets"
    (create,) = kfp.calls("POST", r"/runs$")
    body = create.json()
    assert body["display_name"] == "pets-try-1"
    assert body["experiment_id"] == experiment["experiment_id"]
    assert body["service_account"] == "trainer"
    assert body["runtime_config"]["pipeline_root"] == "minio://mlpipeline/v2/artifacts"
    params = body["runtime_config"]["parameters"]
    assert params["epochs"] == 7 and params["imgsz"] == 320 and params["model"] == "yolov8s.pt"
    assert params["train_args"] == {"lr0": 0.005}

    spec = pipeline_spec_pb2.PipelineSpec()
    json_format.ParseDict(spec_of(create), spec)
    assert spec.pipeline_info.name == "yolov8-train"
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {IMAGE}
    defaults = spec.root.input_definitions.parameters
    assert defaults["epochs"].default_value.number_value == 7


def test_experiment_is_reused_and_run_name_defaults_to_model_data_time(kfp):
    for _ in range(2):
        result = cli(run_args(kfp, "--model", "yolov8n.pt", "--data", "coco128.yaml"))
        assert result.exit_code == 0, result.output
    assert [e["display_name"] for e in kfp.experiments.values()] == ["yolokf"]
    names = [r.json()["display_name"] for r in kfp.calls("POST", r"/runs$")]
    assert len(names) == 2, names
    assert all(re.fullmatch(r"yolov8n-coco128-\d{8}-\d{6}", n) for n in names), names


def test_host_from_kfp_host_or_kfp_endpoint_env(kfp):
    for variable in ("KFP_HOST", "KF_PIPELINES_ENDPOINT"):
        result = cli(["run", "--epochs", "1"], env={variable: kfp.url})
        assert result.exit_code == 0, result.output
    assert len(kfp.calls("POST", r"/runs$")) == 2


def test_ui_link_uses_kfp_ui_endpoint(kfp):
    result = cli(run_args(kfp), env={"KF_PIPELINES_UI_ENDPOINT": "https://kubeflow.example.com/pipeline/"})
    assert result.exit_code == 0, result.output
    assert f"Details: https://kubeflow.example.com/pipeline/#/runs/details/{run_id_of(result)}" in result.stdout


@pytest.mark.parametrize(("flags", "training"), [(["--no-cache"], False), (["--cache"], True), ([], True)])
@pytest.mark.parametrize("data", [[], ["--data", "s3://datasets/pets", "--data-secret", "s3-creds"]])
def test_the_download_step_is_never_cached_whatever_the_cache_flag(kfp, flags, training, data):
    """Issue 24, item 5: KFP's cache keys the download on its URI, so it handed back the last run's download after
    the bucket changed; and `--cache` turned caching on for every task. The submitted spec, as the server received
    it: the download step never cached, the training as --cache / --no-cache say (on by default)."""
    result = cli(run_args(kfp, *flags, *data))
    assert result.exit_code == 0, result.output
    (created,) = kfp.calls("POST", r"/runs$")
    assert created.json()["runtime_config"]["parameters"]["data"] == (data[1] if data else "coco128.yaml")
    tasks = spec_of(created)["root"]["dag"]["tasks"]
    caching = {name: task["cachingOptions"].get("enableCache", False) for name, task in tasks.items()}
    assert caching == {"fetch-dataset": False, "yolo-train": training}


def _pipeline_with_sub_dag():
    @dsl.component(base_image="python:3.11")
    def step(x: int) -> int:
        return x

    @dsl.pipeline(name="nested")
    def nested(x: int = 1):
        first = step(x=x)
        with dsl.If(first.output > 0):
            with dsl.ParallelFor([1, 2]) as item:
                step(x=item)

    return nested


def test_no_cache_reaches_sub_dag_tasks_that_kfp_override_misses(tmp_path):
    from kfp.client.client import _override_caching_options

    package = tmp_path / "nested.yaml"
    compiler.Compiler().compile(_pipeline_with_sub_dag(), str(package))
    spec_dict = yaml.safe_load(package.read_text())

    # kfp 2.17's submit-time override: root DAG only.
    proto = json_format.ParseDict(spec_dict, pipeline_spec_pb2.PipelineSpec())
    _override_caching_options(proto, False)
    nested_tasks = [t for c in proto.components.values() if c.HasField("dag") for t in c.dag.tasks.values()]
    assert nested_tasks and any(t.caching_options.enable_cache for t in nested_tasks)

    assert submit.disable_caching(spec_dict) == len(proto.root.dag.tasks) + len(nested_tasks)
    proto = json_format.ParseDict(spec_dict, pipeline_spec_pb2.PipelineSpec())
    every = list(proto.root.dag.tasks.values()) + [
        t for c in proto.components.values() if c.HasField("dag") for t in c.dag.tasks.values()
    ]
    assert not any(t.caching_options.enable_cache for t in every)
    check_pipeline_spec(spec_dict)  # still a spec the server accepts


def test_upload_registers_the_pipeline_then_a_new_version(kfp):
    first = cli(run_args(kfp, "--upload", "--no-cache", "--run-name", "first"))
    assert first.exit_code == 0, first.output
    assert re.search(r"^Pipeline: yolov8-train, version yolov8-train \(\S+\)$", first.stdout, re.M), first.stdout
    second = cli(run_args(kfp, "--upload", "--run-name", "second"))
    assert second.exit_code == 0, second.output
    assert re.search(r"^Pipeline: yolov8-train, version second \(\S+\)$", second.stdout, re.M), second.stdout

    (pipeline,) = kfp.pipelines.values()
    assert pipeline["name"] == "yolov8-train"
    versions = [v for v in kfp.versions.values() if v["pipeline_id"] == pipeline["pipeline_id"]]
    assert [v["name"] for v in versions] == ["yolov8-train", "second"]
    assert len(kfp.calls("POST", r"/pipelines/upload$")) == 1
    assert len(kfp.calls("POST", r"/pipelines/upload_version$")) == 1
    runs = [r.json() for r in kfp.calls("POST", r"/runs$")]
    assert [r["pipeline_version_reference"]["pipeline_version_id"] for r in runs] == [
        v["pipeline_version_id"] for v in versions
    ]
    assert len(runs) == 2
    assert all("pipeline_spec" not in r for r in runs)  # the run uses the registered version
    # --no-cache was compiled into the uploaded spec, since the run only references it.
    first_tasks = versions[0]["pipeline_spec"]["root"]["dag"]["tasks"]
    assert sorted(first_tasks) == ["fetch-dataset", "yolo-train"], first_tasks
    assert all(t["cachingOptions"].get("enableCache", False) is False for t in first_tasks.values())


def test_dry_run_prints_what_would_be_submitted_and_contacts_nothing():
    url = f"http://127.0.0.1:{free_port()}"
    result = cli(["run", "--host", url, "--dry-run", "--epochs", "3", "--no-cache", "--upload", "--run-name", "r1"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"# Would submit run r1 to {url}",
        "# Would register pipeline yolov8-train, or a new version of it when it exists",
        "experiment: yolokf (created when missing)",
        f"image: {IMAGE}",
        'parameters: {"batch": 16, "data": "coco128.yaml", "device": "", "epochs": 3, "imgsz": 640, '
        '"model": "yolov8n.pt", "seed": 0, "train_args": {}, "workers": 8}',
        "pipeline root: the cluster default",
        "service account: the cluster default",
        "caching: off, for every task",
    ]
    # issue 26: `--dry-run > file` stays YAML that loads
    assert yaml.safe_load(result.stdout)["parameters"]["epochs"] == 3
    local = cli(["run", "--dry-run"])
    assert local.exit_code == 2 and "--dry-run shows what a --host run would submit" in local.stderr


def test_wait_succeeded_exits_0_and_shows_state_and_task(kfp):
    result = cli(run_args(kfp, "--wait", "--run-name", "r1"))
    assert result.exit_code == 0, result.output
    lines = result.stdout
    assert re.search(r"PENDING .* task train: PENDING", lines)
    assert re.search(r"RUNNING .* task train: RUNNING", lines)
    assert re.search(r"Run r1 SUCCEEDED in \d+s: http://127\.0\.0\.1:\d+/#/runs/details/", lines)


def test_wait_failed_exits_4_with_the_servers_error(kfp):
    kfp.outcome = Outcome("FAILED", error="train: CUDA out of memory. Tried to allocate 2.00 GiB")
    result = cli(run_args(kfp, "--wait", "--run-name", "r1"))
    assert result.exit_code == 4, result.output
    run_id = re.search(r"Run id: (\S+)", result.stdout)[1]
    assert result.stderr.strip().startswith(f"Error: Run r1 ({run_id}) FAILED after "), result.stderr
    assert "train: CUDA out of memory. Tried to allocate 2.00 GiB. Details and logs: " in result.stderr
    assert "Traceback" not in result.output


def test_wait_canceled_exits_4_where_kfp_would_wait_forever(kfp):
    kfp.outcome = Outcome("CANCELED")
    result = cli(run_args(kfp, "--wait", "--run-name", "r1"))
    assert result.exit_code == 4, result.output
    assert re.search(r"Error: Run r1 \(\S+\) CANCELED after \d+s \(the server gave no error message\)", result.stderr)


def test_wait_timeout_exits_4_and_leaves_the_run_running(kfp):
    kfp.outcome = Outcome(hang=True)
    result = cli(run_args(kfp, "--wait", "--timeout", "1s", "--run-name", "r1"))
    assert result.exit_code == 4, result.output
    run_id = run_id_of(result)
    assert f"Error: Run r1 ({run_id}) is still RUNNING after --timeout 1s; it keeps running" in result.stderr
    assert f"yolokf status {run_id}" in result.stderr
    assert not kfp.calls("POST", r":terminate$")


def test_wait_stops_on_a_paused_run_with_exit_4_and_says_how_to_follow_again(kfp):
    kfp.outcome = Outcome("PAUSED", polls=2)
    result = cli(run_args(kfp, "--wait", "--run-name", "r1"))
    assert result.exit_code == 4, result.output
    run_id = run_id_of(result)
    assert re.search(
        rf"Error: Run r1 \({run_id}\) is PAUSED on the cluster after \d+s; it goes on only when resumed", result.stderr
    )
    assert f"yolokf status {run_id} --wait" in result.stderr
    assert not kfp.calls("POST", r":terminate$"), "a paused run is left as it is"


def test_wait_gives_up_on_a_run_that_never_gets_a_state(kfp):
    kfp.outcome = Outcome("RUNTIME_STATE_UNSPECIFIED", polls=1)
    cluster = kfp_api.connect(Connection(kfp.url))
    submitted = submit.submit(cluster, job(epochs=1), submit.Submission(run_name="r1"))
    with pytest.raises(RunFailedError, match=r"Run r1 \(\S+\) has had no state for \d+s: the cluster has not sched"):
        follow.wait(cluster, submitted.run_id, poll_interval=0.01, unspecified_limit=0.2)
    assert len(kfp.calls("GET", rf"/runs/{submitted.run_id}$")) >= 3, "followed a while first"


def test_wait_shows_the_running_task_while_an_earlier_one_has_finished(kfp):
    ticks = itertools.count()
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    kfp.clock = lambda: start + datetime.timedelta(seconds=next(ticks))  # each answer a second later, as on a cluster
    kfp.outcome = Outcome(
        schedule=[
            Poll("RUNNING", tasks={"fetch-dataset": "RUNNING"}),
            Poll("RUNNING", tasks={"fetch-dataset": "SUCCEEDED", "train": "RUNNING"}),
            Poll("SUCCEEDED", tasks={"fetch-dataset": "SUCCEEDED", "train": "SUCCEEDED"}),
        ]
    )
    result = cli(run_args(kfp, "--wait", "--run-name", "r1", "--data", "s3://datasets/pets.zip", "--data-secret", "s3"))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith(("RUNNING", "SUCCEEDED"))]
    assert len(lines) == 3, result.stdout
    assert lines[0].endswith("task fetch-dataset: RUNNING")
    assert lines[1].endswith("task train: RUNNING"), "the running task, not the finished download"
    assert lines[2].endswith("task train: SUCCEEDED")


def _interrupt_after(kfp: KfpServer, polls: int) -> None:
    def hook(run_id, seen):
        if seen == polls:
            os.kill(os.getpid(), signal.SIGINT)

    kfp.after_get_run = hook


@pytest.mark.parametrize(
    ("args", "answer", "terminated"),
    [
        ([], "y\n", True),
        ([], "n\n", False),
        ([], None, False),  # no terminal to ask: stop following, leave the run alone
        (["--terminate-on-interrupt"], None, True),
    ],
)
def test_ctrl_c_terminates_or_detaches(kfp, args, answer, terminated):
    kfp.outcome = Outcome(hang=True)
    _interrupt_after(kfp, 2)
    result = cli(run_args(kfp, "--wait", *args), input=answer)
    assert result.exit_code == 130, result.output
    run_id = run_id_of(result)
    assert len(kfp.calls("POST", rf"/runs/{run_id}:terminate$")) == int(terminated)
    if terminated:
        assert result.stderr.endswith(
            f"Asked the cluster to terminate run {run_id}. Check it with: yolokf status {run_id}\n"
        )
    else:
        assert result.stderr.endswith(
            f"Stopped following run {run_id}; it keeps running. Check it with: yolokf status {run_id}\n"
        )
    if not args:
        assert f"Terminate run {run_id} on the cluster?" in result.stdout


def test_status_shows_state_tasks_and_outputs_and_can_follow(kfp):
    submitted = cli(run_args(kfp, "--run-name", "r1"))
    run_id = run_id_of(submitted)
    first = cli(["status", run_id, "--host", kfp.url])
    assert first.exit_code == 0, first.output
    assert f"Run r1 ({run_id}): PENDING" in first.stdout
    followed = cli(["status", run_id, "--host", kfp.url, "--wait"])
    assert followed.exit_code == 0, followed.output
    assert "Run r1 SUCCEEDED" in followed.stdout
    done = cli(["status", run_id], env={"KFP_HOST": kfp.url})
    assert done.exit_code == 0, done.output
    assert f"Run r1 ({run_id}): SUCCEEDED" in done.stdout
    assert '"epochs": 7' in done.stdout and '"imgsz": 320' in done.stdout, "the run's parameters"
    assert re.search(r"train\s+│\s+SUCCEEDED\s+│.*│\s+metrics: 101, weights: 102", done.stdout), done.stdout
    assert f"Details: {kfp.url}/#/runs/details/{run_id}" in done.stdout


def test_status_of_a_running_run_gives_unfinished_tasks_no_time(kfp):
    """The API server sends 1970-01-01 as the end time of what has not ended."""
    kfp.outcome = Outcome(hang=True)
    run_id = run_id_of(cli(run_args(kfp, "--run-name", "r1")))
    states = [cli(["status", run_id, "--host", kfp.url]) for _ in range(3)]
    running = states[-1]
    assert running.exit_code == 0, running.output
    assert re.search(rf"Run r1 \({run_id}\): RUNNING, \d+s", running.stdout), running.stdout
    assert re.search(r"train\s+│\s+RUNNING\s+│\s+-\s+│", running.stdout), running.stdout
    assert not re.search(r"-\d+h", running.stdout), "no negative durations"


def test_status_of_a_failed_run_shows_the_error(kfp):
    kfp.outcome = Outcome("FAILED", polls=1, error="dataset not found: s3://bucket/pets.yaml")
    run_id = run_id_of(cli(run_args(kfp)))
    result = cli(["status", run_id, "--host", kfp.url])
    assert result.exit_code == 0, result.output
    assert "FAILED" in result.stdout and "Error: dataset not found: s3://bucket/pets.yaml" in result.stdout


def test_status_of_an_unknown_run_is_one_line(kfp):
    result = cli(["status", "no-such-run", "--host", kfp.url])
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        f"Error: Reading run no-such-run failed: 404 Not Found from {kfp.url} (Run no-such-run not found). "
        "Check that --host is the Kubeflow Pipelines API (http://localhost:8080 for a port-forward of "
        "svc/ml-pipeline-ui, https://<kubeflow>/pipeline behind the Kubeflow gateway) and that the id and "
        "--namespace are right.\n"
    )


def test_status_needs_a_host():
    result = cli(["status", "abc"])
    assert result.exit_code == 2, result.output
    assert "Error: No cluster given: pass --host URL (or set KFP_HOST)" in result.stderr


def test_unreachable_host_is_retried_then_one_line():
    url = f"http://127.0.0.1:{free_port()}"
    result = cli(["run", "--host", url])
    assert result.exit_code == 1, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"Error: Connecting to {url} failed: cannot connect to {url} (Connection refused). Is the API reachable? "
        "For a port-forward: kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80, then --host "
        "http://localhost:8080. (tried 3 times)"
    )
    assert result.stderr.count("retrying in") == 2
    assert "Traceback" not in result.output


def test_dns_failure_is_one_line():
    result = cli(["run", "--host", "http://kfp.does-not-exist.invalid:8080"])
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        "Error: Connecting to http://kfp.does-not-exist.invalid:8080 failed: cannot resolve the host name "
        "'kfp.does-not-exist.invalid': check the spelling of --host and your DNS/VPN.\n"
    )


def test_host_must_be_an_http_url():
    result = cli(["run", "--host", "localhost:8080"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: --host 'localhost:8080' is not an http(s) URL. Examples:")


def test_tls_untrusted_certificate_is_one_line(tls_kfp):
    result = cli(run_args(tls_kfp))
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        f"Error: Connecting to {tls_kfp.url} failed: TLS verification of {tls_kfp.url} failed (self-signed "
        "certificate). If the cluster uses a private CA, pass --ca-bundle ca.pem; --insecure-skip-tls-verify "
        "skips the check (not recommended).\n"
    )


def test_tls_with_ca_bundle(tls_kfp, cert):
    result = cli(run_args(tls_kfp, "--ca-bundle", cert[0]))
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert len(tls_kfp.calls("POST", r"/runs$")) == 1


def test_tls_skip_verify_warns(tls_kfp):
    result = cli(run_args(tls_kfp, "--insecure-skip-tls-verify"))
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(
        f"Warning: not verifying the TLS certificate of {tls_kfp.url} (--insecure-skip-tls-verify)."
    )
    assert "InsecureRequestWarning" not in result.output


def test_missing_ca_bundle_is_a_usage_error(kfp, tmp_path):
    result = cli(run_args(kfp, "--ca-bundle", tmp_path / "nope.pem"))
    assert result.exit_code == 2, result.output
    assert f"Error: --ca-bundle {tmp_path / 'nope.pem'} does not exist." in result.stderr


def test_401_without_credentials(secured):
    result = cli(run_args(secured))
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        f"Error: Connecting to {secured.url} failed: 401 Unauthorized from {secured.url} (Unauthenticated: Request "
        "header error: there is no user identity header.): no credentials were sent. Pass a valid token "
        "(KFP_TOKEN, --token-file, KF_PIPELINES_SA_TOKEN_PATH) or, behind Dex/OIDC, a session cookie (KFP_COOKIE).\n"
    )


def test_401_names_the_refused_token_source_not_the_token(secured):
    result = cli(run_args(secured), env={"KFP_TOKEN": "stale-token-value"})
    assert result.exit_code == 1, result.output
    assert "the token from $KFP_TOKEN was refused" in result.stderr
    assert "stale-token-value" not in result.output


def test_token_from_env_file_and_service_account_path(secured, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    for env, extra in [
        ({"KFP_TOKEN": TOKEN}, []),
        ({"YOLOKF_KFP_TOKEN": TOKEN, "KFP_TOKEN": "other"}, []),
        ({}, ["--token-file", token_file]),
        ({"KF_PIPELINES_SA_TOKEN_PATH": str(token_file)}, []),
    ]:
        result = cli(run_args(secured, *extra), env=env)
        assert result.exit_code == 0, (env, result.output)
    assert {r.headers.get("authorization") for r in secured.requests} == {f"Bearer {TOKEN}"}


def test_token_file_is_read_again_for_each_request(secured, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    cluster = kfp_api.connect(Connection(secured.url, token_file=token_file))
    token_file.write_text("rotated-by-kubelet")
    with pytest.raises(ClusterError, match="401 Unauthorized"):
        follow.get_report(cluster, "any")
    assert secured.requests[-1].headers["authorization"] == "Bearer rotated-by-kubelet"


def test_unreadable_token_file_is_a_usage_error(kfp, tmp_path):
    result = cli(run_args(kfp, "--token-file", tmp_path / "missing"))
    assert result.exit_code == 2, result.output
    assert f"Error: Cannot read the token file from --token-file {tmp_path / 'missing'}: No such file" in result.stderr


def test_dex_login_redirect_explains_the_cookie():
    server = KfpServer(cookie="authservice_session=s3cr3t").start()
    try:
        result = cli(run_args(server))
        assert result.exit_code == 1, result.output
        assert "redirected to a login page (/dex/auth?client_id=kubeflow-oidc-authservice" in result.stderr
        assert "export KFP_COOKIE='oauth2_proxy_kubeflow=...'" in result.stderr
        ok = cli(run_args(server), env={"KFP_COOKIE": "authservice_session=s3cr3t"})
        assert ok.exit_code == 0, ok.output
        assert "s3cr3t" not in ok.output
        assert server.requests[-1].headers["cookie"] == "authservice_session=s3cr3t"
    finally:
        server.stop()


def test_cookie_file_must_be_name_value(kfp, tmp_path):
    cookie = tmp_path / "cookie"
    cookie.write_text("justavalue")
    result = cli(run_args(kfp, "--cookie-file", cookie))
    assert result.exit_code == 2, result.output
    assert f"Error: The cookie from --cookie-file {cookie} is not NAME=VALUE." in result.stderr


def test_multi_user_needs_a_namespace_and_uses_it():
    server = KfpServer(multi_user=True, namespaces=("team-a",)).start()
    try:
        missing = cli(run_args(server))
        assert missing.exit_code == 2, missing.output
        assert f"Error: {server.url} is a multi-user Kubeflow: pass --namespace" in missing.stderr

        ok = cli(run_args(server, "--namespace", "team-a", "--upload"))
        assert ok.exit_code == 0, ok.output
        (experiment,) = server.experiments.values()
        assert experiment["namespace"] == "team-a"
        assert server.calls("POST", r"/pipelines/upload$")[0].query["namespace"] == "team-a"

        other = cli(run_args(server), env={"KFP_NAMESPACE": "team-b"})
        assert other.exit_code == 1, other.output
        assert other.stderr == (
            f"Error: Looking up experiment 'yolokf' failed: 403 Forbidden from {server.url} (Failed to authorize "
            "with API: PermissionDenied: User is not authorized to access namespace team-b): your account may not "
            "use namespace 'team-b'. Check --namespace (your Kubeflow profile namespace) and that the profile "
            "grants you access.\n"
        )
    finally:
        server.stop()


def test_wrong_path_404(kfp):
    result = cli(["run", "--host", kfp.url + "/pipeline"])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(
        f"Error: Connecting to {kfp.url}/pipeline failed: 404 Not Found from {kfp.url}/pipeline (Not Found). "
        "Check that --host is the Kubeflow Pipelines API"
    )


def test_5xx_is_retried_with_backoff(kfp):
    kfp.fail(503, times=2, path=r"/experiments$", message="upstream connect error")
    result = cli(run_args(kfp))
    assert result.exit_code == 0, result.output
    assert result.stderr.count(f"{kfp.url} answered 503 Service Unavailable (upstream connect error); retrying") == 2


def test_5xx_that_persists_is_one_line_after_bounded_retries(kfp):
    kfp.fail(500, times=100, path=r"/experiments$", message="database is locked")
    result = cli(run_args(kfp))
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: Looking up experiment 'yolokf' failed: {kfp.url} answered 500 Internal Server Error (database is "
        "locked). The KFP API server is failing or overloaded: try again later, or check its pods (kubectl -n "
        "kubeflow get pods). (tried 3 times)"
    )
    assert len(kfp.calls("GET", r"/experiments$")) == 3


def test_lost_answer_to_run_create_does_not_submit_twice(kfp):
    kfp.fail(0, times=1, method="POST", path=r"/runs$", after=True)
    result = cli(run_args(kfp, "--run-name", "once"))
    assert result.exit_code == 0, result.output
    (run,) = kfp.runs.values()
    assert run_id_of(result) == run.data["run_id"]
    assert len(kfp.calls("POST", r"/runs$")) == 1


def test_reused_run_name_is_not_mistaken_for_the_lost_create(kfp):
    assert cli(run_args(kfp, "--run-name", "nightly")).exit_code == 0
    kfp.fail(0, times=1, method="POST", path=r"/runs$")  # dropped before the server saw it
    result = cli(run_args(kfp, "--run-name", "nightly"))
    assert result.exit_code == 0, result.output
    assert len(kfp.runs) == 2
    assert run_id_of(result) == list(kfp.runs)[-1]


def test_stalled_answer_times_out_and_is_retried(kfp, monkeypatch):
    monkeypatch.setattr(kfp_api, "REQUEST_TIMEOUT", (5.0, 0.3))
    kfp.fail(200, times=1, method="GET", path=r"/experiments$", delay=1.0)
    result = cli(run_args(kfp))
    assert result.exit_code == 0, result.output
    assert "the connection to" in result.stderr and "timed out" in result.stderr


def test_api_failing_while_following_says_the_run_is_unaffected(kfp, monkeypatch):
    monkeypatch.setattr(follow, "OUTAGE_LIMIT", 0.3)  # how long following waits out an API that does not answer
    kfp.outcome = Outcome(hang=True)

    def break_api(run_id, polls):
        if polls == 1:
            kfp.fail(502, times=10_000, path=r"/runs/")

    kfp.after_get_run = break_api
    result = cli(run_args(kfp, "--wait"))
    assert result.exit_code == 1, result.output
    run_id = run_id_of(result)
    assert re.search(
        rf"\(tried 3 times\) yolokf stopped following after \d+s without an answer; the run itself is not affected: "
        rf"yolokf status {run_id}$",
        result.stderr.strip().splitlines()[-1],
    )
    assert "yolokf keeps following for up to 0s; the run itself is not affected." in result.stderr


def test_dropped_connection_before_create_is_retried(kfp):
    kfp.fail(0, times=1, method="POST", path=r"/runs$")
    result = cli(run_args(kfp))
    assert result.exit_code == 0, result.output
    assert len(kfp.runs) == 1 and len(kfp.calls("POST", r"/runs$")) == 2
    assert "the connection to" in result.stderr and "retrying" in result.stderr


def test_spec_rejected_after_upload_says_what_stays(kfp):
    kfp.reject_runs = "Invalid input error: pipeline spec is not supported by this KFP version"
    result = cli(run_args(kfp, "--upload", "--run-name", "r1"))
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        f"Error: Creating run 'r1' failed: {kfp.url} rejected the request with 400 (Invalid input error: pipeline "
        "spec is not supported by this KFP version). No run was created; yolokf had already created experiment "
        "'yolokf', and registered pipeline 'yolov8-train', which stay on the cluster (rerunning reuses them).\n"
    )
    assert not kfp.runs and len(kfp.pipelines) == 1


def test_server_rejects_an_invalid_spec_like_the_real_one(kfp, tmp_path):
    package = tmp_path / "broken.yaml"
    submit.write_package(job(), None, tmp_path)
    spec, *platform = yaml.safe_load_all((tmp_path / "pipeline.yaml").read_text())
    spec["deploymentSpec"]["executors"] = {}
    package.write_text(yaml.safe_dump_all([spec, *platform]))
    cluster = kfp_api.connect(Connection(kfp.url))
    with pytest.raises(ClusterError, match="rejected the request with 400") as error:
        cluster.call("Creating run 'x'", cluster.client.run_pipeline, "", "x", pipeline_package_path=str(package))
    assert "rejected the request with 400 (Invalid input error: invalid pipeline spec: component comp-" in str(
        error.value
    )
    spec["bogusField"] = 1
    with pytest.raises(Exception, match="bogusField"):
        check_pipeline_spec(spec)


def test_token_never_appears_in_output_logs_or_yaml(secured, caplog, tmp_path, monkeypatch):
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "kfp_server_api", "kfp", "yolokf"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        # kfp_server_api resets urllib3's and its own logger to WARNING with every model object it makes;
        # keep DEBUG, as a user's logging setup might, to see every request and response.
        monkeypatch.setattr(logger, "setLevel", lambda level: None)
    env = {"KFP_TOKEN": TOKEN}
    outputs = []
    ok = cli(run_args(secured, "--upload", "--wait"), env=env)
    assert ok.exit_code == 0, ok.output
    outputs.append(ok.output)
    secured.outcome = Outcome("FAILED", error="boom")
    failed = cli(run_args(secured, "--wait"), env=env)
    assert failed.exit_code == 4
    outputs.append(failed.output)
    secured.fail(500, times=100, path=r"/runs/")
    outputs.append(cli(["status", run_id_of(ok), "--host", secured.url], env=env).output)
    compiled = tmp_path / "p.yaml"
    assert cli(["compile", "--out", compiled], env=env).exit_code == 0

    # With YOLOKF_DEBUG the error propagates with its traceback: that must be clean too.
    with pytest.raises(ClusterError, match="Reading run x failed: ") as raised:
        cli(["status", "x", "--host", secured.url], env={**env, "YOLOKF_DEBUG": "1"})
    outputs.append("".join(traceback.format_exception(raised.value)))

    # The core, with the token read from a file.
    cluster = kfp_api.connect(Connection(secured.url, token_file=_write(tmp_path / "token", TOKEN)))
    secured.faults.clear()
    secured.outcome = Outcome("SUCCEEDED", polls=1)
    options = submit.Submission(upload=True, run_name="debug-logged")
    submitted = submit.submit(cluster, job(epochs=1), options)
    follow.wait(cluster, submitted.run_id, poll_interval=0.01)
    with pytest.raises(ClusterError, match="Reading run missing failed: 404 Not Found") as raised:
        follow.get_report(cluster, "missing")
    outputs.append(str(raised.value))

    uploaded = [r.body.decode() for r in secured.calls("POST", r"/pipelines/upload")]
    run_bodies = [r.body.decode() for r in secured.calls("POST", r"/runs$")]
    haystacks = outputs + [caplog.text, compiled.read_text()] + uploaded + run_bodies
    assert uploaded and run_bodies
    assert re.search(r'"POST /apis/v2beta1/runs HTTP/1.1" 200', caplog.text)  # urllib3 logged every request
    assert "response body" in caplog.text  # and kfp_server_api's
    for text in haystacks:
        assert TOKEN not in text


def _write(path, text):
    path.write_text(text)
    return path


def test_credentials_repr_hides_secrets():
    creds = kfp_api.resolve_credentials(environ={"KFP_TOKEN": TOKEN, "KFP_COOKIE": "session=abc123"})
    assert TOKEN not in repr(creds) and "abc123" not in repr(creds)
    assert creds.source == "token from $KFP_TOKEN and session cookie from $KFP_COOKIE"


def test_wait_core_returns_report_and_raises_run_failed(kfp):
    cluster = kfp_api.connect(Connection(kfp.url))
    submitted = submit.submit(cluster, job(epochs=1), submit.Submission())
    seen: list[str] = []
    report = follow.wait(cluster, submitted.run_id, poll_interval=0.01, on_update=lambda r: seen.append(r.state))
    assert report.state == "SUCCEEDED" and report.current_task.name == "train"
    assert len(seen) >= 2 and seen[-1] == "SUCCEEDED"
    kfp.outcome = Outcome("FAILED", error="oom")
    submitted = submit.submit(cluster, job(epochs=1), submit.Submission())
    with pytest.raises(RunFailedError, match=r"FAILED after \d+s: oom\. Details and logs: "):
        follow.wait(cluster, submitted.run_id, poll_interval=0.01)


def test_default_run_name_is_kubernetes_friendly():
    import datetime

    when = datetime.datetime(2024, 1, 31, 14, 25, 1)
    config = TrainConfig(model="runs/best weights.pt", data="s3://bucket/pets/data.yaml")
    planned = plan_job(config, StepOptions(data_secret="-"), image=IMAGE)
    assert submit.default_run_name(planned, when) == "best-weights-data-20240131-142501"


def test_usage_error_for_a_bad_namespace_value_is_not_needed_single_user(kfp):
    # Single-user KFP ignores the namespace; passing one must not break.
    cluster = kfp_api.connect(Connection(kfp.url, namespace="anything"))
    assert cluster.multi_user is False
    submitted = submit.submit(cluster, job(epochs=1), submit.Submission())
    assert list(kfp.runs) == [submitted.run_id]
    with pytest.raises(UsageError, match=r"--host 'ftp://x' is not an http\(s\) URL"):
        kfp_api.connect(Connection("ftp://x"))


def test_wait_on_a_terminal_shows_a_live_status(kfp):
    cluster = kfp_api.connect(Connection(kfp.url))
    submitted = submit.submit(cluster, job(epochs=1), submit.Submission())
    screen = io.StringIO()
    with RunDisplay(Console(file=screen, force_terminal=True, width=100)) as display:
        report = follow.wait(cluster, submitted.run_id, poll_interval=0.01, on_update=display.update)
    assert report.state == "SUCCEEDED"
    assert "SUCCEEDED" in screen.getvalue() and "task train: SUCCEEDED" in screen.getvalue()


def job(**fields) -> Job:
    return plan_job(TrainConfig(**fields), StepOptions(), image=IMAGE)
