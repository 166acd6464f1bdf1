"""The README's quickstart on a fresh Debian 12 with Debian's own python3 (PEP 668), in a real container.

The committed tree (`git archive HEAD`) is copied in, as a `git clone` would bring it. pip's downloads are kept
in a cache folder on the host, so only the first run fetches torch (docs/benchmarks.md says how long it takes).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest_docker import DATA_ROOT, ensure_debian_without_venv, ensure_fresh_debian

ROOT = Path(__file__).resolve().parents[1]
PIP_CACHE = Path(os.environ.get("YOLOKF_TEST_PIP_CACHE", str(DATA_ROOT) + "-pip"))


def committed_tree() -> bytes:
    """The checkout's HEAD as a tar whose members sit under src/."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", "--prefix=src/", "HEAD"], cwd=ROOT, capture_output=True, check=True
    )
    return archive.stdout


def run_in(client, image: str, script: str, *, user: str = "root", volumes=None, timeout: int = 2400):  # type: ignore[no-untyped-def]
    """Run `script` with bash in a new container holding the committed tree at /src; (exit code, output)."""
    container = client.containers.create(
        image,
        ["bash", "-lc", script],
        user=user,
        working_dir="/",
        network_mode="host",
        volumes=volumes or {},
        environment={"TERM": "dumb"},
    )
    try:
        buffer = io.BytesIO(committed_tree())
        with tarfile.open(fileobj=buffer) as tar:
            assert any(m.name == "src/scripts/quickstart" for m in tar.getmembers())
        container.put_archive("/", buffer.getvalue())
        container.start()
        status = container.wait(timeout=timeout)
        return status["StatusCode"], container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


@pytest.mark.docker
@pytest.mark.slow
def test_quickstart_on_a_fresh_debian_12(docker_engine):
    client = docker_engine.client()
    image = ensure_fresh_debian(client)
    config = client.images.get(image).attrs["Config"]
    assert not any(e.startswith("PIP_BREAK_SYSTEM_PACKAGES") for e in config.get("Env") or [])
    PIP_CACHE.mkdir(parents=True, exist_ok=True)
    code, output = run_in(
        client,
        image,
        "ls /usr/lib/python3*/EXTERNALLY-MANAGED && cd /src && ./scripts/quickstart",
        volumes={str(PIP_CACHE): {"bind": "/root/.cache/pip", "mode": "rw"}},
    )
    assert code == 0, output[-4000:]
    assert "/EXTERNALLY-MANAGED" in output.splitlines()[0], "Debian's python3 refuses pip installs, as shipped"
    assert "setup: creating the virtual environment .venv" in output
    assert "Final validation metrics" in output, output[-3000:]
    map50 = re.search(r"│ mAP50\s+│\s+([0-9.]+)", output)
    assert map50 is not None, output[-3000:]
    # The quickstart's run on 2 CPUs reaches 0.94 (tests/test_local_run.py); a container gets the same seed.
    assert float(map50[1]) >= 0.85, output[-3000:]
    assert "source .venv/bin/activate" in output


@pytest.mark.docker
@pytest.mark.slow
def test_setup_without_python3_venv_says_which_package_to_install(docker_engine):
    client = docker_engine.client()
    image = ensure_debian_without_venv(client)
    code, output = run_in(client, image, "cp -r /src ~/yolokf && cd ~/yolokf && ./scripts/setup", user="newcomer")
    assert code == 1, output
    assert output.strip().splitlines()[-1] == (
        "setup: python3 -m venv is not available: install it with 'sudo apt-get install python3-venv', "
        "then run this again."
    )
