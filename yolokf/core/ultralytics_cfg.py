"""Ultralytics' own train-argument rules, read without importing ultralytics (which imports torch).

The keys and defaults come from ultralytics' `cfg/default.yaml`; the type rules come from the
`CFG_*_KEYS` sets in `ultralytics/cfg/__init__.py`, read with `ast`. When ultralytics is not
installed (a machine that only compiles or submits), a snapshot taken from ultralytics 8.4 is used.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

SNAPSHOT = Path(__file__).with_name("ultralytics_cfg.json")
_SETS = ("CFG_FLOAT_KEYS", "CFG_FRACTION_KEYS", "CFG_INT_KEYS", "CFG_BOOL_KEYS", "CFG_STR_KEYS")


@dataclass(frozen=True)
class UltralyticsCfg:
    defaults: dict[str, Any]
    float_keys: frozenset[str]
    fraction_keys: frozenset[str]
    int_keys: frozenset[str]
    bool_keys: frozenset[str]
    str_keys: frozenset[str]
    int_min: dict[str, int]
    choices: dict[str, frozenset[str]]  # text arguments ultralytics accepts only from a fixed set

    def to_json(self) -> dict[str, Any]:
        return {
            "defaults": self.defaults,
            **{name: sorted(getattr(self, _field(name))) for name in _SETS},
            "CFG_INT_MIN": self.int_min,
            "CHOICES": {key: sorted(values) for key, values in self.choices.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UltralyticsCfg:
        return cls(
            defaults=data["defaults"],
            **{_field(name): frozenset(data[name]) for name in _SETS},
            int_min=data["CFG_INT_MIN"],
            choices={key: frozenset(values) for key, values in data["CHOICES"].items()},
        )


def _field(set_name: str) -> str:
    return set_name.removeprefix("CFG_").lower()


def installed_package_dir() -> Path | None:
    """ultralytics' package folder, found without importing it."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def read_installed(package_dir: Path) -> UltralyticsCfg:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    defaults = yaml.load((package_dir / "cfg" / "default.yaml").read_text(), Loader=loader)
    tree = ast.parse((package_dir / "cfg" / "__init__.py").read_text())
    found: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in _SETS or name == "CFG_INT_MIN":
                value = node.value
                if isinstance(value, ast.Call):  # frozenset({...})
                    value = value.args[0]
                found[name] = ast.literal_eval(value)
    return UltralyticsCfg(
        defaults=defaults,
        **{_field(name): frozenset(found.get(name, ())) for name in _SETS},
        int_min=dict(found.get("CFG_INT_MIN", {})),
        choices={"optimizer": _optimizers(package_dir)},
    )


def _optimizers(package_dir: Path) -> frozenset[str]:
    """The names `BaseTrainer.build_optimizer` accepts: its `optimizers = {...}` set (engine/trainer.py)."""
    tree = ast.parse((package_dir / "engine" / "trainer.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "build_optimizer":
            for inner in ast.walk(node):
                if (
                    isinstance(inner, ast.Assign)
                    and [getattr(t, "id", None) for t in inner.targets] == ["optimizers"]
                    and isinstance(inner.value, ast.Set)
                ):
                    return frozenset(ast.literal_eval(inner.value))
    return frozenset()


@cache
def load() -> UltralyticsCfg:
    """The installed ultralytics' rules, or the bundled snapshot."""
    package_dir = installed_package_dir()
    if package_dir is not None and (package_dir / "cfg" / "default.yaml").exists():
        return read_installed(package_dir)
    return UltralyticsCfg.from_json(json.loads(SNAPSHOT.read_text()))


if __name__ == "__main__":  # refresh the snapshot: python -m yolokf.core.ultralytics_cfg
    package = installed_package_dir()
    assert package is not None, "install ultralytics first"
    SNAPSHOT.write_text(json.dumps(read_installed(package).to_json(), indent=1, sort_keys=True) + "\n")
