"""`embed --engine ray` on a local Ray runtime of 2 CPUs (ray.init(num_cpus=2), which drivers in other processes
join by its address): the same store as the local engine for images and texts, incremental reuse, a worker killed
mid-run, a driver killed mid-run and a rerun that embeds only the unfinished shards, and the one-line refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import ray  # the [ray] extra: `make test` installs it, so these tests run wherever the suite does
from conftest import write_image_folder, write_text_csv
from test_cli import assert_user_error, run
from tlcache.embed import embed_source
from tlcache.ray_engine import SHARDS_DIR, RayOptions
from tlcache.store import FeatureStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """A local Ray runtime of 2 CPUs for the module; its address, for drivers in other processes."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _resnet(weights) -> dict:
    return {"backbone": "torchvision:resnet18", "weights": str(weights), "image_size": 32, "precision": "fp32"}


def assert_same_store(a: Path, b: Path) -> None:
    """``a`` (Ray's) against ``b`` (local): the same name (the key), ids in the same order, labels, every attribute
    but how the local engine batched and how long it took to load the model, and features to float rounding."""
    first, second = FeatureStore(a), FeatureStore(b)
    assert a.name == b.name and first.key == second.key
    assert first.ids() == second.ids() and first.fingerprints() == second.fingerprints()
    assert np.array_equal(first.labels(), second.labels()) and first.class_names == second.class_names
    assert set(second.meta) - {"batch_size", "compiled", "load_seconds"} <= set(first.meta)
    np.testing.assert_allclose(first.features(), second.features(), rtol=1e-4, atol=1e-5)
    views = first.views()
    if views is not None:
        np.testing.assert_allclose(views, second.views(), rtol=1e-4, atol=1e-5)


def test_images_on_ray_give_the_local_store(cluster, tmp_path, resnet18_weights):
    folder = write_image_folder(tmp_path / "shapes", per_class=13)
    local = embed_source(folder, out=tmp_path / "local", progress=False, views=1, **_resnet(resnet18_weights))
    on_ray = embed_source(
        folder,
        out=tmp_path / "ray",
        progress=False,
        views=1,
        engine="ray",
        ray_options=RayOptions(workers=2, shard_size=5),
        **_resnet(resnet18_weights),
    )
    assert on_ray.embedded == 26 and on_ray.engine["shards"] == 6 and on_ray.engine["ray_workers"] == 2
    assert "on Ray: 2 workers, 6 shards" in on_ray.summary_line()
    assert_same_store(on_ray.path, local.path)
    assert FeatureStore(on_ray.path).meta["engine"] == "ray"
    assert not (tmp_path / "ray" / SHARDS_DIR).exists()  # the shards are gone once the store is published
    again = embed_source(
        folder, out=tmp_path / "ray", progress=False, views=1, engine="ray", **_resnet(resnet18_weights)
    )
    assert again.cached and again.embedded == 0


def test_texts_on_ray_give_the_local_store_and_reuse_rows_of_a_store_beside_it(cluster, tmp_path, tiny_bert_dir):
    write_text_csv(tmp_path / "some.csv", n=30, seed=0)
    write_text_csv(tmp_path / "all.csv", n=50, seed=0)  # its first 30 rows are some.csv's
    options = {"backbone": f"hf:{tiny_bert_dir}", "precision": "fp32", "progress": False}
    local = embed_source(tmp_path / "all.csv", out=tmp_path / "local", **options)
    embed_source(tmp_path / "some.csv", out=tmp_path / "ray", **options)  # a store of the same config beside
    on_ray = embed_source(
        tmp_path / "all.csv", out=tmp_path / "ray", engine="ray", ray_options=RayOptions(shard_size=8), **options
    )
    assert (on_ray.reused, on_ray.embedded, on_ray.engine["shards"]) == (30, 20, 3)
    assert_same_store(on_ray.path, local.path)
    assert FeatureStore(on_ray.path).meta["truncated_rows"] == 0


