"""The docs' command reference is the real `--help` output, the README is a front page whose quickstart names real
commands, and docs/index.md is the README (scripts/docs_reference.py; mkdocs checks the links, scripts/test)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import typer

from yolokf.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [name for name, command in typer.main.get_command(app).commands.items() if not command.hidden]


def check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/docs_reference.py", "--check"], cwd=root, capture_output=True, text=True
    )


def test_reference_pages_and_site_index_match_the_cli_and_the_readme():
    done = check(ROOT)
    assert done.returncode == 0, done.stderr


def test_every_command_has_a_reference_page_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    for command in COMMANDS:
        page = ROOT / "docs" / "reference" / f"{command}.md"
        assert f"<!-- help: {command} -->" in page.read_text(), page
        assert f"reference/{command}.md" in nav, command


def test_a_stale_missing_or_orphan_reference_page_fails_the_check(tmp_path):
    for name in ["README.md", "mkdocs.yml", "scripts", "docs"]:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, tmp_path / name)
    run_page = tmp_path / "docs" / "reference" / "run.md"
    run_page.write_text(run_page.read_text().replace("--epochs", "--epoch"))
    (tmp_path / "docs" / "reference" / "fetch.md").unlink()
    removed = "# `yolokf train`\n\n<!-- help: train -->\n```text\n```\n"  # a command the CLI no longer has
    (tmp_path / "docs" / "reference" / "train.md").write_text(removed)
    (tmp_path / "README.md").write_text((tmp_path / "README.md").read_text() + "\nOne more line.\n")

    done = check(tmp_path)

    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        "docs/reference/fetch.md is missing",
        "docs/reference/run.md is stale",
        "docs/index.md is stale",
        "docs/reference/train.md documents no command of yolokf (remove it)",
        "The docs are stale: run python scripts/docs_reference.py",
    ]


def test_readme_is_a_front_page_that_links_every_command():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    links = re.findall(r"\]\((docs/[^)#\s]+)", readme)
    for link in links:
        assert (ROOT / link).is_file(), link
    for command in COMMANDS:
        assert f"docs/reference/{command}.md" in links, command
        assert f"yolokf {command}" in readme, command


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
