"""Watching a cluster run: `yolokf logs`, the epochs in `run/status --wait`, and why a run failed.

The logs are real: ultralytics' output of real local trainings of each task (tiny, on the built-in data), and a
real failed step. The cluster is tests/loopback/kfp, driven by the real kfp.Client over real sockets; it lists a
run's Argo nodes and serves pod logs as the KFP 2.17 API and UI servers do.
"""

import csv
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import test_remote
from tests.conftest import invoke
from tests.loopback.kfp import KfpServer, Outcome, Poll
from yolokf.runs.progress import EpochParser, parse_epochs, step_error
from yolokf.runs.steplogs import training_steps

IMAGE = test_remote.IMAGE
TOKEN = "kfp-secret-token-3f9a1c"
TINY_EPOCHS = 2
MODELS = {"segment": "yolov8n-seg.yaml", "pose": "yolov8n-pose.yaml", "obb": "yolov8n-obb.yaml"}
MODELS["classify"] = "yolov8n-cls.yaml"
# The step's own code, as the pod runs it, with no terminal: what ultralytics prints is the pod's log.
TRAIN = """
import sys
from pathlib import Path
from yolokf.core.settings import TrainConfig
from yolokf.training.train import train
model, data, epochs, work = sys.argv[1:]
train(TrainConfig(model=model, data=data, epochs=int(epochs), imgsz=64, batch=16, workers=0), Path(work))
"""


# test_remote's: no KFP settings from this machine's environment, fast polls and retries; the loopback server.
_hermetic, kfp = test_remote._hermetic, test_remote.kfp