def _ray_workers() -> list[int]:
    """The processes of this machine that are the engine's Ray actors (Ray titles them ray::ShardWorker...)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if entry.name.isdigit() and title.startswith(b"ray::ShardWorker"):
            found.append(int(entry.name))
    return found


def test_a_worker_killed_mid_run_is_restarted_and_the_store_is_the_same(cluster, tmp_path, resnet18_weights):
    folder = write_image_folder(tmp_path / "shapes", per_class=60, size=32)
    local = embed_source(folder, out=tmp_path / "local", progress=False, **_resnet(resnet18_weights))
    killed: list[int] = []

    def kill_the_first_worker() -> None:  # as soon as one exists, with SIGKILL: no clean-up of any kind
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            for pid in _ray_workers():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.01)

    killer = threading.Thread(target=kill_the_first_worker)
    killer.start()
    on_ray = embed_source(
        folder,
        out=tmp_path / "ray",
        progress=False,
        engine="ray",
        ray_options=RayOptions(workers=2, shard_size=6),
        **_resnet(resnet18_weights),
    )
    killer.join()
    assert killed, "no Ray worker was seen to kill"
    assert on_ray.rows == 120 and 0 < on_ray.embedded <= 120  # rows a killed shard had written are kept, not redone
    assert_same_store(on_ray.path, local.path)


def test_a_rerun_after_the_driver_is_killed_embeds_only_the_unfinished_shards(cluster, tmp_path, tiny_bert_dir):
    write_text_csv(tmp_path / "texts.csv", n=400, seed=3)
    backbone = ["-b", f"hf:{tiny_bert_dir}", "--precision", "fp32"]
    command = [sys.executable, "-m", "tlcache.cli", "embed", "texts.csv", *backbone, "--out", "ray", "--no-progress"]
    command += [
        "--engine",
        "ray",
        "--address",
        cluster,
        "--ray-workers",
        "1",
        "--shard-size",
        "10",
        "--batch-size",
        "2",
    ]
    driver = subprocess.Popen(command, cwd=tmp_path)
    shards = tmp_path / "ray" / SHARDS_DIR
    deadline = time.monotonic() + 180
    while len(list(shards.rglob("*.h5"))) < 3 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.kill()
    driver.wait()
    assert driver.returncode == -signal.SIGKILL, "the driver ended before it could be killed"
    time.sleep(2)  # the killed driver's worker is stopped by Ray; a shard it was writing stays a partial
    finished = len(list(shards.rglob("*.h5")))
    assert 3 <= finished < 40

    again = ["--engine", "ray", "--address", cluster, "--shard-size", "10", "--json"]  # the same command, as JSON
    rerun = run("embed", "texts.csv", *backbone, "--out", "ray", *again)
    assert rerun.exit_code == 0, rerun.output
    result = json.loads(rerun.stdout)
    assert result["engine"]["shards_done_before"] == finished
    assert result["embedded"] <= 400 - 10 * finished  # a partial shard's rows are kept too
    local = embed_source(
        tmp_path / "texts.csv", out=tmp_path / "local", backbone=f"hf:{tiny_bert_dir}", precision="fp32"
    )
    assert_same_store(Path(result["path"]), local.path)
    assert not shards.exists()


def test_ray_options_are_refused_in_one_line_where_they_cannot_apply(cluster, tmp_path, image_folder):
    assert_user_error(run("embed", image_folder, "--address", "auto"), "--address applies to --engine ray")
    assert_user_error(run("embed", image_folder, "--shard-size", "7"), "--shard-size applies to --engine ray")
    assert_user_error(
        run("embed", image_folder, "--engine", "ray", "--gpus-per-worker", "1"), "the Ray cluster has 0 GPUs"
    )
    assert_user_error(run("embed", image_folder, "--engine", "ray", "--device", "cuda"), "needs --gpus-per-worker")


def test_without_ray_the_engine_says_which_extra_to_install(tmp_path, image_folder):
    code = "import sys; sys.modules['ray'] = None; from tlcache.cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", code, "embed", str(image_folder), "--engine", "ray"], capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: --engine ray needs Ray: pip install 'tlcache[ray]'"
    ]
