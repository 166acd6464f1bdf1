"""Servers the tests start as processes (moto, mlflow): started in a session of their own, waited for until they
answer, stopped by pid with everything they started."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path


def start_server(
    cmd: list[str],
    url: str,
    log: Path,
    *,
    timeout: float = 30,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen:
    """Start `cmd`, its output into `log`, and wait until `url` answers (at most `timeout` s)."""
    handle = log.open("wb")
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[2]} exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return proc
        except OSError:
            time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"{cmd} did not answer at {url}: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM to the process's session (uvicorn's and werkzeug's workers go with it), SIGKILL after `timeout` s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