def pod_output(args: list[str]) -> str:
    """What a pod's log holds: the step's stdout and stderr together, no terminal."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", TRAIN, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    return done.stdout


@pytest.fixture(scope="session")
def tiny_logs(tmp_path_factory):
    """task -> (its training's log, its results.csv rows): one tiny real training per task, made once."""
    made: dict[str, tuple[str, list[dict[str, str]]]] = {}

    def log_of(task: str) -> tuple[str, list[dict[str, str]]]:
        if task not in made:
            from yolokf.core.tasks import EXAMPLE_DATA

            work = tmp_path_factory.mktemp(task)
            text = pod_output([MODELS[task], EXAMPLE_DATA[task], str(TINY_EPOCHS), str(work)])
            results = work / "train" / "results.csv"
            assert results.is_file(), text[-3000:]
            made[task] = text, list(csv.DictReader(results.open()))
        return made[task]

    return log_of


@pytest.fixture(scope="session")
def failed_log(tmp_path_factory) -> str:
    """A real failed training step's log: its dataset does not exist."""
    work = tmp_path_factory.mktemp("failed")
    return pod_output(["yolov8n.yaml", str(work / "missing.yaml"), "1", str(work)])


def assert_epochs_match(epochs, rows) -> None:
    """The parsed epochs are results.csv's rows: same epochs, same losses and validation figures to the digits
    ultralytics prints (%11.3g for figures, %10.4g for losses)."""
    assert len(epochs) == len(rows) > 0
    for epoch, row in zip(epochs, rows, strict=True):
        assert (epoch.epoch, epoch.epochs) == (int(row["epoch"]), len(rows))
        expected = {k: float(v) for k, v in row.items() if k.startswith(("metrics/", "train/"))}
        assert sorted(epoch.metrics) == sorted(expected)
        for key, value in expected.items():
            assert epoch.metrics[key] == pytest.approx(value, rel=5e-3, abs=5e-4), key


def test_parsed_epochs_equal_results_csv_for_detection(trained):
    result, root = trained
    assert result.exit_code == 0, result.output
    (results,) = root.rglob("results.csv")
    rows = list(csv.DictReader(results.open()))
    (log,) = (root / "logs").iterdir()  # the run's log: ultralytics' output, which the console leaves out (issue 26)
    epochs = parse_epochs(log.read_text())
    assert_epochs_match(epochs, rows)
    assert any(e.readable()["mAP50-95"] > 0 for e in epochs), "a figure that can differ, not only zeros"


@pytest.mark.parametrize("task", sorted(MODELS))
def test_parsed_epochs_equal_results_csv_for_each_task(tiny_logs, task):
    text, rows = tiny_logs(task)
    assert_epochs_match(parse_epochs(text), rows)


def test_readable_figures_use_yolokfs_metric_names(tiny_logs):
    from yolokf.core.tasks import task_metrics

    for task in ("segment", "classify"):
        figures = parse_epochs(tiny_logs(task)[0])[-1].readable()
        assert len(figures) >= 2
        assert set(figures) <= set(task_metrics(task)), figures


def test_unexpected_lines_are_ignored(tiny_logs):
    text, rows = tiny_logs("classify")
    noise = [
        "",
        "      1/2   garbage: 100% ━━━━ 8/8 zz",
        "                   all        nan",
        "      Epoch",
        "\x1b[K\x1b[34m\x1b[1mtrain: \x1b[0mScanning 1/2",
        "Class Images: 100% 1/1 ?",
        "all 1 2 3",
        "2/0 0G 1 2: 100% ━━ 1/1 1:0x",
    ]
    parser = EpochParser()
    for line in noise:
        assert parser.feed(line) is None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        parser.feed(line)
        if i % 7 == 0:
            parser.feed_all(noise[1:3])
    assert [e.epoch for e in parser.epochs] == [int(r["epoch"]) for r in rows]


def test_step_error_is_the_exception_line_of_a_real_failed_step(failed_log):
    text = failed_log
    assert "Traceback (most recent call last)" in text
    error = step_error(text.splitlines())
    assert error is not None and error.startswith("yolokf.core.errors.DataError: ")
    assert "missing.yaml" in error


def submit(kfp: KfpServer, *extra, env=None) -> str:
    result = invoke(["run", "--host", kfp.url, "--epochs", str(TINY_EPOCHS), "--run-name", "r1", *extra], env=env)
    assert result.exit_code == 0, result.output
    return re.search(r"Run id: (\S+)", result.stdout)[1]


def epoch_chunks(text: str) -> list[str]:
    """The log as it stands after each epoch: the chunks a pod's log grows by between polls."""
    parts = re.split(r"(?m)^(?=[ \t]+Epoch[ \t]+GPU_mem)", text)
    return [p for p in parts if p]


def test_logs_prints_the_training_log_and_its_tail(kfp, tiny_logs):
    text, _ = tiny_logs("classify")
    kfp.outcome = Outcome(schedule=[Poll("SUCCEEDED", tasks={"train": "SUCCEEDED"}, logs={"train": text})])
    run_id = submit(kfp)
    whole = invoke(["logs", run_id, "--host", kfp.url])
    assert whole.exit_code == 0, whole.output
    assert whole.stdout == text
    tail = invoke(["logs", run_id, "--host", kfp.url, "--tail", "4"])
    assert tail.exit_code == 0, tail.output
    assert tail.stdout.splitlines() == text.splitlines()[-4:]
    request = kfp.calls("GET", r"/k8s/pod/logs$")[-1]
    assert request.query == {"podname": kfp.pod_name(run_id, "train")}, "single-user: no namespace"


def test_logs_of_a_step_or_trial_that_does_not_exist_lists_what_exists(kfp):
    kfp.outcome = Outcome(schedule=[Poll("RUNNING", tasks={"train": "RUNNING"})])
    run_id = submit(kfp)
    wrong = invoke(["logs", run_id, "--host", kfp.url, "--step", "evaluate"])
    assert wrong.exit_code == 2, wrong.output
    assert wrong.stderr == (
        f"Error: Run r1 ({run_id}) has no step 'evaluate'; its steps: train. Pick one with --step NAME.\n"
    )
    trial = invoke(["logs", run_id, "--host", kfp.url, "--trial", "3"])
    assert trial.exit_code == 2, trial.output
    assert trial.stderr == (
        f"Error: The training step of run {run_id} has no trial 3; its trials: none (it is not in a sweep).\n"
    )
    missing = invoke(["logs", "no-such-run", "--host", kfp.url])
    assert missing.exit_code == 1 and "Reading run no-such-run failed: 404 Not Found" in missing.stderr


def test_logs_follow_prints_each_new_line_once_until_the_step_ends(kfp, tiny_logs):
    text, rows = tiny_logs("classify")
    chunks = epoch_chunks(text)
    assert len(chunks) == len(rows) + 1  # what comes before the first epoch, then one per epoch
    polls = [Poll("RUNNING", tasks={"train": "RUNNING"}, logs={"train": chunk}) for chunk in chunks]
    starting = [Poll("PENDING", tasks={}), Poll("RUNNING", tasks={"fetch-dataset": "RUNNING", "train": "PENDING"})]
    kfp.outcome = Outcome(schedule=[*starting, *polls, Poll("SUCCEEDED", tasks={"train": "SUCCEEDED"})])
    run_id = submit(kfp)
    followed = invoke(["logs", run_id, "--host", kfp.url, "--follow"])
    assert followed.exit_code == 0, followed.output
    assert followed.stdout == text
    assert followed.stderr == "Run r1 is PENDING; waiting for the training step to start.\n"
    assert len(kfp.calls("GET", r"/k8s/pod/logs$")) >= len(chunks)


def test_logs_follow_of_a_failed_step_exits_4(kfp):
    failing = "Traceback (most recent call last):\n  File step.py\nRuntimeError: CUDA out of memory\n"
    kfp.outcome = Outcome(
        schedule=[
            Poll("RUNNING", tasks={"train": "RUNNING"}, logs={"train": "epoch 1\n"}),
            Poll("FAILED", tasks={"train": "FAILED"}, logs={"train": failing}),
        ]
    )
    run_id = submit(kfp)
    followed = invoke(["logs", run_id, "--host", kfp.url, "-f"])
    assert followed.exit_code == 4, followed.output
    assert followed.stdout == "epoch 1\n" + failing
    assert followed.stderr == f"Error: Step train of run {run_id} ended FAILED.\n"


def test_a_deleted_pods_log_comes_from_the_archive_through_the_api_server(kfp, tiny_logs):
    text, _ = tiny_logs("classify")
    kfp.ui_logs = False  # --host is the API server itself (a port-forward of svc/ml-pipeline)
    kfp.outcome = Outcome(
        schedule=[Poll("SUCCEEDED", tasks={"train": "SUCCEEDED"}, logs={"train": text}, gone=("train",))]
    )
    run_id = submit(kfp)
    result = invoke(["logs", run_id, "--host", kfp.url])
    assert result.exit_code == 0, result.output
    assert result.stdout == text
    (request,) = kfp.calls("GET", r"^/apis/v1alpha1/runs/")
    assert request.path == f"/apis/v1alpha1/runs/{run_id}/nodes/{kfp.pod_name(run_id, 'train')}/log"


def test_no_log_at_all_is_one_line_naming_both_answers(kfp):
    kfp.ui_logs, kfp.archive_logs = False, False
    kfp.outcome = Outcome(
        schedule=[Poll("SUCCEEDED", tasks={"train": "SUCCEEDED"}, logs={"train": "x\n"}, gone=("train",))]
    )
    run_id = submit(kfp)
    pod = kfp.pod_name(run_id, "train")
    result = invoke(["logs", run_id, "--host", kfp.url])
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        f"Error: No log of step train could be read: the UI's /k8s/pod/logs answered 404 (404 page not found); "
        f"the API's log answered: BadRequestError: Failed to read logs for run {run_id}: "
        f'InternalServerError: Failed to read logs from pod {pod} due to error opening log stream: pods "{pod}" '
        f"not found. Its pod is {pod}.\n"
    )


