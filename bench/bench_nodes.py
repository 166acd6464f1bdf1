"""Images/s of a training on 2 nodes (yolokf's distributed worker under torchrun) against 1 process (issue 19).

Both train the same job (same global batch and seed) on this machine: 1 process as the one-pod step does, and 2
loopback torchrun nodes (`yolokf run --nodes 2`'s launcher). images/s = train images x epochs / wall seconds of
the training (start-up, final validation and saving included). On GPU nodes, pass `--device 0` to the one-process
baseline and run the two nodes through Kubeflow Trainer (docs/benchmarks.md).

    python bench/bench_nodes.py --epochs 15 --imgsz 128 --batch 16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolov8n.yaml")
    parser.add_argument("--data", default="shapes")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--nodes", type=int, default=2)
    args = parser.parse_args()

    from yolokf.core.settings import TrainConfig
    from yolokf.data.datasets import resolve_data
    from yolokf.training.launch import run_local_nodes
    from yolokf.training.train import train

    config = TrainConfig(
        model=args.model,
        data=args.data,
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        device="cpu",
        workers=0,
        seed=0,
        train_args={"nbs": args.batch, "plots": False},
    )
    data = resolve_data(config.data)
    images = len(list((Path(data).parent / "images" / "train").iterdir()))
    rows = []
    for nodes in (1, args.nodes):
        with tempfile.TemporaryDirectory(prefix="bench-nodes-") as workdir:
            start = time.perf_counter()
            if nodes == 1:
                result = train(config, Path(workdir), data=data)
            else:
                result = run_local_nodes(config, nodes, Path(workdir), data=data)
            seconds = time.perf_counter() - start
        rows.append((nodes, seconds, images * args.epochs / seconds, result.metrics.get("mAP50", 0.0)))
    base = rows[0][2]
    print("| nodes | wall s | images/s | ratio | mAP50 |\n| --- | --- | --- | --- | --- |")
    for nodes, seconds, rate, map50 in rows:
        print(f"| {nodes} | {seconds:.1f} | {rate:.1f} | {rate / base:.2f}x | {map50:.3f} |")


if __name__ == "__main__":
    main()
