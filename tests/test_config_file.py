"""The config file (issue 26): yolokf.yaml, --config, profiles; where each value lands and which source wins."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format

from tests.test_bad_input import assert_one_clear_line
from tests.test_compile import load_spec
from yolokf.cli import console
from yolokf.cli.config_file import toleration_text
from yolokf.pipeline.step_options import parse_toleration

HOST = "http://127.0.0.1:9"  # --dry-run contacts nothing
DRY_RUN = ["run", "--host", HOST, "--dry-run", "--run-name", "r1"]
ENV = ("YOLOKF_CONFIG", "YOLOKF_PROFILE", "YOLOKF_IMAGE", "KFP_HOST", "KF_PIPELINES_ENDPOINT", "KFP_NAMESPACE")


@pytest.fixture(autouse=True)
def here(tmp_path, monkeypatch):
    """Each test in its own folder (yolokf.yaml is read from there), with none of the options' variables set."""
    monkeypatch.chdir(tmp_path)
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def write(text: str, name: str = "yolokf.yaml") -> Path:
    path = Path(name)
    path.write_text(textwrap.dedent(text))
    return path


def table(cli, args: list[str], env: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """`yolokf config ARGS` as {option: (value, source)}, printed wide enough not to wrap."""
    console.out.cache_clear()  # a console made by an earlier test keeps its width
    try:
        result = cli(["config", *args], env={"COLUMNS": "250", **(env or {})})
    finally:
        console.out.cache_clear()
    assert result.exit_code == 0, result.output
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in result.stdout.splitlines()]
    return {row[0]: (row[1], row[2]) for row in rows if len(row) == 3 and row[0].startswith("--")}


PRECEDENCE = """\
    image: file/yolokf:1
    profiles:
      prod:
        image: profile/yolokf:1
        namespace: profile-ns
"""


@pytest.mark.parametrize(
    ("args", "env", "image"),
    [
        ([], {}, "file/yolokf:1"),
        (["--profile", "prod"], {}, "profile/yolokf:1"),
        (["--profile", "prod"], {"YOLOKF_IMAGE": "env/yolokf:1"}, "env/yolokf:1"),
        (["--profile", "prod", "--image", "flag/yolokf:1"], {"YOLOKF_IMAGE": "env/yolokf:1"}, "flag/yolokf:1"),
    ],
)
def test_flag_beats_environment_beats_profile_beats_file(cli, args, env, image):
    write(PRECEDENCE)
    result = cli([*DRY_RUN, *args], env=env)
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["image"] == image


def test_file_beats_default_and_yolokf_config_names_every_source(cli):
    assert yaml.safe_load(cli(DRY_RUN).stdout)["image"].startswith("yolokf:"), "no file: the default image"
    write(PRECEDENCE)
    rows = table(cli, ["--profile", "prod"], env={"KFP_NAMESPACE": "env-ns"})
    assert rows["--image"] == ("profile/yolokf:1", "profile prod (yolokf.yaml:4)")
    assert rows["--namespace"] == ("env-ns", "environment KFP_NAMESPACE")
    assert rows["--epochs"] == ("100", "default")
    assert table(cli, [])["--image"] == ("file/yolokf:1", "file (yolokf.yaml:1)")
    assert table(cli, ["status", "--profile", "prod"])["--namespace"] == ("profile-ns", "profile prod (yolokf.yaml:5)")
    assert table(cli, ["--profile", "prod"], env={"YOLOKF_PROFILE": "nope"})["--image"][0] == "profile/yolokf:1"


def test_a_command_section_beats_the_top_level_and_reaches_the_compiled_pipeline(cli):
    write(
        """\
        epochs: 10
        set: {lr0: 0.005}
        compile:
          epochs: 20
          set: [lr0=0.01, cos_lr=true]
        tune:
          epochs: 30
        repository: reg.example.com/ml/yolokf  # build-image's: run and compile leave it
        """
    )
    result = cli(["compile", "--out", "p.yaml"])
    assert result.exit_code == 0, result.output
    params = load_spec(Path("p.yaml")).root.input_definitions.parameters
    assert json_format.MessageToDict(params["epochs"].default_value) == 20.0
    assert json_format.MessageToDict(params["train_args"].default_value) == {"lr0": 0.01, "cos_lr": True}
    assert table(cli, ["run"])["--epochs"] == ("10", "file (yolokf.yaml:1)")
    assert table(cli, ["run"])["--set"] == ("lr0=0.005", "file (yolokf.yaml:2)")
    assert table(cli, ["tune"])["--epochs"] == ("30", "file (yolokf.yaml:7)")
    assert table(cli, ["build-image"])["--repository"] == ("reg.example.com/ml/yolokf", "file (yolokf.yaml:8)")


