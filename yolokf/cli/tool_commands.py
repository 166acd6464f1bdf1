"""The commands around a training: `build-image`, `shapes` and `fetch`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from yolokf.cli.cluster_options import (
    FetchEndpoint,
    FetchOut,
    FetchWorkers,
)
from yolokf.cli.console import BuildReporter, errs, fetch_bar, say, yaml_document
from yolokf.core.errors import UsageError


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
    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.image.context import BuildSpec, describe, plan_build
    from yolokf.image.engine import build_image as build

    spec = BuildSpec(base_image, repository, tag, platform, pip_index_url, pip_extra_index_url, weights)
    plan = plan_build(spec, push=push)
    if dry_run:
        say(yaml_document(*describe(plan)))
        return
    result = build(plan, BuildReporter(errs()))
    say(result.digest_reference or plan.reference)


def shapes(
    folder: Annotated[Path, typer.Argument(help="Folder to write the dataset into (must not exist).")],
    task: Annotated[
        str, typer.Option(help="detect, segment, pose, obb or classify: the dataset --data shapes-TASK trains on.")
    ] = "detect",
) -> None:
    """Write a built-in synthetic shapes dataset (128 train / 32 val / 32 test images).

    Example: yolokf shapes ./shapes-seg --task segment
    """
    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.data.shapes import TASK_DATASET, write_dataset

    if task not in TASK_DATASET:
        raise UsageError(f"--task {task!r} is not an ultralytics task; use one of {', '.join(TASK_DATASET)}.")
    if folder.exists():
        raise UsageError(f"{folder} already exists; choose a new folder.")
    say(f"Wrote {write_dataset(folder, task)}")


def fetch(
    uri: Annotated[str, typer.Argument(help="s3://BUCKET/PREFIX, gs://..., or an archive (.zip, .tar.gz) URL.")],
    out: FetchOut,
    fetch_workers: FetchWorkers = None,
    s3_endpoint_url: FetchEndpoint = None,
) -> None:
    """Download a dataset with the pipeline's download code; a second fetch moves only what changed.

    Example: yolokf fetch s3://datasets/coco --out ./coco --fetch-workers 64
    """
    import importlib.util

    # Imported on use, for start-up time: `yolokf --help` and the other commands do not load it.
    from yolokf.data.fetch import fetch as fetch_data

    missing = [name for name in ("boto3", "obstore") if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"yolokf fetch needs {' and '.join(missing)}: pip install {' '.join(missing)}.")
    with fetch_bar(f"Fetching {uri}") as on_progress:
        done = fetch_data(uri, out, workers=fetch_workers, endpoint=s3_endpoint_url, on_progress=on_progress)
    say(done.summary(uri, out))
