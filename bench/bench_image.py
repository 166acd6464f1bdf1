"""Benchmarks for `yolokf build-image` (issue 3), on the Debian + torch stand-in base of the tests.

    sudo python bench/bench_image.py [--out bench-image.json] [--size-only]

Starts its own dockerd with the tests' cached data root (tests/conftest_docker.py) and measures:

1. size: what yolokf's layers add on top of the base, against one bare
   `pip install --no-cache-dir ultralytics-opencv-headless kfp` layer on the same base (goal <= 1.10x), and
   what the export step's packages add (issue 10: ONNX, ONNX Runtime, OpenVINO, the registry client): the same
   bare layer with them, against the bare layer;
2. rebuild after a source-only change: seconds, and which steps came from the cache (goal: only the last);
3. container start -> first training batch: the yolokf image, against the hand-made approach that
   pip-installs ultralytics and kfp when the container starts (same base, same snippet, same dataset).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from conftest_docker import ensure_stand_in_base, running_engine  # noqa: E402

from yolokf.image.context import BuildSpec, plan_build  # noqa: E402
from yolokf.image.engine import build_image  # noqa: E402

BARE_DOCKERFILE = """\
FROM {base}
RUN pip install --break-system-packages --no-cache-dir --progress-bar off ultralytics-opencv-headless kfp {extra}
"""
# The `train` extra's requirements that the promote steps (export, parity check, registry) brought in.
# The steps' packages beyond ultralytics and kfp: the exports' runtimes, the registries' clients, MLflow (issue 25).
PROMOTE_PACKAGES = ("onnx", "onnxslim", "onnxruntime", "openvino", "model-registry", "mlflow-skinny")


def promote_requirements() -> list[str]:
    """Those requirements as pyproject.toml pins them."""
    import tomllib

    train = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]
    found = [r for r in train if re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0] in PROMOTE_PACKAGES]
    assert len(found) == len(PROMOTE_PACKAGES), found
    return found


# Same in both containers: train yolov8n from scratch on the shapes dataset, stop at the first batch.
FIRST_BATCH = """\
import os, sys
from ultralytics import YOLO
model = YOLO("yolov8n.yaml")
def first(trainer):
    print("FIRST_BATCH", flush=True)
    os._exit(0)
model.add_callback("on_train_batch_end", first)
model.train(data="/data/data.yaml", epochs=1, imgsz=64, batch=8, workers=0, plots=False, val=False,
            project="/tmp/runs", name="bench", exist_ok=True, verbose=False)
"""
# Where the yolokf image's start goes (--start-only): torch's import, ultralytics' `deterministic=True` flag, the rest.
BREAKDOWN = """\
import time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
from ultralytics import YOLO
t2 = time.perf_counter()
YOLO("yolov8n.yaml")
t3 = time.perf_counter()
torch.use_deterministic_algorithms(True, warn_only=True)
t4 = time.perf_counter()
print(f"import torch {t1 - t0:.2f} s, import ultralytics {t2 - t1:.2f} s, the model {t3 - t2:.2f} s, "
      f"use_deterministic_algorithms {t4 - t3:.2f} s", flush=True)
