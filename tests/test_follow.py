"""Following a cluster run where the server behaves as a KFP 2.17 cluster does, not as a tidy one (issue 24): its
Argo node graph, a run someone terminated (FAILED, not CANCELED), and an API that answers 503 or drops the
connection for a while. The cluster is tests/loopback/kfp, driven by the real kfp.Client over real sockets.
"""

import re

import pytest

from tests import test_remote
from tests.conftest import invoke
from tests.loopback.kfp import KfpServer, Outcome, Poll
from yolokf.runs import follow, kfp_api
from yolokf.runs.kfp_api import Connection

# test_remote's: no KFP settings from this machine's environment, fast polls and retries; the loopback server.
_hermetic, kfp = test_remote._hermetic, test_remote.kfp

LOG = [f"line {i}\n" for i in range(6)]


def submit(server: KfpServer, *extra: str) -> str:
    result = invoke(["run", "--host", server.url, "--epochs", "2", "--run-name", "r1", *extra])
    assert result.exit_code == 0, result.output
    return re.search(r"Run id: (\S+)", result.stdout)[1]


def growing_log(polls: int = len(LOG)) -> Outcome:
    """The training runs for `polls` get_runs, its log a line longer at each, then the run succeeds."""
    running = [
        Poll("RUNNING", tasks={"fetch-dataset": "SUCCEEDED", "train": "RUNNING"}, logs={"train": line}) for line in LOG
    ]
    return Outcome(
        schedule=[*running[:polls], Poll("SUCCEEDED", tasks={"fetch-dataset": "SUCCEEDED", "train": "SUCCEEDED"})]
    )


def one_line() -> Outcome:
    """The training runs for ever, its log one line."""
    running = {"train": "RUNNING"}
    return Outcome(
        schedule=[Poll("RUNNING", tasks=running, logs={"train": "epoch 1\n"}), Poll("RUNNING", tasks=running)]
    )


def test_logs_and_status_find_each_step_where_argo_hangs_it(kfp):
    """On a 2.17 cluster `root` hangs under `root-driver(0)`, the training under its driver, and that driver under
    the download it reads: names come from the DAGs, not from where nodes hang (issue 24, item 10)."""
    tasks = {"fetch-dataset": "SUCCEEDED", "train": "RUNNING"}
    logs = {"fetch-dataset": "fetched 8 files\n", "train": "epoch 1\n"}
    kfp.outcome = Outcome(schedule=[Poll("RUNNING", tasks=tasks, logs=logs), Poll("RUNNING", tasks=tasks)])
    run_id = submit(kfp)
    training = invoke(["logs", run_id, "--host", kfp.url])
    assert training.exit_code == 0, training.output
    assert training.stdout == "epoch 1\n"
    download = invoke(["logs", run_id, "--host", kfp.url, "--step", "fetch-dataset"])
    assert download.exit_code == 0, download.output
    assert download.stdout == "fetched 8 files\n"
    pods = [r.query["podname"] for r in kfp.calls("GET", r"/k8s/pod/logs$")]
    assert pods == [kfp.pod_name(run_id, "train"), kfp.pod_name(run_id, "fetch-dataset")]
    status = invoke(["status", run_id, "--host", kfp.url])
    assert re.search(r"fetch-dataset\s+│\s+SUCCEEDED\s+│", status.stdout), status.stdout
    assert re.search(r"train\s+│\s+RUNNING\s+│", status.stdout), status.stdout
    # The server lists task details in its map's order, not the DAG's (tests/loopback/kfp/argo.py): the table
    # shows them in the order they started.
    rows = [m[1] for m in re.finditer(r"│ (\S+)\s+│\s+(?:SUCCEEDED|RUNNING)\s+│", status.stdout)]
    assert rows == ["fetch-dataset", "train"], status.stdout


def _terminate_after(server: KfpServer, polls: int) -> None:
    """Terminate the run after its `polls`-th get_run, as someone in the UI would."""

    def hook(run_id: str, seen: int) -> None:
        if seen == polls:
            with server._lock:
                server._terminate(run_id)

    server.after_get_run = hook


def test_a_terminated_run_is_reported_as_terminated_not_as_a_failed_step(kfp):
    """KFP 2.17 ends a terminated run FAILED and its killed pods FAILED: yolokf says it was terminated, without a
    failed step's error or log tail (issue 24, item 11)."""
    kfp.outcome = one_line()
    _terminate_after(kfp, 2)
    result = invoke(["run", "--host", kfp.url, "--wait", "--run-name", "r1"])
    assert result.exit_code == 4, result.output
    run_id = re.search(r"Run id: (\S+)", result.stdout)[1]
    assert kfp.runs[run_id].data["state"] == "FAILED"
    assert re.fullmatch(
        rf"Error: Run r1 \({run_id}\) was terminated after \d+s: stopped on request, no step failed on its own "
        rf"\(KFP reports a terminated run as FAILED\)\. {re.escape(kfp.url)}/#/runs/details/{run_id}\n",
        result.stderr.splitlines(keepends=True)[-1],
    )
    assert "  | " not in result.stderr and "Whole log" not in result.stderr
    status = invoke(["status", run_id, "--host", kfp.url])
    assert status.exit_code == 0, status.output
    assert f"Run r1 ({run_id}): FAILED" in status.stdout
    assert "Error: The run was terminated (KFP reports a terminated run as FAILED); no step failed on its own." in (
        status.stdout
    )
    assert "Step train failed" not in status.stdout and "Whole log" not in status.stdout