def test_a_profile_section_wins_and_null_gives_back_the_default(cli):
    write(
        """\
        epochs: 10
        gpus: 1
        profiles:
          big:
            epochs: 40
            gpus: null
            run: {epochs: 50}
        """
    )
    rows = table(cli, ["--profile", "big"])
    assert rows["--epochs"] == ("50", "profile big (yolokf.yaml:7)")
    assert rows["--gpus"] == ("none", "default")
    assert table(cli, ["compile", "--profile", "big"])["--epochs"] == ("40", "profile big (yolokf.yaml:5)")


def test_config_flag_and_variable_choose_the_file(cli):
    write("epochs: 10\n")
    write("epochs: 20\n", "other.yaml")
    assert table(cli, ["--config", "other.yaml"])["--epochs"] == ("20", "file (other.yaml:1)")
    assert table(cli, [], env={"YOLOKF_CONFIG": "other.yaml"})["--epochs"] == ("20", "file (other.yaml:1)")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "epochs: 5\nepoch: 5\n",
            "yolokf.yaml:2: unknown key 'epoch' (no yolokf command has it); did you mean epochs?",
        ),
        ("run:\n  wait: true\n  epoch: 5\n", "yolokf.yaml:3: unknown key 'epoch' for yolokf run; did you mean epochs?"),
        ("data_secret: s3\n", "yolokf.yaml:1: unknown key 'data_secret' (no yolokf command has it); did you mean "),
        ("runn: {epochs: 5}\n", "yolokf.yaml:1: unknown key 'runn' (no yolokf command has it); did you mean run?"),
        ("profile: prod\n", "yolokf.yaml:1: 'profile' chooses or writes the file, it is not a key in it; use --pro"),
        ("epochs: ten\n", "yolokf.yaml:1: epochs: 'ten' is not a valid integer."),
        ("epochs: 1.5\n", "yolokf.yaml:1: epochs: '1.5' is not a valid integer."),
        ("epochs: [1, 2]\n", "yolokf.yaml:1: epochs takes one value, not a list."),
        ("wait: maybe\n", "yolokf.yaml:1: wait: 'maybe' is not a valid boolean."),
        ("fetch-workers: 0\n", "yolokf.yaml:1: fetch-workers: 0 is not in the range x>=1."),
        ("toleration: [gpu:Sometimes]\n", "yolokf.yaml:1: toleration: --toleration 'gpu:Sometimes': effect must"),
        ("epochs: 5\nepochs: 6\n", "yolokf.yaml:2: 'epochs' is given twice."),
        ("epochs: [5\n", "yolokf.yaml:2: not valid YAML: expected ',' or ']'"),
        ("- epochs\n", "yolokf.yaml:1: the config file must be a mapping of option names to values."),
        ("run: true\n", "yolokf.yaml:1: section 'run' must be a mapping of option names to values."),
    ],
)
def test_a_bad_key_or_value_is_one_line_with_the_file_and_line(cli, text, message):
    write(text)
    result = cli(DRY_RUN)
    assert_one_clear_line(result, 2, message)
    assert result.stdout == "", "nothing submitted, nothing printed"


def test_a_profile_is_checked_when_chosen(cli):
    write("profiles:\n  prod:\n    gpus: two\n  dev:\n    gpu: 1\n")
    assert cli(DRY_RUN).exit_code == 0, "a profile's keys are read when it is chosen, as a flag when it is given"
    assert_one_clear_line(cli([*DRY_RUN, "--profile", "prod"]), 2, "yolokf.yaml:3: gpus: 'two' is not a valid integer.")
    message = "yolokf.yaml:5: unknown key 'gpu' (no yolokf command has it); did you mean gpus?"
    assert_one_clear_line(cli([*DRY_RUN], env={"YOLOKF_PROFILE": "dev"}), 2, message)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("kfp-token: eyJhbGciOi\n", "'kfp-token' would put a secret in a config file; give a file path"),
        ("token: eyJhbGciOi\n", "'token' would put a secret"),
        ("cookie: authservice_session=abc\n", "'cookie' would put a secret"),
        ("registry-password: hunter2\n", "'registry-password' would put a secret"),
        ("AWS_SECRET_ACCESS_KEY: abc\n", "'AWS_SECRET_ACCESS_KEY' would put a secret"),
        ("tune:\n  api-key: abc\n", "'api-key' would put a secret"),
        ("host: https://me:hunter2@kfp.example.com\n", "host: a URL with a password in a config file"),
    ],
)
def test_a_secret_is_refused_with_what_to_use_instead(cli, text, line):
    write("epochs: 5\n" + text)
    result = cli(DRY_RUN)
    assert_one_clear_line(result, 2, f"yolokf.yaml:{2 + text.count(chr(10)) - 1}: {line}")
    assert "or a Kubernetes Secret (--data-secret" in result.stderr
    assert "hunter2" not in result.output and "eyJhbGciOi" not in result.output


