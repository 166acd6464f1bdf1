"""The images `yolokf build-image` made, remembered in `<cache>/images.json`, and the one `compile` and
`run` pin (`resolve_image`)."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yolokf import __version__
from yolokf.core.errors import UsageError

if TYPE_CHECKING:
    from yolokf.image.context import BuildResult


def _record_file() -> Path:
    """`images.json` under YOLOKF_CACHE_DIR, default ~/.cache/yolokf."""
    base = os.environ.get("YOLOKF_CACHE_DIR") or str(Path.home() / ".cache" / "yolokf")
    return Path(base) / "images.json"


def load_records() -> dict[str, dict[str, Any]]:
    """The recorded images by content hash; empty when there is no readable file."""
    try:
        data = json.loads(_record_file().read_text())
    except (OSError, ValueError):
        return {}
    return data.get("images", {}) if isinstance(data, dict) else {}


def record(result: BuildResult) -> None:
    """Remember the build (and push) under its content hash; best effort, never fails a build."""
    path = _record_file()
    images = load_records()
    entry = images.get(result.plan.context.content_hash, {})
    entry.update(
        {
            "reference": result.plan.reference,
            "image_id": result.image_id,
            "source_hash": result.plan.context.source_hash,
            "base_image": result.plan.spec.base_image,
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )
    if result.digest_reference:
        entry["digest_reference"] = result.digest_reference
        entry["pushed_at"] = entry["built_at"]
    images[result.plan.context.content_hash] = entry
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"images": images}, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)


@dataclass
class ImageChoice:
    reference: str
    reason: str
    records: list[dict[str, Any]] = field(default_factory=list)


def choose_image(explicit: str | None = None) -> ImageChoice:
    """The step image and why: see `resolve_image`."""
    if explicit is not None:
        if not explicit.strip():
            raise UsageError("--image is empty; give a tag or digest such as registry.example.com/ml/yolokf@sha256:...")
        return ImageChoice(explicit.strip(), "--image")
    # Imported on use, for start-up time: `compile --image` and `run --image` do not load it.
    from yolokf.image.context import DEFAULT_REPOSITORY, BuildSpec, assemble_context

    try:
        context = assemble_context(BuildSpec())
    except UsageError:
        return ImageChoice(f"{DEFAULT_REPOSITORY}:{__version__}", "no yolokf source tree to match builds against")
    matches = [r for r in load_records().values() if r.get("source_hash") == context.source_hash]
    pushed = sorted((r for r in matches if r.get("digest_reference")), key=lambda r: r.get("pushed_at", ""))
    if pushed:
        return ImageChoice(pushed[-1]["digest_reference"], "pushed by build-image from this tree", matches)
    built = sorted(matches, key=lambda r: r.get("built_at", ""))
    if built:
        return ImageChoice(built[-1]["reference"], "built by build-image from this tree, not pushed", matches)
    return ImageChoice(
        f"{DEFAULT_REPOSITORY}:{__version__}-{context.content_hash[:12]}",
        "not built yet: the tag `yolokf build-image` gives this tree with default options",
    )


def resolve_image(explicit: str | None) -> str:
    """The image `compile` and `run` pin.

    1. `--image` (tag or digest) when given;
    2. else the image `yolokf build-image` made from this source tree (same yolokf code, Dockerfile and
       requirements): the newest pushed one by digest (`repo@sha256:...`), else the newest local tag;
    3. else the tag that `yolokf build-image` with default options would give this tree
       (`yolokf:<version>-<hash12>`), never a floating `latest`.
    """
    return choose_image(explicit).reference
