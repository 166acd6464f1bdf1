"""yolokf's command line: the Typer app, its commands in order, and `main` (errors become one line and a code)."""

from __future__ import annotations

import functools
import os
import sys
from typing import Annotated, Any

import click
import typer

from yolokf import __version__
from yolokf.cli import cluster_commands, run_commands, tool_commands
from yolokf.cli.config_options import ConfigOptions, ConfigPath, ProfileName
from yolokf.cli.console import print_config, say
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


def _name(info: typer.models.CommandInfo) -> str:
    return info.name or (info.callback.__name__ if info.callback else "").replace("_", "-")


@functools.cache
def _command(name: str) -> click.Command:
    """One command's click object, built alone (a config file's key is looked up command by command)."""
    group = typer.main.get_command(_only(name))
    assert isinstance(group, click.Group)
    return group.commands[name]


_CONFIG = ConfigOptions(names=lambda: [_name(info) for info in app.registered_commands], command=_command)


def _config(
    command: Annotated[str, typer.Argument(help="The command whose options to show.")] = "run",
    config: ConfigPath = None,
    profile: ProfileName = None,
) -> None:
    """Show each option's value and where it comes from: environment, profile, config file or default.

    Example: yolokf config run --profile prod
    """
    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.cli.config_file import effective

    print_config(*effective(_CONFIG, command, config, profile))


# The commands in --help's order; each module holds its commands' bodies (one core call each). Every command
# takes --config and --profile; run and tune also --save-config.
def _register(command: Any, name: str | None = None, save: bool = False) -> None:
    app.command(name)(_CONFIG.add_to(command, save=save))


_register(run_commands.compile_, "compile")
_register(run_commands.run, save=True)
_register(run_commands.tune, save=True)
_register(run_commands.evaluate)
_register(cluster_commands.status)
_register(cluster_commands.logs)
_register(tool_commands.build_image, "build-image")
_register(tool_commands.shapes)
_register(tool_commands.fetch)
app.command("config")(_config)


def _only(name: str) -> typer.Typer:
    """The app with just the command `name` when it is one: typer builds every command's options on each start
    (40 ms for seven commands), and a run needs one. Anything else gets the whole app (usage errors, hints)."""
    for info in app.registered_commands:
        if _name(info) == name:
            single = typer.Typer(**_APP_SETTINGS)
            single.registered_callback = app.registered_callback
            single.registered_commands = [info]
            return single
    return app


def _overview() -> typer.Typer:
    """The app for `yolokf --help` (and no arguments): every command by name and help, none of their options, which
    typer would otherwise build for all of them (issue 27: --help under 0.3 s). What it prints is the whole app's."""
    overview = typer.Typer(**_APP_SETTINGS)
    overview.registered_callback = app.registered_callback
    for info in app.registered_commands:
        callback = info.callback

        def stub() -> None: ...

        stub.__doc__ = callback.__doc__ if callback else None
        overview.command(_name(info), help=info.help)(stub)
    return overview


def main(argv: list[str] | None = None) -> None:
    """Console entry point: errors become one line on stderr and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        command = typer.main.get_command(_overview())
    else:
        command = typer.main.get_command(_only(args[0]))
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