def test_file_paths_and_secret_names_are_options_not_secrets(cli):
    write(
        """\
        token-file: /var/run/kfp/token
        cookie-file: ~/.kfp-cookie
        data-secret: s3-creds
        registry-token-secret: registry-token
        image-pull-secret: [regcred]
        """
    )
    rows = table(cli, [])
    assert rows["--token-file"] == ("/var/run/kfp/token", "file (yolokf.yaml:1)")
    assert rows["--data-secret"] == ("s3-creds", "file (yolokf.yaml:3)")
    assert rows["--image-pull-secret"] == ("regcred", "file (yolokf.yaml:5)")


def test_missing_file_or_profile_is_one_line(cli):
    assert_one_clear_line(cli(["run", "--config", "nope.yaml"]), 2, "File 'nope.yaml' does not exist")
    assert_one_clear_line(cli(["run", "--profile", "prod"]), 2, "no profile 'prod': there is no config file")
    write("profiles:\n  prod: {gpus: 1}\n  dev: {gpus: 0}\n")
    assert_one_clear_line(cli(["run", "--profile", "prd"]), 2, "no profile 'prd' in yolokf.yaml (profiles: prod, dev)")
    assert_one_clear_line(cli(["config", "rn"]), 2, "'rn' is not a yolokf command; did you mean run?")


def test_help_does_not_read_the_file(cli):
    write("epochs: [\n")
    for args in (["--help"], ["run", "--help"], ["config", "--help"]):
        result = cli(args)
        assert result.exit_code == 0, result.output
    assert_one_clear_line(cli(DRY_RUN), 2, "yolokf.yaml:2: not valid YAML")


CLUSTER_RUN = [
    *("--model", "yolov8n.yaml", "--data", "shapes", "--epochs", "3", "--set", "lr0=0.01", "--set", "optimizer=SGD"),
    *("--gpus", "1", "--nodes", "2", "--checkpoint-pvc", "ckpt", "--step-timeout", "12h", "--image", "reg/yolokf:1"),
    *("--toleration", "nvidia.com/gpu:NoSchedule", "--toleration", "*", "--toleration", "pool=a100"),
    *("--node-selector", "pool=a100", "--pod-label", "team=vision", "--no-cache", "--namespace", "team-vision"),
]


def test_save_config_writes_the_file_that_repeats_the_dry_run(cli):
    env = {"KFP_HOST": HOST, "KFP_TOKEN": "eyJhbGciOi-secret", "YOLOKF_EXPERIMENT": "exp"}
    first = cli(["run", "--dry-run", *CLUSTER_RUN, "--save-config", "saved.yaml"], env=env)
    assert first.exit_code == 0, first.output
    assert first.stderr == "Wrote saved.yaml\n"
    saved = Path("saved.yaml").read_text()
    assert "secret" not in saved and "KFP_TOKEN" not in saved
    values = yaml.safe_load(saved)["run"]
    assert values["host"] == HOST and values["experiment"] == "exp", "values from the environment are kept"
    assert values["toleration"] == ["nvidia.com/gpu:NoSchedule", "*", "pool=a100"]
    assert "dry-run" not in values and "save-config" not in values
    again = cli(["run", "--config", "saved.yaml", "--dry-run"])
    assert again.exit_code == 0, again.output
    assert again.stdout == first.stdout  # the TrainJob, its tolerations, node selector and deadline included
    assert "tolerations:" in first.stdout and "activeDeadlineSeconds: 43200" in first.stdout


def test_save_config_of_a_sweep(cli):
    args = ["--model", "yolov8n.yaml", "--data", "shapes", "--space", "lr0=loguniform:1e-4:1e-1", "--trials", "3"]
    args += ["--set", "optimizer=SGD", "--space", "mosaic=uniform:0:1"]
    first = cli(["tune", *args, "--seed", "7", "--dry-run", "--save-config", "sweep.yaml"])
    assert first.exit_code == 0, first.output
    assert "mosaic" in first.output and "seed 7" in first.output
    again = cli(["tune", "--config", "sweep.yaml", "--dry-run"])
    assert again.exit_code == 0, again.output
    assert (again.stdout, again.stderr) == (first.stdout, first.stderr.replace("Wrote sweep.yaml\n", ""))


def test_save_config_needs_dry_run(cli):
    result = cli(["run", "--data", "shapes", "--save-config", "saved.yaml"])
    assert_one_clear_line(result, 2, "--save-config writes the file of a --dry-run; add --dry-run.")
    assert not Path("saved.yaml").exists()


@pytest.mark.parametrize(
    "text", ["nvidia.com/gpu=present:NoSchedule", "nvidia.com/gpu:NoSchedule", "gpu", "*", ":NoExecute"]
)
def test_a_saved_toleration_reads_back_the_same(text):
    toleration = parse_toleration(text)
    assert parse_toleration(toleration_text(toleration)) == toleration
