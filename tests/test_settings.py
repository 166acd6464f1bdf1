"""Train arguments are checked against ultralytics' own rules before anything runs."""

from __future__ import annotations

import re

import pytest

from yolokf.core import ultralytics_cfg
from yolokf.core.errors import UsageError
from yolokf.core.settings import TrainConfig, parse_set


def test_set_values_are_parsed_like_ultralytics_cli():
    assert parse_set(["lr0=0.005", "cos_lr=true", "optimizer=AdamW", "fraction=0.5", "classes=[0, 2]"]) == {
        "lr0": 0.005,
        "cos_lr": True,
        "optimizer": "AdamW",
        "fraction": 0.5,
        "classes": [0, 2],
    }
    assert parse_set(["cache=none"]) == {"cache": None}
    assert TrainConfig(train_args={"optimizer": "adamw"}).train_args == {"optimizer": "adamw"}, "any case"


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["lr=0.1"], "--set lr=... is not an ultralytics train argument. Did you mean lrf, lr0?"),
        (["lr0=2"], "--set lr0=2: must be between 0.0 and 1.0."),
        (["cos_lr=3"], "--set cos_lr=3: must be true or false."),
        (["patience=-1"], "--set patience=-1: must be at least 0."),
        (["patience=1.5"], "--set patience=1.5: must be a whole number."),
        (["optimizer=3"], "--set optimizer=3: must be text."),
        (["optimizer=Adagrad"], "--set optimizer=Adagrad: must be one of Adam, AdamW, Adamax, MuSGD, NAdam, RAdam,"),
        (["epochs=3"], "--set epochs=... has its own flag: use --epochs instead."),
        (["project=x"], "--set project=... is not accepted"),
        (["lr0"], "--set 'lr0' is not KEY=VALUE; for example --set lr0=0.005"),
        (["=1"], "is not KEY=VALUE"),
        (["lr0="], "is not KEY=VALUE"),
    ],
)
def test_bad_set_is_refused_with_a_pointer(items, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        TrainConfig(train_args=parse_set(items))


@pytest.mark.parametrize("name", ["epochs", "imgsz", "batch"])
@pytest.mark.parametrize("value", [0, -3])
def test_sizes_must_be_positive(name, value):
    with pytest.raises(UsageError, match=f"--{name} must be a whole number of at least 1, got {value}"):
        TrainConfig(**{name: value})


def test_snapshot_matches_installed_ultralytics():
    """The bundled rules (used where ultralytics is not installed) are the installed version's rules."""
    package = ultralytics_cfg.installed_package_dir()
    assert package is not None, "the train extra must be installed for the test suite"
    import json

    snapshot = ultralytics_cfg.UltralyticsCfg.from_json(json.loads(ultralytics_cfg.SNAPSHOT.read_text()))
    installed = ultralytics_cfg.read_installed(package)
    assert snapshot == installed, "refresh it: python -m yolokf.core.ultralytics_cfg"
    assert "lr0" in installed.defaults and "epochs" in installed.int_keys and "cos_lr" in installed.bool_keys
