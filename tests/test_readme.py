"""The README's command excerpts are the real `--help` output, and its quickstart names real commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_help_excerpts_match_the_cli():
    done = subprocess.run(
        [sys.executable, "scripts/readme_help.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_quickstart_is_two_commands_that_exist():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart.*?```(?:bash|sh)\n(.*?)```", readme, re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(commands) == 2, commands
    for command in commands:
        script = command.split()[0]
        assert (ROOT / script).is_file(), script
    assert "ci/run" not in commands[1] and "scripts/test" in commands[1]
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text(), ".ci/run runs the README's test command"
