"""The config file (issue 26, docs/config.md): `yolokf.yaml` here, or `--config FILE` / $YOLOKF_CONFIG, read when
a command runs (config_options loads this module then; never for `--help`).

Its values become click's `default_map` for the command that runs, so every option resolves the same way:
command line > environment variable > profile (`--profile NAME`) > file > default. Keys are the options' long
names without the dashes (`data-secret`, `set`, `toleration`); a value is checked by the option's own click type,
and a bad key or value fails in one line naming the file and its line, as a bad flag does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import click

from yolokf.cli.cluster_options import Pair
from yolokf.cli.console import say
from yolokf.cli.options import DEFAULT_FILE
from yolokf.core.errors import YolokfError
from yolokf.pipeline.step_options import Toleration

if TYPE_CHECKING:
    import yaml

PROFILES = "profiles"
# The options that choose or write the file are not keys in it (key -> its variable).
_CHOOSERS = {"config": "YOLOKF_CONFIG", "profile": "YOLOKF_PROFILE", "save-config": None}
# A key that would hold a credential. The options that name a file or a Secret are options, so never matched here.
_SECRET_KEY = re.compile(r"(^|-)(token|cookie|passw(or)?d|secret|secret-key|access-key|api-key|credentials?)$")
_URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@", re.I)
_USE_INSTEAD = (
    "give a file path (--token-file, --cookie-file, --registry-token-file) or a Kubernetes Secret (--data-secret, "
    "--registry-token-secret, --image-pull-secret) instead"
)


class Commands(Protocol):
    """The app's commands: their names, and each one's click object (`command`: built on first use, ~5 ms each, so
    asked only for a key the running command does not know, and by `yolokf config`). config_options.ConfigOptions
    is one."""

    def names(self) -> Sequence[str]: ...

    def command(self, name: str) -> click.Command: ...


@dataclass(frozen=True)
class Entry:
    """One `key: value` of the file and its line."""

    key: str
    value: Any
    line: int


@dataclass(frozen=True)
class Part:
    """The file's top level, or one profile: keys for every command, and a section per command."""

    label: str  # "file" or "profile NAME"
    entries: tuple[Entry, ...]
    sections: Mapping[str, tuple[Entry, ...]]


@dataclass(frozen=True)
class Document:
    path: Path
    top: Part
    profiles: Mapping[str, Part]


@dataclass(frozen=True)
class Defaults:
    """What the file gives one command: click's default_map (param name -> text as typed) and where each is from."""

    path: Path | None  # None: no config file
    values: dict[str, Any]
    origins: dict[str, str]  # param name -> "profile prod (yolokf.yaml:12)" or "file (yolokf.yaml:3)"


def option_key(param: click.Parameter) -> str | None:
    """An option's key in the file: its long flag without the dashes (`--data-secret` -> data-secret)."""
    if not isinstance(param, click.Option):
        return None
    long = [opt for opt in param.opts if opt.startswith("--")]
    return long[0][2:] if long and param.name != "help" else None


def keys_of(command: click.Command) -> dict[str, click.Option]:
    """The file keys of a command's options."""
    keys = {}
    for param in command.params:
        key = option_key(param)
        if isinstance(param, click.Option) and key is not None and key not in _CHOOSERS:
            keys[key] = param
    return keys


def find_file(path: Path | None) -> Path | None:
    """The file in effect: --config / $YOLOKF_CONFIG, else yolokf.yaml in this folder when there is one."""
    if path is not None:
        return path
    return DEFAULT_FILE if DEFAULT_FILE.is_file() else None


