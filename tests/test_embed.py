import h5py
import numpy as np
import pytest

from conftest import write_image_folder, write_text_csv
from tlcache.backbones import Backbone, create_backbone
from tlcache.embed import COMPILE_AUTO_MIN_ITEMS, _image_forward, embed_source
from tlcache.errors import UserError
from tlcache.store import FeatureStore, StoreWriter, probe_store


def _resnet(weights, **kw):
    return dict(backbone="torchvision:resnet18", weights=str(weights), image_size=kw.pop("image_size", 32), **kw)


def test_embed_writes_a_complete_store(image_folder, resnet18_weights, tmp_path):
    # fp32, to compare with the backbone's own (fp32) embed to float rounding; the default is auto.
    result = embed_source(
        image_folder, out=tmp_path / "cache", precision="fp32", progress=False, **_resnet(resnet18_weights)
    )
    assert not result.cached and result.rows == result.embedded == 12
    store = FeatureStore(result.path)
    assert store.meta["complete"] and store.n_rows == 12 and store.dim == 512
    assert store.meta["backbone"] == "torchvision:resnet18" and store.meta["modality"] == "image"
    assert store.class_names == ["circle", "square"]
    assert store.key == result.key and result.key[:20] in result.path.name
    # The stored rows are exactly what the backbone gives for those files.
    backbone = create_backbone("torchvision:resnet18", weights=str(resnet18_weights), image_size=32)
    expected = backbone.embed([image_folder / i for i in store.ids()[:3]])
    np.testing.assert_allclose(store.features()[:3], expected, rtol=1e-4, atol=1e-5)


def test_same_embed_twice_is_a_cache_hit_without_loading_the_model(text_csv, tiny_bert_dir, monkeypatch):
    first = embed_source(text_csv, f"hf:{tiny_bert_dir}", progress=False)
    written = FeatureStore(first.path).meta["finished"]

    def no_loading(self, device="auto"):
        raise AssertionError("a cache hit must not load the model")

    monkeypatch.setattr(Backbone, "load", no_loading)
    second = embed_source(text_csv, f"hf:{tiny_bert_dir}", progress=False)
    assert second.cached and second.embedded == 0 and second.path == first.path
    assert FeatureStore(first.path).meta["finished"] == written


# A cache hit computes the store's key and reads the store: no model, and no torch where no GPU can be visible.
CACHE_HIT_SCRIPT = """
import sys
import tlcache
result = tlcache.embed_source(sys.argv[1], sys.argv[2], out=sys.argv[3], progress=False)
print(result.cached, "torch" in sys.modules)
"""


