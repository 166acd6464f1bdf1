"""Keep the README's `--help` excerpts equal to the real ones.

    python scripts/readme_help.py          # rewrite the excerpts in README.md
    python scripts/readme_help.py --check  # exit 1 when they differ (tests/test_readme.py runs this)

An excerpt is the fenced block after a line `<!-- help: COMMAND -->`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(<!-- help: (?P<cmd>[a-z -]*) -->\n```text\n)(?P<body>.*?)(```)", re.S)


def render(command: str) -> str:
    env = {**os.environ, "COLUMNS": "100", "TERM": "dumb", "NO_COLOR": "1", "_TYPER_FORCE_DISABLE_TERMINAL": "1"}
    args = [*command.split(), "--help"]
    done = subprocess.run([sys.executable, "-m", "yolokf", *args], capture_output=True, text=True, env=env, check=True)
    return "\n".join(line.rstrip() for line in done.stdout.strip("\n").splitlines()) + "\n"


def updated(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("cmd").strip()) + m.group(4), text)


def main() -> int:
    text = README.read_text()
    new = updated(text)
    if "--check" in sys.argv:
        if new != text:
            print("README.md --help excerpts are stale: run python scripts/readme_help.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