def load(
    commands: Commands, name: str, command: click.Command, ctx: click.Context, path: Path | None, profile: str | None
) -> Defaults:
    """The file's values for command `name`, checked; an error is one click.UsageError naming the file and line."""
    path = find_file(path)
    if path is None:
        if profile:
            raise click.BadParameter(
                f"no profile {profile!r}: there is no config file ({DEFAULT_FILE} here, --config FILE or "
                "YOLOKF_CONFIG).",
                param_hint="'--profile'",
            )
        return Defaults(None, {}, {})
    document = read(path, commands.names())
    parts = [document.top]
    if profile:
        if profile not in document.profiles:
            known = ", ".join(document.profiles) or "none"
            raise click.BadParameter(f"no profile {profile!r} in {path} (profiles: {known}).", param_hint="'--profile'")
        parts.append(document.profiles[profile])
    checker = _Checker(commands, name, command, ctx, path)
    checker.refuse_secrets(document)
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for part in parts:  # later parts win: the file, then the profile; in each, the command's section wins
        for entries, in_section in ((part.entries, False), (part.sections.get(name, ()), True)):
            for entry in entries:
                param = checker.option(entry, in_section)
                if param is None:
                    continue  # another command's option
                assert param.name is not None
                text = checker.text(entry, param)
                if text is None:  # `key: null` gives the option back its default
                    values.pop(param.name, None)
                    origins.pop(param.name, None)
                    continue
                values[param.name] = text
                origins[param.name] = f"{part.label} ({path}:{entry.line})"
    return Defaults(path, values, origins)


class _Checker:
    """Checks the file's keys and values against one command's options."""

    def __init__(self, commands: Commands, name: str, command: click.Command, ctx: click.Context, path: Path):
        self.commands, self.name, self.ctx, self.path = commands, name, ctx, path
        self.keys = keys_of(command)
        self._keys_by_command = {name: self.keys}

    def _keys_of(self, name: str) -> dict[str, click.Option]:
        if name not in self._keys_by_command:
            self._keys_by_command[name] = keys_of(self.commands.command(name))
        return self._keys_by_command[name]

    def known_elsewhere(self, key: str) -> bool:
        """Whether another command has the option `key`. The commands are built one at a time until one has it
        (issue 27: a profile's `host:` costs `compile` the build of `run`, not of all ten commands, 40 ms)."""
        return any(key in self._keys_of(name) for name in self.commands.names() if name != self.name)

    def all_keys(self) -> set[str]:
        """Every command's option keys (builds every command: only to suggest a key for an unknown one)."""
        return {key for name in self.commands.names() for key in self._keys_of(name)}

    def fail(self, line: int, message: str) -> click.UsageError:
        # No ctx: inside an option's callback click adds the command's, for the "See 'yolokf run --help'" hint.
        return click.UsageError(f"{self.path}:{line}: {message}")

    def refuse_secrets(self, document: Document) -> None:
        """A key that would hold a token, cookie or password, or a URL with a password, anywhere in the file."""
        for part in (document.top, *document.profiles.values()):
            for entry in (*part.entries, *(e for section in part.sections.values() for e in section)):
                key = entry.key.lower().replace("_", "-")
                if _SECRET_KEY.search(key) and key not in self.keys and not self.known_elsewhere(key):
                    raise self.fail(entry.line, f"'{entry.key}' would put a secret in a config file; {_USE_INSTEAD}.")
                if isinstance(entry.value, str) and _URL_PASSWORD.match(entry.value):
                    raise self.fail(entry.line, f"{entry.key}: a URL with a password in a config file; {_USE_INSTEAD}.")

    def option(self, entry: Entry, in_section: bool) -> click.Option | None:
        """The option `entry` sets; None for another command's option at the top level; else a one-line error."""
        if entry.key in self.keys:
            return self.keys[entry.key]
        if entry.key in _CHOOSERS:
            env = _CHOOSERS[entry.key]
            how = f"--{entry.key}" + (f" or {env}" if env else "")
            raise self.fail(entry.line, f"'{entry.key}' chooses or writes the file, it is not a key in it; use {how}.")
        if not in_section and self.known_elsewhere(entry.key):
            return None
        if not in_section and entry.key in self.commands.names():
            raise self.fail(entry.line, f"section '{entry.key}' must be a mapping of option names to values.")
        candidates = list(self.keys) if in_section else [*self.all_keys(), *self.commands.names(), PROFILES]
        where = f"for yolokf {self.name}" if in_section else "(no yolokf command has it)"
        raise self.fail(entry.line, f"unknown key '{entry.key}' {where}{_did_you_mean(entry.key, candidates)}")

    def text(self, entry: Entry, param: click.Option) -> Any:
        """The value as the command line would give it (a string, or a list for a repeatable option), checked with
        the option's own type; None for `null`."""
        value = entry.value
        if value is None:
            return None
        if param.multiple:
            if isinstance(value, dict):  # KEY: VALUE pairs, as repeated KEY=VALUE (--set, --node-selector, ...)
                items = [f"{k}={_scalar(v, nested=True)}" for k, v in value.items()]
            else:
                items = value if isinstance(value, list) else [value]
            if any(isinstance(item, (list, dict)) for item in items):
                raise self.fail(entry.line, f"{entry.key} takes a list of values or a mapping KEY: VALUE.")
            text: Any = [_scalar(item) for item in items]
        elif isinstance(value, (list, dict)):
            raise self.fail(entry.line, f"{entry.key} takes one value, not a {type(value).__name__}.")
        else:
            text = _scalar(value)
        try:
            param.type_cast_value(self.ctx, text)
        except click.BadParameter as exc:
            raise self.fail(entry.line, f"{entry.key}: {exc.message}") from None
        except YolokfError as exc:
            raise self.fail(entry.line, f"{entry.key}: {exc}") from None
        return text


