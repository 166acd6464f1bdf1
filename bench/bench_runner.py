"""`--runner docker` against the subprocess runner, and how fast a download step refuses a dataset it cannot fetch
(issue 23).

    sudo python bench/bench_runner.py [--epochs 15] [--out bench-runner.json] [--refusal-only]

Starts its own dockerd with the tests' cached data root (tests/conftest_docker.py) and builds the yolokf image on
the tests' Debian + torch stand-in base (cached by content), then:

1. the README quickstart's training (`yolokf run --model yolov8n.yaml --data shapes --epochs 15 --imgsz 128
   --set nbs=16`) with `--runner subprocess` and with `--runner docker`, in the same session: wall time of each
   (the price of a container a step) and the final metrics of each, which should agree to the last digit;
2. a dataset YAML in ultralytics' format whose `download:` cannot be reached, as on an offline cluster: a refusing
   port, and a port that takes the connection and never answers: seconds from the download step's start to its failure,
   as kfp.local's log stamps them (goal: under 10 s), and the step function's own time in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from conftest_docker import ensure_stand_in_base, running_engine  # noqa: E402

QUICKSTART = ["--model", "yolov8n.yaml", "--data", "shapes", "--imgsz", "128", "--set", "nbs=16"]
_STAMP = re.compile(
    r"^(\d\d:\d\d:\d\d\.\d{3}) - [A-Z]+ - (?:Executing task|Task) '([^']*)'(?: finished with status (\w+))?"
)


def yolokf(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "yolokf", *args], capture_output=True, text=True, env=env)
    return done, time.perf_counter() - started


def final_metrics(root: Path) -> dict[str, float]:
    (run,) = root.glob("yolov8-train-*")
    output = json.loads((run / "yolo-train" / "executor_output.json").read_text())
    metadata = output["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    return {k: v for k, v in metadata.items() if isinstance(v, (int, float))}


def step_seconds(log: Path, task: str) -> float:
    """From kfp.local's 'Executing task' record of `task` to its 'finished' record, in its log."""
    stamps = {}
    for line in log.read_text().splitlines():
        if (found := _STAMP.match(re.sub(r"\x1b\[[0-9;]*m", "", line))) and found[2] == task:
            stamps["end" if found[3] else "start"] = datetime.strptime(found[1], "%H:%M:%S.%f")
    return (stamps["end"] - stamps["start"]).total_seconds()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def silent_port() -> tuple[socket.socket, int]:
    """A loopback port that takes the connection (the kernel's backlog) and never answers, as a firewall that
    drops the reply or a proxy that hangs: the probe waits for its timeout. Keep the socket open while used."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    return listener, int(listener.getsockname()[1])


def unreachable_yaml(folder: Path, url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mini.yaml"
    path.write_text(
        f"path: mini\ntrain: images/train\nval: images/val\nnames:\n  0: circle\n  1: square\ndownload: {url}\n"
    )
    return path


def in_process_refusal(yaml_path: Path, tmp: Path) -> float:
    """The download step's function, as its pod runs it, with no shared disk: seconds to its DataError."""
    from yolokf.core.errors import DataError
    from yolokf.data.fetch import fetch_step

    class Artifact:
        path = str(tmp / "artifact")
        metadata: dict = {}

    started = time.perf_counter()
    try:
        fetch_step(uri=str(yaml_path), dataset=Artifact())
    except DataError:
        return time.perf_counter() - started
    raise AssertionError("the download step did not refuse")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--refusal-only", action="store_true", help="only part 2")
    options = parser.parse_args()
    results: dict[str, object] = {}
    with running_engine() as engine, tempfile.TemporaryDirectory(prefix="yolokf-bench-") as tmp_name:
        tmp = Path(tmp_name)
        client = engine.client()
        base = ensure_stand_in_base(client)
        from yolokf.image.context import BuildSpec, plan_build
        from yolokf.image.engine import build_image

        image = build_image(plan_build(BuildSpec(base_image=base)), client=client).plan.reference
        env = {**os.environ, "DOCKER_HOST": engine.host, "YOLOKF_OFFLINE": "1", "YOLO_OFFLINE": "true"}
        runs: dict[str, object] = {}
        for runner in () if options.refusal_only else ("subprocess", "docker"):
            root = tmp / runner
            args = ["run", *QUICKSTART, "--epochs", str(options.epochs), "--runner", runner, "--image", image]
            done, seconds = yolokf(*args, "--pipeline-root", str(root), env=env)
            if done.returncode:
                sys.exit(f"{runner}: {done.stderr[-2000:]}")
            runs[runner] = {"seconds": round(seconds, 1), "metrics": final_metrics(root)}
            print(f"{runner}: {seconds:.1f} s, {runs[runner]['metrics']}", flush=True)
        if runs:
            runs["ratio"] = round(runs["docker"]["seconds"] / runs["subprocess"]["seconds"], 2)  # type: ignore[index]
            runs["metrics_equal"] = runs["docker"]["metrics"] == runs["subprocess"]["metrics"]  # type: ignore[index]
            results["quickstart"] = runs
        refusals = {}
        silent, port = silent_port()
        for name, url in (
            ("refusing port", f"http://127.0.0.1:{closed_port()}/mini.zip"),
            ("no answer", f"http://127.0.0.1:{port}/mini.zip"),
        ):
            data = unreachable_yaml(tmp / name.replace(" ", "-"), url)
            root = tmp / f"refuse-{name.replace(' ', '-')}"
            done, seconds = yolokf(
                "run", "--runner", "docker", "--image", image, "--model", "yolov8n.yaml", "--data", str(data),
                "--pipeline-root", str(root),
                env=env,
            )  # fmt: skip
            assert done.returncode != 0, done.stdout
            (log,) = (root / "logs").glob("*.log")
            refusals[name] = {
                "step_seconds": step_seconds(log, "fetch-dataset"),
                "in_process_seconds": round(in_process_refusal(data, tmp / f"step-{len(refusals)}"), 3),
                "command_seconds": round(seconds, 1),
                "error": done.stderr.strip().splitlines()[-1],
            }
            print(f"{name}: {refusals[name]}", flush=True)
        silent.close()
        results["refusal"] = refusals
    text = json.dumps(results, indent=2)
    print(text)
    if options.out:
        options.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