def test_logs_follow_of_a_terminated_run_says_the_step_was_stopped(kfp):
    kfp.outcome = one_line()
    run_id = submit(kfp)
    _terminate_after(kfp, 2)
    followed = invoke(["logs", run_id, "--host", kfp.url, "--follow"])
    assert followed.exit_code == 4, followed.output
    assert followed.stdout == "epoch 1\n"
    assert followed.stderr == (
        f"Error: Step train of run {run_id} was stopped: the run was terminated (KFP reports the step FAILED).\n"
    )


def test_terminating_a_run_that_is_already_stopping_is_not_an_error(kfp):
    """A second terminate of a CANCELING run, or of one that ended, is answered 400 (KFP 2.17 run_store.go
    823-844): the run is stopping as asked, so yolokf leaves it at that."""
    kfp.outcome = Outcome(hang=True)
    run_id = submit(kfp)
    cluster = kfp_api.connect(Connection(kfp.url))
    follow.terminate(cluster, run_id)
    follow.terminate(cluster, run_id)  # CANCELING
    cluster.client.get_run(run_id)
    cluster.client.get_run(run_id)
    assert kfp.runs[run_id].data["state"] == "FAILED"
    follow.terminate(cluster, run_id)  # FAILED
    assert [r.status for r in kfp.calls("POST", rf"/runs/{run_id}:terminate$")] == [200, 400, 400]


def _burst(server: KfpServer, path: str) -> None:
    """3 consecutive 503s, then a dropped connection, for the next requests to `path`: a poll's every attempt."""
    server.fail(503, times=3, method="GET", path=path, message="upstream connect error")
    server.fail(0, times=1, method="GET", path=path)


def _burst_after(server: KfpServer, polls: int, *paths: str) -> None:
    def hook(run_id: str, seen: int) -> None:
        if seen == polls:
            for path in paths:
                _burst(server, path.format(run_id=run_id))

    server.after_get_run = hook


def _injected(server: KfpServer, path: str) -> list[int]:
    return [r.status for r in server.requests if re.search(path, r.path) and r.status in (0, 503)]


@pytest.mark.parametrize("command", ["run --wait", "status --wait", "logs --follow"])
def test_a_follow_rides_out_a_burst_of_503s_and_a_dropped_connection(kfp, monkeypatch, command):
    """The API answers 503 three times and then drops the connection: every attempt of one poll fails (kfp_api's
    default 4 attempts). The follow waits it out and ends as the run does (issue 24, docs/reliability.md)."""
    monkeypatch.setattr(kfp_api, "RETRY", kfp_api.RetryPolicy(first_delay=0.01))  # the attempts yolokf makes
    kfp.outcome = growing_log()
    run_path, log_path = r"/runs/{run_id}$", r"/k8s/pod/logs$"
    if command == "run --wait":
        _burst_after(kfp, 2, run_path)
        result = invoke(["run", "--host", kfp.url, "--epochs", "2", "--run-name", "r1", "--wait"])
        run_id = re.search(r"Run id: (\S+)", result.stdout)[1]
    else:
        run_id = submit(kfp)
        _burst_after(kfp, 2, run_path, *([log_path] if command == "logs --follow" else []))
        verb, flag = command.split()
        result = invoke([verb, run_id, "--host", kfp.url, flag])
    assert result.exit_code == 0, result.output
    if command == "logs --follow":
        assert result.stdout == "".join(LOG), "every line once, none lost"
        assert sorted(_injected(kfp, log_path)) == [0, 503, 503, 503]
    else:
        assert re.search(r"Run r1 SUCCEEDED in \d+s", result.stdout), result.stdout
    assert sorted(_injected(kfp, rf"/runs/{run_id}$")) == [0, 503, 503, 503]
    assert f"Reading run {run_id} failed: the connection to" in result.stderr
    assert "yolokf keeps following for up to 10m00s; the run itself is not affected." in result.stderr
    assert f"Reading run {run_id}: the API answers again, after " in result.stderr


def test_logs_follow_goes_on_past_a_rotated_log_file(kfp):
    """The kubelet serves only a pod's newest log file (rotated past containerLogMaxSize): the follow finds where it
    stopped by content, so it goes on to the last line, printing none twice (issue 24, item 11)."""
    log = [f"epoch {i} loss {1 / (i + 1):.4f}\n" for i in range(30)]  # 18 to 19 bytes a line
    kfp.log_max_bytes = 100  # about 5 lines a file: 5 rotations or more
    running = [
        Poll("RUNNING", tasks={"fetch-dataset": "SUCCEEDED", "train": "RUNNING"}, logs={"train": line}) for line in log
    ]
    kfp.outcome = Outcome(
        schedule=[*running, Poll("SUCCEEDED", tasks={"fetch-dataset": "SUCCEEDED", "train": "SUCCEEDED"})]
    )
    run_id = submit(kfp)
    result = invoke(["logs", run_id, "--host", kfp.url, "--follow"])
    assert result.exit_code == 0, result.output
    printed = result.stdout.splitlines(keepends=True)
    numbers = [int(line.split()[1]) for line in printed]
    assert len(numbers) >= 20 and numbers == sorted(set(numbers)), "in order, none twice"
    assert printed[-1] == log[-1], "to the last line"


def test_unseen_finds_where_a_log_read_again_continues():
    from yolokf.runs.steplogs import unseen

    old = [f"{i}" for i in range(30)]
    assert unseen([], old) == old
    assert unseen(old, [*old, "30", "31"]) == ["30", "31"], "grown"
    assert unseen(old, ["27", "28", "29", "30"]) == ["30"], "rotated: the new file starts inside what was read"
    assert unseen(old, ["40", "41"]) == ["40", "41"], "rotated past what was read: all of it is new"
    assert unseen(old, old) == [], "unchanged"
    assert unseen(["a", "b"], ["a", "b", "a", "b", "c"]) == ["c"], "the latest place the window ends"
