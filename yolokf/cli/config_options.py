"""`--config FILE` and `--profile NAME` on every command, `--save-config FILE` on run and tune (docs/config.md).

The file's values reach the other options through click's default_map, which click ranks below the command line
and the environment and above each option's default; the reading and checking is `config_file`'s, loaded when a
command runs (never for `--help`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from yolokf.cli.options import DEFAULT_FILE, with_parameters

CONFIG_PANEL = "Config file"


def _config_option(callback: Callable[..., Any] | None) -> Any:
    return Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="YOLOKF_CONFIG",
            exists=True,
            dir_okay=False,
            is_eager=callback is not None,
            callback=callback,
            help="Config file of option values (docs/config.md). Default: yolokf.yaml here, when there is one.",
            rich_help_panel=CONFIG_PANEL,
        ),
    ]


def _profile_option(callback: Callable[..., Any] | None) -> Any:
    return Annotated[
        str | None,
        typer.Option(
            "--profile",
            envvar="YOLOKF_PROFILE",
            is_eager=callback is not None,
            callback=callback,
            help="The config file's profile (profiles: NAME: ...), over the file's other values.",
            rich_help_panel=CONFIG_PANEL,
        ),
    ]


# `yolokf config`'s own: they name the file to show, and read nothing themselves.
ConfigPath = _config_option(None)
ProfileName = _profile_option(None)
SaveConfig = Annotated[
    Path | None,
    typer.Option(
        "--save-config",
        metavar="FILE",
        help="With --dry-run: write the config file that repeats this command (yolokf ... --config FILE).",
        rich_help_panel=CONFIG_PANEL,
    ),
]


class ConfigOptions:
    """The config-file options of one app's commands. `names` lists the commands; `command` makes one's click
    object (~5 ms each), asked only for a file key the running command lacks, and by `yolokf config`."""

    def __init__(self, names: Callable[[], Sequence[str]], command: Callable[[str], click.Command]):
        self.names, self.command = names, command
        self._options = {"config": _config_option(self._use_file), "profile": _profile_option(self._use_file)}

    def _use_file(self, ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        # Both options are eager, so click runs this before any other option takes its value; the second of the
        # two (in either order) puts the file's values in the command's default_map.
        other = "profile" if param.name == "config" else "config"
        if ctx.resilient_parsing or other not in ctx.params:
            return value
        path, profile = (value, ctx.params[other]) if param.name == "config" else (ctx.params[other], value)
        if path is None and profile is None and not DEFAULT_FILE.is_file():
            return value  # no file to read: the commands start without loading the reader (compile's time)
        # Imported on use, for start-up time: `yolokf --help` and `yolokf run --help` do not load it.
        from yolokf.cli.config_file import load

        assert ctx.info_name is not None
        defaults = load(self, ctx.info_name, ctx.command, ctx, path, profile)
        ctx.default_map = {**(ctx.default_map or {}), **defaults.values}
        return value

    def add_to(self, command: Callable[..., Any], *, save: bool = False) -> Callable[..., Any]:
        """`command` with --config and --profile (and with `save`, --save-config); typer reads them from the new
        signature, and the wrapper drops them before calling `command`."""
        signature = inspect.signature(command, eval_str=True)
        kind = inspect.Parameter.KEYWORD_ONLY  # typer passes every value by name
        added = {**self._options, **({"save_config": SaveConfig} if save else {})}
        parameters = [p if p.kind == kind else p.replace(kind=kind) for p in signature.parameters.values()]
        parameters += [inspect.Parameter(n, kind, annotation=a, default=None) for n, a in added.items()]

        def wrapper(**kwargs: Any) -> Any:
            del kwargs["config"], kwargs["profile"]
            save_to = kwargs.pop("save_config", None)
            if save_to is not None and not kwargs.get("dry_run"):
                raise click.UsageError("--save-config writes the file of a --dry-run; add --dry-run.")
            result = command(**kwargs)
            if save_to is not None:
                # Imported on use, for start-up time: `yolokf --help` and `yolokf run --help` do not load it.
                from yolokf.cli.config_file import save_config

                save_config(click.get_current_context(), save_to)
            return result

        return with_parameters(wrapper, command, signature.replace(parameters=parameters))