def _did_you_mean(key: str, candidates: Sequence[str]) -> str:
    import difflib

    dashed = key.replace("_", "-")
    close = [dashed] if dashed in candidates else difflib.get_close_matches(key, candidates, n=1)
    return f"; did you mean {close[0]}?" if close else "."


def _scalar(value: Any, nested: bool = False) -> str:
    """A YAML scalar as typed on the command line: `true`, `50`, `0.01`, text; JSON for a list in --set."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if nested and (value is None or isinstance(value, (list, dict))):
        import json

        return json.dumps(value)
    return str(value)


def read(path: Path, commands: Sequence[str]) -> Document:
    """Parse the file, keeping each key's line. A top-level key naming a command, with a mapping, is its section."""
    import yaml

    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.UsageError(f"{path}: cannot read the config file ({exc}).") from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return Document(path, Part("file", (), {}), {})
        top = _mapping(loader, path, root, "the config file")
        profiles: dict[str, Part] = {}
        rest = []
        for key, node, line in top:
            if key != PROFILES:
                rest.append((key, node, line))
                continue
            for name, body, _ in _mapping(loader, path, node, f"{PROFILES}:", "profile names to options"):
                items = _mapping(loader, path, body, f"profile {name!r}")
                profiles[name] = _part(loader, path, f"profile {name}", items, commands)
        return Document(path, _part(loader, path, "file", rest, commands), profiles)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise click.UsageError(f"{path}:{line}: not valid YAML: {exc.problem or exc.context}.") from None
    finally:
        loader.dispose()


def _mapping(
    loader: yaml.SafeLoader, path: Path, node: yaml.Node, what: str, of: str = "option names to values"
) -> list[tuple[str, yaml.Node, int]]:
    import yaml

    line = node.start_mark.line + 1
    if not isinstance(node, yaml.MappingNode):
        raise click.UsageError(f"{path}:{line}: {what} must be a mapping of {of}.")
    items, seen = [], set()
    for key_node, value_node in node.value:
        key_line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode):
            raise click.UsageError(f"{path}:{key_line}: a key must be an option's name.")
        if key_node.value in seen:
            raise click.UsageError(f"{path}:{key_line}: '{key_node.value}' is given twice.")
        seen.add(key_node.value)
        items.append((key_node.value, value_node, key_line))
    return items


