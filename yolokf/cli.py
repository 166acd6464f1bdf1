"""yolokf's command line: parse options, call one core function, print the result or one error line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from yolokf import __version__
from yolokf.errors import YolokfError

app = typer.Typer(
    help="Train Ultralytics YOLO models on Kubeflow Pipelines: build the image, compile, run.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold tokens
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

# Training flags: ultralytics' names and defaults.
Model = Annotated[str, typer.Option(help="Weights (.pt) or model YAML (yolov8n.yaml trains from scratch).")]
Data = Annotated[str, typer.Option(help="Dataset YAML, YOLO dataset folder, or 'shapes' (built in, offline).")]
Epochs = Annotated[int, typer.Option(help="Training epochs.")]
Imgsz = Annotated[int, typer.Option(help="Image size in pixels.")]
Batch = Annotated[int, typer.Option(help="Batch size.")]
Device = Annotated[str, typer.Option(help="ultralytics device: '' picks, 'cpu', '0', '0,1'.")]
Workers = Annotated[int, typer.Option(help="DataLoader workers.")]
Seed = Annotated[int, typer.Option(help="Random seed.")]
Set = Annotated[
    list[str] | None,
    typer.Option("--set", help="Any other ultralytics train argument, KEY=VALUE (repeatable)."),
]
Image = Annotated[
    str | None,
    typer.Option(envvar="YOLOKF_IMAGE", help="Step image (tag or digest). Default: the image build-image made."),
]


def _config(model, data, epochs, imgsz, batch, device, workers, seed, set_):  # noqa: ANN001, ANN202
    from yolokf.settings import TrainConfig, parse_set

    return TrainConfig(
        model=model,
        data=data,
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        device=device,
        workers=workers,
        seed=seed,
        extra=parse_set(set_ or []),
    )


def _version(value: bool) -> None:
    if value:
        console.print(f"yolokf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    pass


@app.command("compile")
def compile_(
    out: Annotated[Path, typer.Option("--out", "-o", help="Pipeline YAML to write.")] = Path("yolov8_train.yaml"),
    model: Model = "yolov8n.pt",
    data: Data = "coco128.yaml",
    epochs: Epochs = 100,
    imgsz: Imgsz = 640,
    batch: Batch = 16,
    device: Device = "",
    workers: Workers = 8,
    seed: Seed = 0,
    set_: Set = None,
    image: Image = None,
) -> None:
    """Write the Kubeflow pipeline YAML.  Example: yolokf compile --out yolov8_train.yaml --epochs 50"""
    from yolokf.cluster import StepOptions
    from yolokf.image import resolve_image
    from yolokf.pipeline import compile_pipeline

    config = _config(model, data, epochs, imgsz, batch, device, workers, seed, set_)
    path = compile_pipeline(config, StepOptions(image=resolve_image(image)), out)
    console.print(f"Wrote {path}")


@app.command()
def run(
    model: Model = "yolov8n.pt",
    data: Data = "coco128.yaml",
    epochs: Epochs = 100,
    imgsz: Imgsz = 640,
    batch: Batch = 16,
    device: Device = "",
    workers: Workers = 8,
    seed: Seed = 0,
    set_: Set = None,
    pipeline_root: Annotated[
        Path, typer.Option(envvar="YOLOKF_PIPELINE_ROOT", help="Where local runs keep their outputs.")
    ] = Path("yolokf-runs"),
) -> None:
    """Train: on this machine through kfp.local.  Example: yolokf run --model yolov8n.yaml --data shapes"""
    from yolokf.local import run_local

    config = _config(model, data, epochs, imgsz, batch, device, workers, seed, set_)
    result = run_local(config, pipeline_root)
    _print_local_run(result)


@app.command("build-image")
def build_image(
    repository: Annotated[
        str, typer.Option("--repository", "-r", envvar="YOLOKF_REPOSITORY", help="Image name, with registry to push.")
    ] = "yolokf",
    tag: Annotated[
        str | None, typer.Option("--tag", "-t", help="Tag. Default: <version>-<content hash>, same inputs same tag.")
    ] = None,
    base_image: Annotated[
        str, typer.Option(envvar="YOLOKF_BASE_IMAGE", help="Base image holding PyTorch (kept as is).")
    ] = "nvcr.io/nvidia/pytorch:26.09-py3",
    push: Annotated[bool, typer.Option("--push", help="Push, then print repo@sha256:... .")] = False,
    platform: Annotated[str | None, typer.Option(help="Target platform, e.g. linux/amd64.")] = None,
    pip_index_url: Annotated[
        str | None, typer.Option(envvar="YOLOKF_PIP_INDEX_URL", help="pip index (mirror) used in the build.")
    ] = None,
    pip_extra_index_url: Annotated[
        str | None, typer.Option(envvar="YOLOKF_PIP_EXTRA_INDEX_URL", help="Extra pip index used in the build.")
    ] = None,
    weights: Annotated[Path | None, typer.Option(help="Local weights file to bake in, e.g. yolov8n.pt.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be built and pushed.")] = False,
) -> None:
    """Build the training image from this source tree, and push it.

    Registry credentials: `docker login`, or YOLOKF_REGISTRY_USERNAME and YOLOKF_REGISTRY_PASSWORD.
    Example: yolokf build-image --repository registry.example.com/ml/yolokf --push
    """
    from yolokf import image as images

    spec = images.BuildSpec(base_image, repository, tag, platform, pip_index_url, pip_extra_index_url, weights)
    plan = images.plan_build(spec, push=push)
    if dry_run:
        console.print("\n".join(images.describe(plan)), markup=False, highlight=False)
        return
    result = images.build_image(plan, images.Reporter(err))
    console.print(result.digest_reference or plan.reference, markup=False, highlight=False)


@app.command()
def shapes(
    folder: Annotated[Path, typer.Argument(help="Folder to write the dataset into (must not exist).")],
) -> None:
    """Write the built-in synthetic shapes dataset (YOLO layout, 128 train / 32 val images)."""
    from yolokf.datasets import write_shapes

    if folder.exists():
        raise YolokfError(f"{folder} already exists; choose a new folder.")
    console.print(f"Wrote {write_shapes(folder)}")


def _print_local_run(result) -> None:  # noqa: ANN001
    from rich.table import Table

    table = Table(title="Final validation metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    for name, path in result.artifacts.items():
        console.print(f"{name:>8}: {path}")
    console.print(f"Trained in {result.seconds:.0f} s; outputs under {result.pipeline_root}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: errors become one line on stderr and an exit code."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="yolokf", standalone_mode=False)
    except typer.Abort:
        err.print("Aborted.")
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors from typer's bundled click
        ctx = getattr(exc, "ctx", None)
        hint = f" See '{ctx.command_path} --help'." if ctx else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err.print(f"Error: {message.rstrip('.')}.{hint}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except YolokfError as exc:
        if os.getenv("YOLOKF_DEBUG"):
            raise
        err.print(f"Error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