"""
HAND_MADE = "pip install --break-system-packages --no-cache-dir --progress-bar off -q ultralytics-opencv-headless kfp"


def added_size(client, reference: str, base: str) -> int:  # type: ignore[no-untyped-def]
    """Bytes of the layers `reference` has on top of `base`."""
    above = client.images.get(reference).history()
    below = client.images.get(base).history()
    return sum(entry["Size"] for entry in above[: len(above) - len(below)])


def build_bare(client, base: str, extra: list[str] | None = None) -> str:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    data = BARE_DOCKERFILE.format(base=base, extra=" ".join(f"'{r}'" for r in extra or [])).encode()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    tag = "yolokf-bench/bare-pip:" + ("promote" if extra else "1")
    for chunk in client.api.build(
        fileobj=buffer, custom_context=True, tag=tag, rm=True, network_mode="host", decode=True
    ):
        if "error" in chunk:
            raise RuntimeError(chunk["error"])
    return tag


def first_batch_seconds(client, image: str, command: list[str], data: Path) -> float:  # type: ignore[no-untyped-def]
    container = client.containers.create(
        image,
        command,
        entrypoint=[],
        network_mode="host",
        volumes={str(data): {"bind": "/data", "mode": "rw"}},
        environment={"YOLO_OFFLINE": "true"},
    )
    try:
        started = time.perf_counter()
        container.start()
        for line in container.logs(stream=True, follow=True):
            if b"FIRST_BATCH" in line:
                return time.perf_counter() - started
        raise RuntimeError(f"{image}: no training batch: {container.logs(tail=20).decode(errors='replace')}")
    finally:
        container.remove(force=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here too")
    parser.add_argument("--size-only", action="store_true", help="measure the sizes only (1.)")
    parser.add_argument("--start-only", action="store_true", help="measure start -> first batch only (3.)")
    args = parser.parse_args()

    results: dict[str, object] = {}
    with running_engine() as engine, tempfile.TemporaryDirectory(prefix="yolokf-bench-") as tmp:
        client = engine.client()
        base = ensure_stand_in_base(client)
        results["base"] = base

        # 1. size
        spec = BuildSpec(base_image=base, repository="yolokf-bench/yolokf")
        built = build_image(plan_build(spec), client=client)
        if args.start_only:
            results["first_batch"] = first_batch(client, base, built.plan.reference, Path(tmp))
            print_first_batch(results)
            for _ in range(3):
                command = ["python3", "-c", BREAKDOWN]
                out = client.containers.run(built.plan.reference, command, entrypoint=[], remove=True)
                print("in the yolokf image:", out.decode().strip().splitlines()[-1])
            return
        ours = added_size(client, built.plan.reference, base)
        bare = added_size(client, build_bare(client, base), base)
        promote = added_size(client, build_bare(client, base, promote_requirements()), base)
        results["size"] = {
            "yolokf_mb": ours / 1e6,
            "bare_pip_mb": bare / 1e6,
            "ratio": ours / bare,
            "bare_pip_with_promote_mb": promote / 1e6,
            "promote_adds_mb": (promote - bare) / 1e6,
            "ratio_with_promote": ours / promote,
        }
        if args.size_only:
            print_size(results)
            if args.out:
                args.out.write_text(json.dumps(results, indent=2) + "\n")
            return

        # 2. rebuild after a source-only change, on a copy of the tree
        tree = Path(tmp) / "src"
        shutil.copytree(REPO / "yolokf", tree / "yolokf", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(REPO / "dockerfiles", tree / "dockerfiles")
        shutil.copy(REPO / "pyproject.toml", tree / "pyproject.toml")
        spec = BuildSpec(base_image=base, repository="yolokf-bench/rebuild", source=tree)
        build_image(plan_build(spec), client=client)
        init_py = tree / "yolokf" / "__init__.py"
        init_py.write_text(init_py.read_text() + f"\n# bench {time.time()}\n")
        started = time.perf_counter()
        rebuilt = build_image(plan_build(spec), client=client)
        results["rebuild"] = {
            "seconds": time.perf_counter() - started,
            "steps": [
                {"step": s.instruction, "state": "base" if s.base else "cached" if s.cached else "rebuilt"}
                for s in rebuilt.steps
            ],
        }

        # 3. container start -> first training batch
        results["first_batch"] = first_batch(client, base, built.plan.reference, Path(tmp))

    print_size(results)
    rebuild = results["rebuild"]
    print(f"rebuild after a source-only change: {rebuild['seconds']:.1f} s")  # type: ignore[index]
    for step in rebuild["steps"]:  # type: ignore[index]
        print(f"  {step['state']:>8}  {step['step']}")
    print_first_batch(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def first_batch(client, base: str, image: str, tmp: Path) -> dict[str, list[float]]:  # type: ignore[no-untyped-def]
    """Container start -> first training batch: the yolokf image 3 times, the pip-at-start approach twice."""
    from yolokf.data.datasets import builtin_dataset

    data = tmp / "shapes"
    shutil.copytree(builtin_dataset("shapes").parent, data)
    for cache in data.rglob("*.cache"):
        cache.unlink()
    yaml_text = (data / "data.yaml").read_text()
    (data / "data.yaml").write_text(re.sub(r"(?m)^path: .*$", "path: /data", yaml_text))
    snippet = ["python3", "-c", FIRST_BATCH]
    ours_s = [first_batch_seconds(client, image, snippet, data) for _ in range(3)]
    hand = ["sh", "-c", f"{HAND_MADE} && python3 -c '{FIRST_BATCH}'"]
    hand_s = [first_batch_seconds(client, base, hand, data) for _ in range(2)]
    return {"yolokf_s": ours_s, "hand_made_s": hand_s}


def print_first_batch(results: dict[str, object]) -> None:
    fb: dict[str, list[float]] = results["first_batch"]  # type: ignore[assignment]
    ours_runs = ", ".join(f"{x:.1f}" for x in fb["yolokf_s"])
    hand_runs = ", ".join(f"{x:.1f}" for x in fb["hand_made_s"])
    print(f"start -> first batch: yolokf {ours_runs} s; hand-made (pip install at start) {hand_runs} s")


def print_size(results: dict[str, object]) -> None:
    size: dict[str, float] = results["size"]  # type: ignore[assignment]
    print(f"size added on top of the base: yolokf {size['yolokf_mb']:.0f} MB, "
          f"bare pip layer {size['bare_pip_mb']:.0f} MB, ratio {size['ratio']:.3f}")  # fmt: skip
    print(f"the promote steps' packages ({', '.join(PROMOTE_PACKAGES)}): bare pip layer with them "
          f"{size['bare_pip_with_promote_mb']:.0f} MB, so they add {size['promote_adds_mb']:.0f} MB; yolokf against "
          f"that layer {size['ratio_with_promote']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