def test_a_cache_hit_imports_no_torch_where_no_gpu_can_be_visible(tmp_path, tiny_bert_dir):
    """Importing torch took a cache hit 1.2-3.5 s, and kept a recipe's `fit-head --head all` after its embed steps
    from training the mlp in a forked process (tlcache.forked: only before torch is imported). Text models and the
    packaged image models need no torch for their key; torchvision's do (torchvision imports it to list its models)."""
    import subprocess
    import sys
    from pathlib import Path

    from tlcache.backbones.base import GPU_DEVICE_FILES

    source, backbone, cache = write_text_csv(tmp_path / "r.csv", n=8), f"hf:{tiny_bert_dir}", tmp_path / "cache"
    embed_source(source, backbone, out=cache, progress=False)
    command = [sys.executable, "-c", CACHE_HIT_SCRIPT, str(source), backbone, str(cache)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    gpu_possible = any(Path(path).exists() for path in GPU_DEVICE_FILES)
    assert done.stdout.split() == ["True", str(gpu_possible)]


def test_the_device_type_of_a_cache_key_is_the_devices_own(monkeypatch):
    import torch

    import tlcache.backbones.base as base

    assert base.resolve_device_type("auto") == base.resolve_device("auto").type
    assert base.resolve_device_type("cpu") == "cpu"
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        base.resolve_device_type("tpu")
    monkeypatch.setattr(base, "GPU_DEVICE_FILES", (__file__,))  # a driver's file "there": torch is asked
    asked = []
    monkeypatch.setattr(base, "resolve_device", lambda device: asked.append(device) or torch.device("cpu"))
    assert base.resolve_device_type("auto") == "cpu" and asked == ["auto"]


def test_explicit_h5_out_is_replaced_only_with_overwrite(tmp_path, tiny_bert_dir):
    """Two sources given the same --out: the second is refused (the first store stays) unless --overwrite."""
    out = tmp_path / "mine.h5"
    first = embed_source(write_text_csv(tmp_path / "a.csv", n=8), f"hf:{tiny_bert_dir}", out=out, progress=False)
    other = write_text_csv(tmp_path / "b.csv", n=10)
    with pytest.raises(UserError, match="mine.h5 holds another store .*--overwrite to replace it"):
        embed_source(other, f"hf:{tiny_bert_dir}", out=out, progress=False)
    assert FeatureStore(out).key == first.key and FeatureStore(out).n_rows == 8
    second = embed_source(other, f"hf:{tiny_bert_dir}", out=out, progress=False, overwrite=True)
    assert first.path == second.path == out and not second.cached
    assert FeatureStore(out).n_rows == 10 and FeatureStore(out).key == second.key
    (tmp_path / "notes.h5").write_text("my notes")
    with pytest.raises(UserError, match="notes.h5 holds a file that is no store"):
        embed_source(other, f"hf:{tiny_bert_dir}", out=tmp_path / "notes.h5", progress=False)
    assert (tmp_path / "notes.h5").read_text() == "my notes"


def test_interrupted_embed_resumes_to_the_same_features(tmp_path, resnet18_weights, monkeypatch):
    folder = write_image_folder(tmp_path / "imgs", per_class=10)
    reference = embed_source(folder, out=tmp_path / "ref", batch_size=4, progress=False, **_resnet(resnet18_weights))

    original_write = StoreWriter.write
    calls = {"n": 0}

    def write_then_die(self, rows, features, views=None):
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the third batch
        calls["n"] += 1
        original_write(self, rows, features, views)

    monkeypatch.setattr(StoreWriter, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        embed_source(folder, out=tmp_path / "cut", batch_size=4, progress=False, **_resnet(resnet18_weights))
    assert not list((tmp_path / "cut").glob("*.h5")), "an interrupted store must not appear under its final name"
    [partial] = (tmp_path / "cut").glob("*.h5.partial")
    with h5py.File(partial) as handle:
        assert handle["done"][()].sum() == 8 and not handle.attrs["complete"]
    with pytest.raises(UserError, match=r"incomplete \(8 of 20 rows\)"):
        FeatureStore(partial)
    with pytest.raises(UserError, match=r"incomplete \(8 of 20 rows\)"):
        FeatureStore(str(partial).removesuffix(".partial"))  # the name the user expects points at the partial

    monkeypatch.setattr(StoreWriter, "write", original_write)
    resumed = embed_source(folder, out=tmp_path / "cut", batch_size=4, progress=False, **_resnet(resnet18_weights))
    assert resumed.embedded == 12 and resumed.rows == 20 and resumed.reused == 0
    assert not partial.exists() and resumed.path.name == reference.path.name
    np.testing.assert_array_equal(FeatureStore(resumed.path).features(), FeatureStore(reference.path).features())


def test_unlabelled_text_and_float16(tmp_path, tiny_bert_dir):
    path = tmp_path / "u.jsonl"
    path.write_text('{"text": "good"}\n{"text": "bad plot"}\n{"text": "fun"}\n')
    result = embed_source(path, f"hf:{tiny_bert_dir}", dtype="float16", progress=False)
    store = FeatureStore(result.path)
    assert store.labels().tolist() == [-1, -1, -1] and store.meta["dtype"] == "float16"
    assert store.features().dtype == np.float32 and store.features().shape == (3, 32)


def test_modality_mismatch_is_refused(text_csv, image_folder, resnet18_weights, tiny_bert_dir):
    with pytest.raises(UserError, match="embeds images but .* holds texts; use a text backbone such as minilm"):
        embed_source(text_csv, **_resnet(resnet18_weights))
    with pytest.raises(UserError, match="holds images; use an image backbone such as efficientnet-lite0"):
        embed_source(image_folder, f"hf:{tiny_bert_dir}")


def test_decoding_in_worker_processes_gives_the_same_rows(tmp_path, resnet18_weights):
    folder = write_image_folder(tmp_path / "imgs", per_class=8)
    single = embed_source(
        folder, out=tmp_path / "a", num_workers=0, batch_size=5, progress=False, **_resnet(resnet18_weights)
    )
    workers = embed_source(
        folder, out=tmp_path / "b", num_workers=2, batch_size=5, progress=False, **_resnet(resnet18_weights)
    )
    np.testing.assert_allclose(FeatureStore(single.path).features(), FeatureStore(workers.path).features(), atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_adding_items_embeds_only_the_new_ones(tmp_path, tiny_bert_dir, precision):
    path = write_text_csv(tmp_path / "grow.csv", n=30)
    options = {"batch_size": 8, "precision": precision, "progress": False}
    first = embed_source(path, f"hf:{tiny_bert_dir}", **options)
    with open(path, "a", encoding="utf-8") as handle:
        for i in range(10):
            handle.write(f"an added review number {i},pos\n")
    grown = embed_source(path, f"hf:{tiny_bert_dir}", **options)
    assert grown.key != first.key and grown.rows == 40
    assert grown.embedded == 10 and grown.reused == 30
    fresh = embed_source(path, f"hf:{tiny_bert_dir}", out=tmp_path / "fresh", **options)
    assert fresh.embedded == 40
    a, b = FeatureStore(grown.path).features(), FeatureStore(fresh.path).features()
    if precision == "fp32":
        np.testing.assert_allclose(a, b, atol=1e-5)
    else:  # in bf16 a row's rounding depends on the batch it was computed in
        cosine = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cosine.min() > 0.999


def test_added_images_reuse_rows_and_views(tmp_path, resnet18_weights):
    folder = write_image_folder(tmp_path / "imgs", per_class=4)
    options = dict(out=tmp_path / "cache", views=2, progress=False, **_resnet(resnet18_weights))
    first = embed_source(folder, **options)
    write_image_folder(tmp_path / "more", per_class=1, seed=5)
    for image in (tmp_path / "more").rglob("*.png"):
        image.rename(folder / image.parent.name / f"added-{image.name}")
    grown = embed_source(folder, **options)
    assert grown.embedded == 2 and grown.reused == 8
    fresh = embed_source(folder, **{**options, "out": tmp_path / "fresh"})
    grown_store, fresh_store = FeatureStore(grown.path), FeatureStore(fresh.path)
    np.testing.assert_allclose(grown_store.features(), fresh_store.features(), atol=1e-5)
    np.testing.assert_allclose(grown_store.views(), fresh_store.views(), atol=1e-5)
    assert FeatureStore(first.path).n_views == 2


def test_views_are_augmented_and_reproducible(tmp_path, resnet18_weights):
    folder = write_image_folder(tmp_path / "imgs", per_class=3)
    one = FeatureStore(embed_source(folder, out=tmp_path / "a", views=3, **_resnet(resnet18_weights)).path)
    two = FeatureStore(
        embed_source(folder, out=tmp_path / "b", views=3, num_workers=2, **_resnet(resnet18_weights)).path
    )
    views, features = one.views(), one.features()
    assert views.shape == (6, 3, 512)
    np.testing.assert_allclose(views, two.views(), atol=1e-5)  # seeded per item: same views in workers or not
    assert not np.allclose(views[:, 0], features, atol=1e-3)  # a view is not the plain image
    assert not np.allclose(views[:, 0], views[:, 1], atol=1e-3)  # nor a copy of another view
    assert one.meta["views_config"]["n"] == 3


def test_views_refused_for_text(text_csv, tiny_bert_dir):
    with pytest.raises(UserError, match="--views applies to image backbones"):
        embed_source(text_csv, f"hf:{tiny_bert_dir}", views=2)


SLOW_EMBED = """
import sys, time
from tlcache.backbones.transformers_text import TransformersText
forward = TransformersText.forward
def slow_forward(self, inputs):
    time.sleep(0.1)
    return forward(self, inputs)
TransformersText.forward = slow_forward
from tlcache.cli import main
sys.argv = ["tlcache", "embed", *sys.argv[1:]]
main()
"""


def _slow_embed(args, env_home):
    import os
    import subprocess
    import sys

    env = {**os.environ, "TLCACHE_HOME": str(env_home)}
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_EMBED, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(predicate, timeout=60.0):
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _rows_done_while_writing(folder):
    """Peek at a partial store that another process is writing (its rows are raw writes at fixed offsets)."""
    partials = list(folder.glob("*.partial"))
    if not partials:
        return 0
    try:
        with h5py.File(partials[0], "r", locking=False) as handle:
            return int(handle["done"][()].sum())
    except (OSError, KeyError):  # still being created
        return 0


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_gives_the_uninterrupted_features(tmp_path, tiny_bert_dir):
    import signal

    from click.testing import CliRunner

    from tlcache.cli import cli

    path = write_text_csv(tmp_path / "many.csv", n=160)
    args = [path, "-b", f"hf:{tiny_bert_dir}", "--batch-size", "4", "--out", tmp_path / "cache", "--no-progress"]
    process = _slow_embed(args, tmp_path / "home")
    _wait_for(lambda: _rows_done_while_writing(tmp_path / "cache") >= 8)
    process.send_signal(signal.SIGKILL)
    process.wait()
    [partial] = (tmp_path / "cache").glob("*.h5.partial")
    assert not list((tmp_path / "cache").glob("*.h5")), "a killed run must not publish a store"
    with pytest.raises(UserError, match="incomplete"):
        FeatureStore(partial)
    done = probe_store(partial).rows_done
    assert 0 < done < 160 and done % 4 == 0

    result = CliRunner().invoke(cli, ["embed", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    import json

    payload = json.loads(result.stdout)
    assert payload["embedded"] == 160 - done and not partial.exists()
    uninterrupted = embed_source(path, f"hf:{tiny_bert_dir}", batch_size=4, out=tmp_path / "ref", progress=False)
    np.testing.assert_allclose(
        FeatureStore(payload["path"]).features(), FeatureStore(uninterrupted.path).features(), atol=1e-6
    )


@pytest.mark.slow
def test_embed_killed_at_20_random_points_resumes_to_the_uninterrupted_features(tmp_path, tiny_bert_dir):
    import signal
    import time

    path = write_text_csv(tmp_path / "many.csv", n=240)
    cache = tmp_path / "cache"
    args = [path, "-b", f"hf:{tiny_bert_dir}", "--batch-size", "4", "--out", cache, "--no-progress"]
    rng = np.random.default_rng(17)
    # Kill points: when the partial store holds a drawn number of rows (0: during start-up or creation), then a
    # drawn fraction of a batch's time later, so a kill lands anywhere in a write: features, flush, marks.
    targets = sorted(rng.choice(np.arange(0, 240, 4), size=20, replace=False))
    kills, done_before = 0, 0
    for target in targets:
        process = _slow_embed(args, tmp_path / "home")
        reached = lambda target=target, process=process: (  # noqa: E731
            _rows_done_while_writing(cache) >= target or process.poll() is not None
        )
        _wait_for(reached, timeout=120)
        time.sleep(float(rng.uniform(0.0, 0.12)))
        if process.poll() is not None:  # it finished first: nothing left to interrupt
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        assert not list(cache.glob("*.h5")), "a killed run must not publish a store"
        done = probe_store(next(cache.glob("*.h5.partial"))).rows_done if list(cache.glob("*.partial")) else 0
        assert done >= done_before  # what was flushed stays: a resume never loses rows
        done_before = done
    assert kills >= 15, f"only {kills} kills landed before the run finished"
    final = _slow_embed(args, tmp_path / "home")
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, err
    [store] = cache.glob("*.h5")
    uninterrupted = embed_source(path, f"hf:{tiny_bert_dir}", batch_size=4, out=tmp_path / "ref", progress=False)
    np.testing.assert_allclose(FeatureStore(store).features(), FeatureStore(uninterrupted.path).features(), atol=1e-6)
    assert FeatureStore(store).ids() == FeatureStore(uninterrupted.path).ids()


@pytest.mark.slow
def test_a_second_writer_waits_and_then_hits_the_cache(tmp_path, tiny_bert_dir):
    path = write_text_csv(tmp_path / "some.csv", n=40)
    args = [path, "-b", f"hf:{tiny_bert_dir}", "--batch-size", "4", "--out", tmp_path / "cache", "--no-progress"]
    first = _slow_embed(args, tmp_path / "home")
    _wait_for(lambda: any((tmp_path / "cache").glob("*.partial")))
    second = _slow_embed(args, tmp_path / "home")
    out_first, _ = first.communicate(timeout=60)
    out_second, err_second = second.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0
    assert out_first.startswith("embedded 40 of 40 rows")
    assert "waiting for another tlcache process" in err_second
    assert out_second.startswith("cache hit: 40 rows")


def test_texts_are_batched_by_length_without_changing_their_features(tmp_path, tiny_bert_dir):
    from tlcache.backbones import create_backbone
    from tlcache.embed import _length_sorted_batches
    from tlcache.sources import load_source

    path = tmp_path / "mixed.csv"
    texts = ["good", "the movie was not very good and the plot was dull and the actor was bad", "fun", "a bad plot"]
    path.write_text("text\n" + "\n".join(texts * 3) + "\n", encoding="utf-8")
    result = embed_source(path, f"hf:{tiny_bert_dir}", batch_size=4, precision="fp32", progress=False)
    backbone = create_backbone(f"hf:{tiny_bert_dir}")
    one_by_one = np.vstack([backbone.embed([text]) for text in texts * 3])
    np.testing.assert_allclose(FeatureStore(result.path).features(), one_by_one, atol=1e-5)

    batches = _length_sorted_batches(backbone, load_source(path), np.arange(12), 4)
    assert all((np.diff(rows) > 0).all() for rows in batches)  # increasing rows, as writes want
    lengths = backbone.token_lengths(texts * 3)
    spans = [max(lengths[i] for i in rows) - min(lengths[i] for i in rows) for rows in batches]
    assert max(spans) < max(lengths) - min(lengths)  # batches group texts of similar length


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_agrees_with_fp32_and_has_its_own_key(tmp_path, tiny_bert_dir, resnet18_weights, precision):
    text = write_text_csv(tmp_path / "t.csv", n=16)
    images = write_image_folder(tmp_path / "imgs", per_class=4)
    for source, options in ((text, {"backbone": f"hf:{tiny_bert_dir}"}), (images, _resnet(resnet18_weights))):
        full = embed_source(source, out=tmp_path / "c", precision="fp32", progress=False, **options)
        mixed = embed_source(source, out=tmp_path / "c", precision=precision, progress=False, **options)
        assert mixed.key != full.key and not mixed.cached
        a, b = FeatureStore(full.path).features(), FeatureStore(mixed.path).features()
        cosine = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cosine.mean() > 0.99 and not np.array_equal(a, b)
        assert FeatureStore(mixed.path).meta["precision"] == precision


def test_auto_precision_follows_the_hardware(tmp_path, tiny_bert_dir):
    import torch

    from tlcache.backbones.base import cpu_has_bf16, resolve_precision

    expected = "bf16" if cpu_has_bf16() else "fp32"
    assert resolve_precision("auto", torch.device("cpu")) == expected
    result = embed_source(write_text_csv(tmp_path / "t.csv"), f"hf:{tiny_bert_dir}", precision="auto", progress=False)
    assert FeatureStore(result.path).meta["precision"] == expected
    with pytest.raises(UserError, match="--precision int8 is not supported"):
        resolve_precision("int8", torch.device("cpu"))


def test_compiled_model_gives_the_eager_features_with_a_ragged_last_batch_and_views(tmp_path, resnet18_weights):
    folder = write_image_folder(tmp_path / "imgs", per_class=4)  # 8 images in batches of 3: the last one holds 2
    common = dict(batch_size=3, precision="fp32", views=2, progress=False, **_resnet(resnet18_weights))
    eager = FeatureStore(embed_source(folder, out=tmp_path / "eager", compile_mode="off", **common).path)
    compiled = FeatureStore(embed_source(folder, out=tmp_path / "compiled", compile_mode="on", **common).path)
    assert compiled.meta["compiled"] and not eager.meta["compiled"]
    assert compiled.key == eager.key  # same features to float rounding: compiling is not in the key
    np.testing.assert_allclose(compiled.features(), eager.features(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(compiled.views(), eager.views(), rtol=1e-4, atol=1e-4)


def test_compile_auto_leaves_small_runs_eager_and_on_refuses_texts(image_folder, resnet18_weights, tmp_path):
    store = FeatureStore(embed_source(image_folder, out=tmp_path, progress=False, **_resnet(resnet18_weights)).path)
    assert not store.meta["compiled"]  # 12 images: compiling would cost more than it saves
    # auto follows the measurements: compiling did not pay for every model measured, so no run size compiles.
    backbone = create_backbone("torchvision:resnet18", weights=str(resnet18_weights))
    assert COMPILE_AUTO_MIN_ITEMS is None and _image_forward(backbone, "auto", 10**9, 16, False) is None
    with pytest.raises(UserError, match="--compile on applies to image backbones"):
        embed_source(write_text_csv(tmp_path / "t.csv"), "minilm", compile_mode="on", out=tmp_path)
    with pytest.raises(UserError, match="--compile sometimes is not supported"):
        embed_source(image_folder, compile_mode="sometimes", out=tmp_path, **_resnet(resnet18_weights))


def test_a_failed_compilation_falls_back_to_the_eager_model(tmp_path, resnet18_weights, monkeypatch, capsys):
    import torch._inductor.config as inductor_config

    # A real failure: inductor cannot build its kernels without a C++ compiler (and may not reuse cached ones).
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    folder = write_image_folder(tmp_path / "imgs", per_class=2)
    result = embed_source(folder, out=tmp_path, compile_mode="on", batch_size=3, **_resnet(resnet18_weights))
    store = FeatureStore(result.path)
    assert not store.meta["compiled"] and store.meta["complete"]
    assert "torch.compile failed" in capsys.readouterr().err


def test_embedding_leaves_the_callers_backbone_at_its_own_precision(tmp_path, tiny_bert_dir):
    backbone = create_backbone(f"hf:{tiny_bert_dir}")
    result = embed_source(write_text_csv(tmp_path / "t.csv"), backbone, precision="bf16", out=tmp_path, progress=False)
    assert FeatureStore(result.path).meta["precision"] == "bf16"
    assert backbone.precision == "fp32"
    at_fp32 = embed_source(write_text_csv(tmp_path / "t.csv"), backbone, precision="fp32", out=tmp_path)
    assert at_fp32.key != result.key and backbone.model is not None  # the model it loads is kept for next time


def test_texts_cut_to_the_models_limit_are_counted_in_the_summary_and_the_store(tmp_path, tiny_bert_dir):
    import csv

    path = tmp_path / "long.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(8):
            words = 400 if i % 3 == 0 else 5  # rows 0, 3 and 6 run far past the tiny model's 64 positions
            writer.writerow([" ".join(["good"] * words), "pos" if i % 2 else "neg"])
    result = embed_source(path, f"hf:{tiny_bert_dir}", out=tmp_path / "cache", progress=False)
    assert result.truncated == 3
    assert "3 texts cut to the model's limit" in result.summary_line()
    meta = FeatureStore(result.path).meta
    assert meta["truncated_rows"] == 3 and meta["max_tokens"] <= 64
    hit = embed_source(path, f"hf:{tiny_bert_dir}", out=tmp_path / "cache", progress=False)
    assert hit.cached and hit.truncated == 3  # the store's count, not none
    assert "3 texts cut to the model's limit" in hit.summary_line()
    # predict says so too (a new user's 50k-character text was cut without a word there)
    from tlcache.heads import fit_head
    from tlcache.predict import predict

    fit_head(result.path, "knn", test_fraction=0.25, out=tmp_path / "knn", progress=False)
    predicted = predict(tmp_path / "knn", path, out=tmp_path / "p.csv", cache_dir=tmp_path / "cache", progress=False)
    assert "(3 texts cut to the model's limit: their ends were not read; " in predicted.summary_line()
    assert predicted.in_training == 8  # the head's own texts (and repeats of them): said too
    # The same texts in another file (other columns and labels): every row reused from the store above, and still
    # counted (a new user's store of reused rows said none were cut).
    import pandas as pd

    table = pd.read_csv(path)
    table.assign(label=["x"] * 8, note=range(8)).to_csv(tmp_path / "again.csv", index=False)
    reused = embed_source(tmp_path / "again.csv", f"hf:{tiny_bert_dir}", out=tmp_path / "cache", progress=False)
    assert reused.reused == 8 and reused.embedded == 0 and reused.truncated == 3


def test_places_that_cannot_hold_a_store_are_refused_in_one_line(tmp_path, tiny_bert_dir, monkeypatch):
    texts = write_text_csv(tmp_path / "a.csv", n=6)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    with pytest.raises(UserError, match="notes.txt is a file, not a folder"):
        embed_source(texts, f"hf:{tiny_bert_dir}", out=a_file, progress=False)
    with pytest.raises(UserError, match="cannot write in .*notes.txt"):
        embed_source(texts, f"hf:{tiny_bert_dir}", out=a_file / "below" / "s.h5", progress=False)
    monkeypatch.setenv("TLCACHE_HOME", str(a_file))
    with pytest.raises(UserError, match=r"notes.txt \(\$TLCACHE_HOME\) is a file"):
        embed_source(texts, f"hf:{tiny_bert_dir}", progress=False)
    assert a_file.read_text() == "not a folder"


def test_damaged_weights_and_absurd_image_sizes_are_refused_in_one_line(tmp_path, image_folder, resnet18_weights):
    damaged = (
        ("bad.pth", b"PK\x03\x04 not a zip"),
        ("bad.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{"),
        ("passwd", b"root:x:0:0:root:/root:/bin/bash\n"),  # said "(list index out of range)"
    )
    for name, data in damaged:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError, match=f"cannot read weights from .*{name}: not a torch state_dict") as caught:
            embed_source(
                image_folder,
                "torchvision:resnet18",
                weights=str(tmp_path / name),
                image_size=32,
                out=tmp_path / "cache",
                progress=False,
            )
        assert "index out of range" not in str(caught.value)
    with pytest.raises(UserError, match="--image-size 100000 is out of range"):
        embed_source(image_folder, **_resnet(resnet18_weights, image_size=100000), out=tmp_path / "c", progress=False)


def test_a_long_text_is_tokenised_only_as_far_as_the_model_reads_it(tiny_bert_dir, monkeypatch):
    """A new user's 5 MB text was tokenised whole to keep 256 tokens: 2.9 GB and 23 s. A prefix of whole words that
    holds the limit's tokens gives the same tokens and features."""
    import tlcache.backbones.transformers_text as transformers_text
    from tlcache.backbones import create_backbone

    backbone = create_backbone(f"hf:{tiny_bert_dir}")
    backbone.load("cpu")
    words = np.random.default_rng(0).choice(["good", "bad", "film,", "a", "dull.", "plot", "great!", "fun\n"], 200_000)
    long = " ".join(words)  # about a megabyte
    read = backbone._read([long, "good fun"])
    assert len(read[0]) < 10_000 and read[1] == "good fun"
    whole = backbone.tokenizer([long], truncation=True, max_length=backbone.max_length)["input_ids"]
    assert backbone.tokenize([long])["input_ids"].tolist() == whole
    assert backbone.token_lengths([long], truncate=False)[0] > backbone.max_length  # still counted as cut
    assert backbone._read(["x" * 100_000]) == ["x" * 100_000]  # no space to cut at: read whole
    cut = backbone.embed([long])
    monkeypatch.setattr(transformers_text, "text_prefix", lambda text, count, limit: text)
    np.testing.assert_array_equal(cut, backbone.embed([long]))
    chunked = create_backbone(f"hf:{tiny_bert_dir}", long_text="chunk")
    assert chunked._read([long]) == [long]  # read window by window: every token


def test_long_text_chunk_reads_every_token_in_windows_and_is_in_the_key(tmp_path, tiny_bert_dir):
    import csv

    import torch
    from click.testing import CliRunner

    from tlcache.cli import cli

    words = ["good", "bad", "plot", "actor", "dull", "fun"]
    texts = [" ".join(words[(i + j) % 6] for j in range(150 if i % 2 == 0 else 5)) for i in range(6)]
    path = tmp_path / "long.csv"
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([["text"], *[[t] for t in texts]])
    options = {"out": tmp_path / "cache", "progress": False, "precision": "fp32"}
    cut = embed_source(path, f"hf:{tiny_bert_dir}", **options)
    chunked = embed_source(path, f"hf:{tiny_bert_dir}", long_text="chunk", **options)
    assert chunked.key != cut.key and chunked.truncated == 0
    meta = FeatureStore(chunked.path).meta
    assert meta["chunked_rows"] == 3 and meta["truncated_rows"] == 0 and meta["preprocessing"]["long_text"] == "chunk"
    assert FeatureStore(chunked.path).meta["backbone_spec"]["long_text"] == "chunk"  # predict embeds the same way
    # A store of the other kind is refused by the option that tells them apart (it said "differ in preprocessing").
    from tlcache.runs import check_same_features

    with pytest.raises(UserError, match="long texts chunk against truncate: embed with the same --long-text"):
        check_same_features(FeatureStore(chunked.path).meta, FeatureStore(cut.path).meta, "x")
    short, long = FeatureStore(chunked.path).features(), FeatureStore(cut.path).features()
    np.testing.assert_allclose(short[1::2], long[1::2], atol=1e-5)  # a text that fits is one window: the same
    assert np.abs(short[0::2] - long[0::2]).max() > 1e-3  # a long one is read to its end
    # The long text's features are its windows' pooled features averaged by their tokens.
    bb = create_backbone(f"hf:{tiny_bert_dir}", long_text="chunk")
    bb.load("cpu")
    windows, owners = bb._windows([texts[0]])
    assert len(windows) == 3 and max(map(len, windows)) == bb.max_length and set(owners) == {0}
    with torch.inference_mode():
        pooled = [
            bb._pooled({"input_ids": torch.tensor([w]), "attention_mask": torch.ones(1, len(w))}) for w in windows
        ]
    expected = sum(p[0] * len(w) for p, w in zip(pooled, windows)) / sum(map(len, windows))
    np.testing.assert_allclose(short[0], expected.numpy(), atol=1e-5)
    result = CliRunner().invoke(
        cli,
        [
            "embed",
            str(path),
            "-b",
            f"hf:{tiny_bert_dir}",
            "--long-text",
            "chunk",
            "--precision",
            "fp32",
            "--out",
            str(tmp_path / "cache"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0 and result.stdout.startswith("cache hit")


def test_rows_without_a_label_beside_labelled_ones_are_said_when_embedded_and_fitted(tmp_path, tiny_bert_dir):
    from tlcache.heads import fit_head

    path = tmp_path / "some.csv"  # every fifth label cell empty: 6 of 30
    lines = [
        f"{i},{'a good film' if i % 2 else 'a dull plot'} {i},{'' if i % 5 == 0 else ('pos', 'neg')[i % 2]}"
        for i in range(30)
    ]
    path.write_text("id,text,label\n" + "\n".join(lines) + "\n", encoding="utf-8")
    result = embed_source(path, f"hf:{tiny_bert_dir}", out=tmp_path / "cache", progress=False)
    assert result.unlabelled == 6 and "6 without a label: fit-head leaves them out" in result.summary_line()
    again = embed_source(path, f"hf:{tiny_bert_dir}", out=tmp_path / "cache", progress=False)
    assert again.cached and ", 6 without a label, nothing computed" in again.summary_line()
    with pytest.warns(UserWarning, match="6 of 30 rows have no label and are left out of training and testing"):
        run = fit_head(result.path, "logreg", out=tmp_path / "run")
    assert run.report["n_train"] + run.report["n_test"] == 24
    # A wholly unlabelled source (items to predict) is not remarked on.
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"text": "good"}\n{"text": "bad plot"}\n', encoding="utf-8")
    unlabelled = embed_source(plain, f"hf:{tiny_bert_dir}", out=tmp_path / "cache", progress=False)
    assert unlabelled.unlabelled == 0 and "without a label" not in unlabelled.summary_line()


def test_a_cut_short_store_in_the_cache_is_embedded_again_and_said(tmp_path, tiny_bert_dir):
    source = write_text_csv(tmp_path / "t.csv", n=12)
    first = embed_source(source, f"hf:{tiny_bert_dir}", out=tmp_path / "cache", progress=False)
    features = FeatureStore(first.path).features()
    data = first.path.read_bytes()
    first.path.write_bytes(data[: len(data) // 2])  # a copy cut short, a disk that filled up
    with pytest.warns(UserWarning, match="is damaged or cut short: embedding its items again"):
        again = embed_source(source, f"hf:{tiny_bert_dir}", out=tmp_path / "cache", progress=False)
    assert not again.cached and again.embedded == 12 and again.path == first.path
    assert np.array_equal(FeatureStore(again.path).features(), features)
    # Labels edited in the cached store: not the store of this source, though its name says so (a new user's 50
    # edited labels were served as a cache hit).
    import h5py

    labels = FeatureStore(again.path).labels()
    with h5py.File(again.path, "r+") as handle:
        handle["labels"][:3] = 1 - handle["labels"][:3]
    mended = embed_source(source, f"hf:{tiny_bert_dir}", out=tmp_path / "cache", progress=False)  # (said above)
    assert not mended.cached and np.array_equal(FeatureStore(mended.path).labels(), labels)


def test_the_rate_said_is_of_the_rows_not_the_models_loading(tmp_path, tiny_bert_dir, text_csv):
    """The rate is the rows' own: on a small set the model's loading took most of the call, and the rate said was
    taken over both."""
    from tlcache.embed_result import EmbedResult

    result = embed_source(text_csv, f"hf:{tiny_bert_dir}", out=tmp_path / "cache", progress=False)
    assert 0 < result.load_seconds < result.seconds
    assert FeatureStore(result.path).meta["load_seconds"] == pytest.approx(result.load_seconds, abs=1e-3)
    said = EmbedResult(tmp_path / "s.h5", "k", "minilm", 384, 100, 100, 0, seconds=3.0, cached=False, load_seconds=2.0)
    assert "in 3.0 s (100/s after 2.0 s loading the model)" in said.summary_line()
    said.load_seconds = 0.0  # nothing loaded (the Ray engine's workers load their own): the rate of the whole call
    assert "in 3.0 s (33/s) ->" in said.summary_line()


def test_a_sources_options_may_be_given_as_keywords_and_a_misspelt_one_is_named(tmp_path, tiny_bert_dir):
    """A new user's `embed_source(..., label_column="language")` was told the backbone takes no --label-column, and
    a misspelt source option was a TypeError."""
    path = tmp_path / "code.csv"
    path.write_text("text,language\nint x;,c\nprint(1),python\nx = 1,python\nvoid f();,c\n", encoding="utf-8")
    options = {"out": tmp_path / "cache", "progress": False}
    result = embed_source(path, f"hf:{tiny_bert_dir}", label_column="language", **options)
    assert FeatureStore(result.path).class_names == ["c", "python"]
    with pytest.raises(UserError, match=r"^source_options labelcolumn: not options of a source; they are text_col"):
        embed_source(path, f"hf:{tiny_bert_dir}", source_options={"labelcolumn": "language"}, **options)
