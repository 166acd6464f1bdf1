"""The dataset cache on a PVC (--data-cache-pvc): compiled mounts, fetch once, changed objects, concurrent runs.

The same real S3 server (moto's server mode) and loopback fault proxy as tests/test_fetch.py; the PVC is a
folder here, as it is a folder in the pod.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.loopback.s3 import FakeArtifact, local_files, upload_folder, upload_many
from tests.test_cluster import compiled, container
from tests.test_fetch import tar_gz
from yolokf.data import fetch as fetch_module
from yolokf.data.cache import fetch_cached, source_id
from yolokf.data.datasets import CACHED, DESCRIPTOR, dataset_hash, prepare_dataset, step_data, step_dataset_hash


def test_compiled_pipeline_mounts_the_cache_on_the_download_and_every_step_that_reads_data(cli, tmp_path):
    args = ["--data", "s3://datasets/coco", "--data-secret", "s3-creds", "--data-cache-pvc", "data-cache"]
    spec, configs = compiled(cli, tmp_path, *args, "--fetch-workers", "48", "--export", "onnx")
    readers = {"exec-fetch-dataset", "exec-yolo-train", "exec-yolo-evaluate", "exec-yolo-export"}
    assert readers <= set(configs), set(configs)
    for executor in readers:
        (mount,) = [m for m in configs[executor].pvc_mount if m.mount_path == "/mnt/yolokf/data-cache"]
        assert mount.pvc_name_parameter.runtime_value.constant.string_value == "data-cache", executor
    fetched = spec.root.dag.tasks["fetch-dataset"].inputs.parameters
    assert fetched["data_cache_pvc"].runtime_value.constant.string_value == "data-cache", "compile-time"
    assert not spec.root.dag.tasks["fetch-dataset"].caching_options.enable_cache, "lists the bucket every run"
    env = {e["name"]: e["value"] for e in container(spec, "exec-fetch-dataset")["env"]}
    assert env["YOLOKF_FETCH_WORKERS"] == "48"

    spec, configs = compiled(cli, tmp_path, "--data", "s3://datasets/coco", "--data-secret", "s3-creds")
    assert not any(m.mount_path == "/mnt/yolokf/data-cache" for c in configs.values() for m in c.pvc_mount)
    fetch = spec.root.dag.tasks["fetch-dataset"]
    assert fetch.inputs.parameters["data_cache_pvc"].runtime_value.constant.string_value == ""
    assert not fetch.caching_options.enable_cache, "without the cache too: the bucket is read every run (issue 24)"


def test_bad_cache_flags_are_one_line(cli, tmp_path):
    for args, message in (
        (["--data-cache-pvc", "Bad_Name"], "--data-cache-pvc 'Bad_Name' is not a Kubernetes object name"),
        (
            ["--fetch-workers", "0"],
            "Invalid value for '--fetch-workers' (env var: 'YOLOKF_FETCH_WORKERS'): 0 is not in the range x>=1.",
        ),
    ):
        result = cli(["compile", "--out", tmp_path / "p.yaml", "--model", "yolov8n.yaml", "--data", "s3://d/x", *args])
        assert result.exit_code == 2, result.output
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not (tmp_path / "p.yaml").exists()


def test_the_training_step_reads_the_cache_in_place_and_the_artifact_holds_only_the_note(
    s3, dataset_dir, tmp_path, monkeypatch
):
    upload_folder(s3, dataset_dir, "vision/shapes")
    monkeypatch.setattr(fetch_module, "DATA_CACHE_PATH", str(tmp_path / "pvc"))
    artifact = FakeArtifact(str(tmp_path / "artifact"))
    fetch_module.fetch_step(uri="s3://datasets/vision/shapes", dataset=artifact, data_cache_pvc="data-cache")
    assert [p.name for p in Path(artifact.path).iterdir()] == [DESCRIPTOR], "no data through the pipeline root"
    note = json.loads((Path(artifact.path) / DESCRIPTOR).read_text())
    version = tmp_path / "pvc" / source_id("s3://datasets/vision/shapes") / note["key"]
    # The registry's content hash, read once when the version was filled: the same as the uploaded folder's.
    local_hash = dataset_hash(prepare_dataset(dataset_dir, tmp_path / "folder"))  # its path: is another machine's
    assert note == {"kind": CACHED, "path": str(version), "key": note["key"], "content_hash": local_hash}
    assert (version.parent / f"{note['key']}.content-hash").read_text().strip() == local_hash
    assert artifact.metadata["kind"] == CACHED and len(note["key"]) == 64
    local = step_data("s3://datasets/vision/shapes", artifact, tmp_path / "work")
    spec = yaml.safe_load(Path(local).read_text())
    assert spec["path"] == str(version.resolve()), "the training step reads the version where it lies"
    images = sorted(p.name for p in (version / "images" / "train").iterdir())
    assert len(images) == 8 and images == sorted(p.name for p in (dataset_dir / "images" / "train").iterdir())
    # A later run of the same version reads the kept hash instead of the 20 GB: here, not the (altered) files.
    (version.parent / f"{note['key']}.content-hash").write_text("sha256:kept\n")
    again = FakeArtifact(str(tmp_path / "again"))
    fetch_module.fetch_step(uri="s3://datasets/vision/shapes", dataset=again, data_cache_pvc="data-cache")
    assert step_dataset_hash(local, again) == "sha256:kept"


def test_same_data_is_fetched_once_and_a_changed_object_is_fetched_again(proxy, s3, tmp_path):
    objects = upload_many(s3, "cached", count=200)
    cache = tmp_path / "pvc"
    first = fetch_cached("s3://datasets/cached", cache, say=lambda line: None)
    assert first.fetched is not None and first.fetched.files_fetched == 200
    assert local_files(first.path) == objects
    gets = sum(proxy.gets.values())

    again = fetch_cached("s3://datasets/cached", cache, say=lambda line: None)
    assert (again.path, again.key, again.fetched) == (first.path, first.key, None)
    assert sum(proxy.gets.values()) == gets, "the second run downloads nothing"

    key = sorted(objects)[7]
    changed = bytes(b ^ 0x55 for b in objects[key]) or b"new"
    s3.put_object(Bucket="datasets", Key=f"cached/{key}", Body=changed)
    proxy.gets.clear()
    third = fetch_cached("s3://datasets/cached", cache, say=lambda line: None)
    assert third.key != first.key and third.fetched is not None
    assert (third.fetched.files_fetched, third.fetched.files_done) == (1, 200)
    assert list(proxy.gets) == [f"/datasets/cached/{key}"]
    assert local_files(third.path) == {**objects, key: changed}
    assert local_files(first.path) == objects, "the older version is untouched (links are never written through)"
    assert sorted(p.name for p in (cache / source_id("s3://datasets/cached")).iterdir() if p.is_dir()) == sorted(
        [first.key, third.key]
    )


def test_concurrent_and_interrupted_fetches_into_one_cache(proxy, s3, tmp_path):
    objects = upload_many(s3, "together", count=200)
    cache = tmp_path / "pvc"
    script = (
        "import sys; from pathlib import Path; from yolokf.data.cache import fetch_cached; "
        "print(fetch_cached(sys.argv[1], Path(sys.argv[2]), workers=4).path)"
    )
    command = [sys.executable, "-c", script, "s3://datasets/together", str(cache)]
    proxy.delay = 0.02

    # A run killed halfway leaves a partial version; the next runs resume it instead of starting over.
    killed = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(proxy.gets.values()) < 60:
        time.sleep(0.05)
    killed.kill()
    killed.wait()
    (partial,) = (cache / source_id("s3://datasets/together")).glob("*.partial")
    whole = {p.relative_to(partial).as_posix() for p in partial.rglob("*") if p.suffix in (".ima", ".lab")}
    assert 40 <= len(whole) < 200, len(whole)
    proxy.gets.clear()

    # Two runs at once: one fetches while the other waits on the lock, then finds the version whole.
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    paths = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert len(paths) == 1
    version = Path(paths.pop())
    assert local_files(version) == objects
    assert set(proxy.gets.values()) == {1} and len(proxy.gets) == 200 - len(whole), "each missing object once"
    assert not any(f"/datasets/together/{k}" in proxy.gets for k in whole)
    assert not list(version.parent.glob("*.partial"))


def test_an_archive_is_cached_unpacked_once(s3, dataset_dir, tmp_path):
    s3.put_object(Bucket="datasets", Key="packs/shapes.tar.gz", Body=tar_gz(dataset_dir, "shapes"))
    first = fetch_cached("s3://datasets/packs/shapes.tar.gz", tmp_path / "pvc", say=lambda line: None)
    assert first.fetched is not None and first.fetched.files_fetched == 1
    assert (first.path / "shapes" / "data.yaml").is_file() and not (first.path / ".download").exists()
    again = fetch_cached("s3://datasets/packs/shapes.tar.gz", tmp_path / "pvc", say=lambda line: None)
    assert (again.path, again.fetched) == (first.path, None)