def _part(
    loader: yaml.SafeLoader, path: Path, label: str, items: list[tuple[str, yaml.Node, int]], commands: Sequence[str]
) -> Part:
    import yaml

    entries, sections = [], {}
    for key, node, line in items:
        if key in commands and isinstance(node, yaml.MappingNode):
            body = _mapping(loader, path, node, f"section {key!r}")
            sections[key] = tuple(Entry(k, loader.construct_object(n, deep=True), at) for k, n, at in body)
        else:
            entries.append(Entry(key, loader.construct_object(node, deep=True), line))
    return Part(label, tuple(entries), sections)


# --- yolokf config and --save-config --------------------------------------------------------------------------------


def effective(
    commands: Commands, name: str, path: Path | None, profile: str | None
) -> tuple[str, list[tuple[str, str, str]]]:
    """`yolokf config`: a title, and each option of command `name` with its value and where the value comes from."""
    known = commands.names()
    if name not in known:
        raise click.BadParameter(
            f"{name!r} is not a yolokf command{_did_you_mean(name, list(known))}", param_hint="'COMMAND'"
        )
    command = commands.command(name)
    defaults = load(commands, name, command, click.Context(command, info_name=name), path, profile)
    # click itself resolves each option, as for a real run (resilient: a command's arguments may be missing).
    ctx = command.make_context(name, [], default_map=defaults.values, resilient_parsing=True)
    rows = []
    for key, param in keys_of(command).items():
        assert param.name is not None
        source = ctx.get_parameter_source(param.name)
        if source == click.ParameterSource.ENVIRONMENT:
            names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
            var = next((n for n in names if os.environ.get(n)), names[0])
            rows.append((f"--{key}", os.environ[var], f"environment {var}"))
        elif source == click.ParameterSource.DEFAULT_MAP:
            rows.append((f"--{key}", _shown(defaults.values[param.name]), defaults.origins[param.name]))
        else:
            rows.append((f"--{key}", _shown(_plain(param.default)), "default"))
    used = f"{defaults.path}" + (f", profile {profile}" if profile else "") if defaults.path else "no config file"
    return f"yolokf {name} ({used})", rows


def save_config(ctx: click.Context, path: Path) -> None:
    """Write the file that repeats this command: every option not at its default (no option holds a secret)."""
    import yaml

    values = {}
    for key, param in keys_of(ctx.command).items():
        name = param.name
        assert name is not None
        if name == "dry_run" or ctx.get_parameter_source(name) in (None, click.ParameterSource.DEFAULT):
            continue  # --dry-run would stick
        value = _plain(ctx.params[name])
        if value is not None and value != []:
            values[key] = value
    head = f"# Written by yolokf {ctx.info_name} --save-config: `yolokf {ctx.info_name} --config {path}` repeats it.\n"
    try:
        path.write_text(head + yaml.safe_dump({ctx.info_name: values}, sort_keys=False))
    except OSError as exc:
        raise click.UsageError(f"--save-config {path}: cannot write it ({exc.strerror}).") from None
    say(f"Wrote {path}", err=True)  # stderr: a dry run's stdout stays what it printed


def _plain(value: Any) -> Any:
    """An option's value as the file writes it: the text its parser reads back."""
    if isinstance(value, Pair):
        return f"{value.key}={value.value}"
    if isinstance(value, Toleration):
        return toleration_text(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def toleration_text(toleration: Toleration) -> str:
    """A toleration in the kubectl-taint syntax `--toleration` reads (parse_toleration's inverse)."""
    if toleration.key is None:
        spec = "*" if toleration.effect is None else ""
    else:
        spec = toleration.key + (f"={toleration.value}" if toleration.operator == "Equal" else "")
    return spec + (f":{toleration.effect}" if toleration.effect else "")


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(_shown(item) for item in value) or "none"
    return str(value)
