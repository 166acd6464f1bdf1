"""yolokf's command line: the Typer app, its commands in order, and `main` (errors become one line and a code)."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import click
import typer

from yolokf import __version__
from yolokf.cli import cluster_commands, run_commands, tool_commands
from yolokf.cli.console import say
from yolokf.core.errors import Interrupted, YolokfError

_APP_SETTINGS: dict[str, Any] = {
    "help": "Train Ultralytics YOLO models on Kubeflow Pipelines: build the image, compile, run.",
    "no_args_is_help": True,
    "pretty_exceptions_show_locals": False,  # locals can hold tokens
    "context_settings": {"help_option_names": ["-h", "--help"]},
}
app = typer.Typer(**_APP_SETTINGS)


def _version(value: bool) -> None:
    if value:
        say(f"yolokf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    pass


# The commands in --help's order; each module holds its commands' bodies (one core call each).
app.command("compile")(run_commands.compile_)
app.command()(run_commands.run)
app.command()(run_commands.tune)
app.command()(run_commands.evaluate)
app.command()(cluster_commands.status)
app.command()(cluster_commands.logs)
app.command("build-image")(tool_commands.build_image)
app.command()(tool_commands.shapes)
app.command()(tool_commands.fetch)


def _only(name: str) -> typer.Typer:
    """The app with just the command `name` when it is one: typer builds every command's options on each start
    (40 ms for seven commands), and a run needs one. Anything else gets the whole app (usage errors, hints)."""
    for info in app.registered_commands:
        if (info.name or (info.callback.__name__ if info.callback else "").replace("_", "-")) == name:
            single = typer.Typer(**_APP_SETTINGS)
            single.registered_callback = app.registered_callback
            single.registered_commands = [info]
            return single
    return app


def main(argv: list[str] | None = None) -> None:
    """Console entry point: errors become one line on stderr and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    command = typer.main.get_command(_only(args[0]) if args else app)
    try:
        code = command.main(args=argv, prog_name="yolokf", standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        say("Aborted.", err=True)
        sys.exit(Interrupted.exit_code)
    except click.ClickException as exc:  # usage errors
        ctx = getattr(exc, "ctx", None)
        hint = f" See '{ctx.command_path} --help'." if ctx else ""
        message = exc.format_message()
        message = message if message.endswith((".", "?")) else message + "."
        say(f"Error: {message}{hint}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except YolokfError as exc:
        if os.getenv("YOLOKF_DEBUG"):
            raise
        say(f"Error: {exc}" if exc.exit_code != Interrupted.exit_code else str(exc), err=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