def test_a_server_without_log_endpoints_is_followed_by_state_alone(kfp, tiny_logs):
    text, _ = tiny_logs("classify")
    kfp.ui_logs = kfp.api_logs = False
    kfp.outcome = Outcome(
        schedule=[Poll("RUNNING", tasks={"train": "RUNNING"}, logs={"train": chunk}) for chunk in epoch_chunks(text)]
        + [Poll("SUCCEEDED", tasks={"train": "SUCCEEDED"})]
    )
    result = invoke(["run", "--host", kfp.url, "--wait", "--run-name", "r1"])
    assert result.exit_code == 0, result.output
    said = [line for line in result.stderr.splitlines() if line.startswith("No log of train could be read")]
    assert len(said) == 1, result.stderr
    assert said[0].endswith("; following by state alone.")
    assert "epoch" not in result.stdout
    assert re.search(r"Run r1 SUCCEEDED in \d+s", result.stdout)


def test_run_wait_off_a_terminal_prints_one_line_per_new_epoch(kfp, tiny_logs):
    text, rows = tiny_logs("classify")
    chunks = epoch_chunks(text)
    polls = [Poll("RUNNING", tasks={"train": "RUNNING"}, logs={"train": c}) for c in chunks for _ in range(2)]
    kfp.outcome = Outcome(schedule=[*polls, Poll("SUCCEEDED", tasks={"train": "SUCCEEDED"})])
    result = invoke(["run", "--host", kfp.url, "--wait", "--run-name", "r1"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if " epoch " in line]
    expected = [
        rf"train  epoch {r['epoch']}/{len(rows)}  top1_accuracy {float(r['metrics/accuracy_top1']):.3f}" for r in rows
    ]
    assert len(lines) == len(rows), result.stdout
    for line, pattern in zip(lines, expected, strict=True):
        assert re.match(pattern, line), (line, pattern)
    assert re.search(r"\(\d+s left\)$", lines[0]) and "left" not in lines[-1]


def test_status_wait_shows_the_epochs_too(kfp, tiny_logs):
    text, rows = tiny_logs("pose")
    polls = [Poll("RUNNING", tasks={"train": "RUNNING"}, logs={"train": c}) for c in epoch_chunks(text)]
    kfp.outcome = Outcome(schedule=[*polls, Poll("SUCCEEDED", tasks={"train": "SUCCEEDED"})])
    run_id = submit(kfp)
    result = invoke(["status", run_id, "--host", kfp.url, "--wait"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if " epoch " in line]
    assert len(lines) == len(rows), result.stdout
    last = rows[-1]
    assert lines[-1] == (
        f"train  epoch {len(rows)}/{len(rows)}  mAP50 {float(last['metrics/mAP50(B)']):.3f}  "
        f"mAP50-95 {float(last['metrics/mAP50-95(B)']):.3f}"
    )


def test_a_nodes_run_shows_its_launchers_epochs_and_log(kfp, tiny_logs):
    """`--nodes 2`: the training step is the launcher, task yolo-train-nodes, whose log carries node 0's output;
    `run --wait` shows its epochs and `yolokf logs` prints it (issue 24, item 7)."""
    text, rows = tiny_logs("classify")
    polls = [Poll("RUNNING", tasks={"train": "RUNNING"}, logs={"train": c}) for c in epoch_chunks(text)]
    kfp.outcome = Outcome(schedule=[*polls, Poll("SUCCEEDED", tasks={"train": "SUCCEEDED"})])
    nodes = ["--nodes", "2", "--checkpoint-pvc", "ckpt"]
    result = invoke(["run", "--host", kfp.url, "--epochs", str(TINY_EPOCHS), "--wait", "--run-name", "r1", *nodes])
    assert result.exit_code == 0, result.output
    run_id = re.search(r"Run id: (\S+)", result.stdout)[1]
    assert kfp.runs[run_id].steps["train"].key == "yolo-train-nodes"
    lines = [line for line in result.stdout.splitlines() if " epoch " in line]
    assert [line.split("  ")[1] for line in lines] == [f"epoch {r['epoch']}/{len(rows)}" for r in rows], result.stdout
    whole = invoke(["logs", run_id, "--host", kfp.url])
    assert whole.exit_code == 0, whole.output
    assert whole.stdout == text
    assert kfp.calls("GET", r"/k8s/pod/logs$")[-1].query["podname"] == kfp.pod_name(run_id, "train")


def test_run_wait_on_a_terminal_updates_the_epoch_in_place(kfp, tiny_logs):
    text, rows = tiny_logs("classify")
    polls = [Poll("RUNNING", tasks={"train": "RUNNING"}, logs={"train": c}) for c in epoch_chunks(text)]
    kfp.outcome = Outcome(
        schedule=[*(p for p in polls for _ in range(3)), Poll("SUCCEEDED", tasks={"train": "SUCCEEDED"})]
    )
    screen = run_on_a_terminal(["run", "--host", kfp.url, "--wait", "--run-name", "r1"])
    assert "Run r1 SUCCEEDED" in screen
    assert "\x1b[?25l" in screen, "rich Live hides the cursor while it redraws"
    assert re.search(r"\x1b\[\d*A", screen), "and moves up to redraw in place"
    for row in rows:
        assert f"train  epoch {row['epoch']}/{len(rows)}" in screen


def run_on_a_terminal(args: list[str]) -> str:
    """`yolokf ARGS` in a subprocess whose stdout is a pseudo-terminal; what it drew."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "TERM": "xterm-256color", "COLUMNS": "120"}
    env["YOLOKF_POLL_INTERVAL"] = "0.3"  # slower than rich Live's 4 redraws a second, to see each state drawn
    env.pop("NO_COLOR", None)
    main, child = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "yolokf", *args], stdout=child, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env
    )
    os.close(child)
    screen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.5)
        if ready:
            try:
                data = os.read(main, 65536)
            except OSError:  # the terminal closed: the process ended
                break
            if not data:
                break
            screen += data
        elif process.poll() is not None:
            break
    os.close(main)
    assert process.wait(timeout=30) == 0, (screen.decode(errors="replace")[-2000:], process.stderr.read())
    return screen.decode(errors="replace")


def test_a_failed_run_shows_the_steps_own_error_and_the_logs_command(kfp, failed_log):
    failed = failed_log
    error = step_error(failed.splitlines())
    kfp.outcome = Outcome(
        schedule=[
            Poll("RUNNING", tasks={"train": "RUNNING"}, logs={"train": failed}),
            Poll("FAILED", tasks={"train": "FAILED"}),
        ]
    )
    result = invoke(["run", "--host", kfp.url, "--wait", "--run-name", "r1"])
    assert result.exit_code == 4, result.output
    run_id = re.search(r"Run id: (\S+)", result.stdout)[1]
    command = f"yolokf logs {run_id} --step train --host {kfp.url}"
    assert re.fullmatch(
        rf"Error: Run r1 \({run_id}\) FAILED after \d+s: step train: {re.escape(error)}\. Whole log: "
        rf"{re.escape(command)}; details: {re.escape(kfp.url)}/#/runs/details/{run_id}\n",
        result.stderr.splitlines(keepends=True)[-1],
    )
    status = invoke(["status", run_id, "--host", kfp.url])
    assert status.exit_code == 0, status.output
    assert f"Step train failed: {error}\nWhole log: {command}\n" in status.stdout


def test_a_failed_step_without_an_error_line_shows_its_last_20_lines(kfp):
    log = "".join(f"line {i}\n" for i in range(30)) + "Killed\n"
    kfp.outcome = Outcome(
        schedule=[
            Poll("RUNNING", tasks={"train": "RUNNING"}, logs={"train": log}),
            Poll("FAILED", tasks={"train": "FAILED"}, gone=("train",)),
        ]
    )
    result = invoke(["run", "--host", kfp.url, "--wait", "--run-name", "r1"])
    assert result.exit_code == 4, result.output
    shown = [line.removeprefix("  | ") for line in result.stderr.splitlines() if line.startswith("  | ")]
    assert shown == log.splitlines()[-20:]
    assert "step train failed; its last 20 log lines are above. Whole log: yolokf logs" in result.stderr


def test_a_sweep_shows_a_row_per_running_trial_and_logs_takes_a_trial(kfp, tiny_logs):
    text, rows = tiny_logs("classify")
    chunks = epoch_chunks(text)
    polls = [
        Poll("RUNNING", tasks={"trial": "RUNNING"}, logs={"trial#0": chunk, "trial#1": chunk.replace("all ", "all  ")})
        for chunk in chunks
    ]
    kfp.outcome = Outcome(schedule=[*polls, Poll("SUCCEEDED", tasks={"trial": "SUCCEEDED", "best trial": "SUCCEEDED"})])
    args = ["tune", "--host", kfp.url, "--trials", "2", "--set", "optimizer=SGD", "--space", "lr0=loguniform:1e-4:1e-1"]
    result = invoke([*args, "--checkpoint-pvc", "ckpt", "--epochs", str(TINY_EPOCHS), "--wait", "--run-name", "s1"])
    assert result.exit_code == 0, result.output
    for trial in (0, 1):
        lines = [line for line in result.stdout.splitlines() if line.startswith(f"trial #{trial}  epoch ")]
        assert len(lines) == len(rows), result.stdout
        best = max(float(r["metrics/accuracy_top1"]) for r in rows)
        assert lines[-1].endswith(f"best top1_accuracy {best:.3f}"), lines[-1]
    run_id = re.search(r"Run id: (\S+)", result.stdout)[1]
    both = invoke(["logs", run_id, "--host", kfp.url, "--step", "trial"])
    assert both.exit_code == 2 and "ran once per trial: add --trial N, one of 0, 1." in both.stderr
    second = invoke(["logs", run_id, "--host", kfp.url, "--step", "trial", "--trial", "1"])
    assert second.exit_code == 0, second.output
    assert second.stdout == text.replace("all ", "all  ")
    assert kfp.calls("GET", r"/k8s/pod/logs$")[-1].query["podname"] == kfp.pod_name(run_id, "trial#1")


def test_a_halving_sweeps_later_round_shows_its_epochs_and_logs(kfp, tiny_logs):
    """Round 2 trains as task yolo-train-2 (kfp keys a second task of a name so), in a loop that hangs under both
    the download and round 1's selection, which it depends on."""
    text, rows = tiny_logs("classify")
    done = {"trial round 1": "SUCCEEDED", "select round 1": "SUCCEEDED"}
    polls = [
        Poll("RUNNING", tasks={**done, "trial round 2": "RUNNING"}, logs={"trial round 2": chunk})
        for chunk in epoch_chunks(text)
    ]
    ended = {**done, "trial round 2": "SUCCEEDED", "best trial": "SUCCEEDED"}
    kfp.outcome = Outcome(schedule=[*polls, Poll("SUCCEEDED", tasks=ended)])
    args = ["tune", "--host", kfp.url, "--trials", "2", "--halving", "2", "--set", "optimizer=SGD"]
    args += ["--space", "lr0=loguniform:1e-4:1e-1", "--checkpoint-pvc", "ckpt", "--epochs", str(TINY_EPOCHS)]
    result = invoke([*args, "--wait", "--run-name", "s1"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("trial round 2 #0  epoch ")]
    assert len(lines) == len(rows), result.stdout
    run_id = re.search(r"Run id: (\S+)", result.stdout)[1]
    assert kfp.runs[run_id].steps["trial round 2#0"].key == "yolo-train-2"
    rounds = invoke(["logs", run_id, "--host", kfp.url])
    assert rounds.exit_code == 2, rounds.output
    assert rounds.stderr == (
        f"Error: Run s1 ({run_id}) has several training steps: trial round 1, trial round 2. Pick one with "
        "--step NAME.\n"
    )
    second = invoke(["logs", run_id, "--host", kfp.url, "--step", "trial round 2", "--trial", "0"])
    assert second.exit_code == 0, second.output
    assert second.stdout == text
    assert kfp.calls("GET", r"/k8s/pod/logs$")[-1].query["podname"] == kfp.pod_name(run_id, "trial round 2#0")


def test_multi_user_reads_the_live_log_in_the_profile_namespace(tiny_logs):
    text, _ = tiny_logs("classify")
    server = KfpServer(multi_user=True).start()
    try:
        server.outcome = Outcome(schedule=[Poll("RUNNING", tasks={"train": "RUNNING"}, logs={"train": text})])
        run_id = submit(server, "--namespace", "kubeflow-user")
        result = invoke(["logs", run_id, "--host", server.url, "--namespace", "kubeflow-user"])
        assert result.exit_code == 0, result.output
        assert result.stdout == text
        request = server.calls("GET", r"/k8s/pod/logs$")[-1]
        assert request.query == {"podname": server.pod_name(run_id, "train"), "podnamespace": "kubeflow-user"}
    finally:
        server.stop()


def test_pod_names_follow_the_steps_template_with_retries_and_pod_labels(kfp):
    kfp.outcome = Outcome(schedule=[Poll("RUNNING", tasks={"train": "RUNNING"}, logs={"train": "hello\n"})])
    run_id = submit(kfp, "--retries", "2", "--pod-label", "team=vision")
    result = invoke(["logs", run_id, "--host", kfp.url])
    assert result.exit_code == 0 and result.stdout == "hello\n", result.output
    podname = kfp.calls("GET", r"/k8s/pod/logs$")[-1].query["podname"]
    workflow = kfp.runs[run_id].workflow
    assert re.fullmatch(rf"{workflow}-metadata-0-1-retry-system-container-impl-\d+", podname)
    assert podname == kfp.pod_name(run_id, "train")


def test_log_requests_carry_the_token_and_never_show_it():
    server = KfpServer(token=TOKEN).start()
    try:
        server.outcome = Outcome(schedule=[Poll("FAILED", tasks={"train": "FAILED"}, logs={"train": "Error: bad\n"})])
        env = {"KFP_TOKEN": TOKEN}
        run_id = submit(server, env=env)
        outputs = [invoke(["logs", run_id, "--host", server.url], env=env)]
        outputs.append(invoke(["status", run_id, "--host", server.url], env=env))
        assert outputs[0].stdout == "Error: bad\n"
        assert "Step train failed: Error: bad" in outputs[1].stdout
        requests = server.calls("GET", r"/k8s/pod/logs$")
        assert len(requests) == 2 and all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in requests)
        assert not any(TOKEN in o.output for o in outputs)
    finally:
        server.stop()


def test_training_steps_are_the_task_keys_kfp_gives_the_training_components(tmp_path):
    import yaml

    for nodes, key in (("1", "yolo-train"), ("2", "yolo-train-nodes")):
        out = tmp_path / f"p{nodes}.yaml"
        result = invoke(["compile", "--nodes", nodes, "--checkpoint-pvc", "ckpt", "--out", out])
        assert result.exit_code == 0, result.output
        spec = next(yaml.safe_load_all(out.read_text()))
        assert key in training_steps()
        assert spec["root"]["dag"]["tasks"][key]["componentRef"]["name"] == f"comp-{key}"
