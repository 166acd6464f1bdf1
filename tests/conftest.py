"""Shared fixtures. Servers that tests need are started by fixtures and stopped by pid."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from yolokf.cli.app import main

pytest_plugins = [
    "tests.conftest_docker",  # the Docker engine and registry fixtures
    "tests.loopback.s3",  # moto's S3 server, the fault proxy, datasets to upload (fetch tests)
]

# Make every test deterministic about the network: this machine has none, CI neither.
os.environ.setdefault("YOLOKF_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "true")
# Generated datasets and image records of this test run only, never a user's ~/.cache/yolokf (subprocesses too).
os.environ["YOLOKF_CACHE_DIR"] = tempfile.mkdtemp(prefix="yolokf-test-cache-")


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def invoke(args: list[str], env: dict[str, str] | None = None) -> CliResult:
    """Run `yolokf ARGS` through its real entry point, capturing output and the exit code."""
    runner = CliRunner()
    with runner.isolation(env=env) as (out, errb, _):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        stdout = out.getvalue().decode()
        stderr = errb.getvalue().decode() if errb is not None else ""
    return CliResult(code, stdout, stderr)


@pytest.fixture
def cli():
    return invoke


@pytest.fixture(scope="session")
def shapes_yaml() -> Path:
    from yolokf.data.datasets import builtin_dataset

    return builtin_dataset("shapes")


# The quickstart's training, shared by every test that needs a trained model (one real training per test run).
TRAINED_ARGS = ["--model", "yolov8n.yaml", "--data", "shapes", "--epochs", "15", "--imgsz", "128", "--batch", "16"]
TRAINED_ARGS += ["--set", "nbs=16"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> tuple[CliResult, Path]:
    """`yolokf run TRAINED_ARGS` through kfp.local: its result and pipeline root."""
    root = tmp_path_factory.mktemp("runs")
    return invoke(["run", *TRAINED_ARGS, "--pipeline-root", root]), root


@pytest.fixture(scope="session")
def best_pt(trained) -> Path:
    """The shared trained model's weights (conftest's `trained`: the README quickstart's arguments)."""
    result, root = trained
    assert result.exit_code == 0, result.output
    (weights,) = root.glob("yolov8-train-*/yolo-train/weights/best.pt")
    return weights
