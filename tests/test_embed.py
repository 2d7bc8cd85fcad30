import h5py
import numpy as np
import pytest
from conftest import write_image_folder, write_text_csv

from tlcache.backbones import Backbone, create_backbone
from tlcache.embed import embed_source
from tlcache.errors import UserError
from tlcache.store import FeatureStore, StoreWriter


def _resnet(weights, **kw):
    return dict(backbone="torchvision:resnet18", weights=str(weights), image_size=kw.pop("image_size", 32), **kw)


def test_embed_writes_a_complete_store(image_folder, resnet18_weights, tmp_path):
    result = embed_source(image_folder, out=tmp_path / "cache", progress=False, **_resnet(resnet18_weights))
    assert not result.cached and result.rows == result.embedded == 12
    store = FeatureStore(result.path)
    assert store.meta["complete"] and store.n_rows == 12 and store.dim == 512
    assert store.meta["backbone"] == "torchvision:resnet18" and store.meta["modality"] == "image"
    assert store.class_names == ["circle", "square"]
    assert store.key == result.key and result.key[:24] in result.path.name
    # The stored rows are exactly what the backbone gives for those files.
    backbone = create_backbone("torchvision:resnet18", weights=str(resnet18_weights), image_size=32)
    expected = backbone.embed([image_folder / i for i in store.ids()[:3]])
    np.testing.assert_allclose(store.features()[:3], expected, rtol=1e-4, atol=1e-5)


def test_same_embed_twice_is_a_cache_hit_without_loading_the_model(text_csv, tiny_bert_dir, monkeypatch):
    first = embed_source(text_csv, f"hf:{tiny_bert_dir}", progress=False)
    mtime = first.path.stat().st_mtime_ns

    def no_loading(self, device="auto"):
        raise AssertionError("a cache hit must not load the model")

    monkeypatch.setattr(Backbone, "load", no_loading)
    second = embed_source(text_csv, f"hf:{tiny_bert_dir}", progress=False)
    assert second.cached and second.embedded == 0 and second.path == first.path
    assert first.path.stat().st_mtime_ns == mtime


def test_explicit_h5_out_is_replaced_when_the_key_changes(tmp_path, tiny_bert_dir):
    out = tmp_path / "mine.h5"
    first = embed_source(write_text_csv(tmp_path / "a.csv", n=8), f"hf:{tiny_bert_dir}", out=out, progress=False)
    second = embed_source(write_text_csv(tmp_path / "b.csv", n=10), f"hf:{tiny_bert_dir}", out=out, progress=False)
    assert first.path == second.path == out and not second.cached
    assert FeatureStore(out).n_rows == 10 and FeatureStore(out).key == second.key


def test_interrupted_embed_resumes_to_the_same_features(tmp_path, resnet18_weights, monkeypatch):
    folder = write_image_folder(tmp_path / "imgs", per_class=10)
    reference = embed_source(folder, out=tmp_path / "ref", batch_size=4, progress=False, **_resnet(resnet18_weights))

    original_append = StoreWriter.append
    calls = {"n": 0}

    def append_then_die(self, rows):
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the third batch
        calls["n"] += 1
        original_append(self, rows)

    monkeypatch.setattr(StoreWriter, "append", append_then_die)
    with pytest.raises(KeyboardInterrupt):
        embed_source(folder, out=tmp_path / "cut", batch_size=4, progress=False, **_resnet(resnet18_weights))
    [path] = (tmp_path / "cut").glob("*.h5")
    with h5py.File(path) as handle:
        assert handle.attrs["rows_done"] == 8 and not handle.attrs["complete"]
    with pytest.raises(UserError, match="incomplete"):
        FeatureStore(path)

    monkeypatch.setattr(StoreWriter, "append", original_append)
    resumed = embed_source(folder, out=tmp_path / "cut", batch_size=4, progress=False, **_resnet(resnet18_weights))
    assert resumed.embedded == 12 and resumed.rows == 20 and resumed.path == path
    np.testing.assert_allclose(FeatureStore(path).features(), FeatureStore(reference.path).features(), atol=1e-5)


def test_unlabelled_text_and_float16(tmp_path, tiny_bert_dir):
    path = tmp_path / "u.jsonl"
    path.write_text('{"text": "good"}\n{"text": "bad plot"}\n{"text": "fun"}\n')
    result = embed_source(path, f"hf:{tiny_bert_dir}", dtype="float16", progress=False)
    store = FeatureStore(result.path)
    assert store.labels().tolist() == [-1, -1, -1] and store.meta["dtype"] == "float16"
    assert store.features().dtype == np.float32 and store.features().shape == (3, 32)


def test_modality_mismatch_is_refused(text_csv, resnet18_weights):
    with pytest.raises(UserError, match="embeds images but .* holds texts"):
        embed_source(text_csv, **_resnet(resnet18_weights))


def test_unreadable_image_stops_with_its_name(image_folder, resnet18_weights):
    bad = image_folder / "circle" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(UserError, match=r"broken\.png is not a readable image"):
        embed_source(image_folder, progress=False, **_resnet(resnet18_weights))


def test_truncated_image_is_caught_while_decoding(image_folder, resnet18_weights):
    victim = image_folder / "square" / "square-002.png"
    victim.write_bytes(victim.read_bytes()[:-60])  # the header survives, the pixel data does not
    with pytest.raises(UserError, match=r"square-002\.png could not be decoded"):
        embed_source(image_folder, progress=False, num_workers=0, **_resnet(resnet18_weights))


def test_decoding_in_worker_processes_gives_the_same_rows(tmp_path, resnet18_weights):
    folder = write_image_folder(tmp_path / "imgs", per_class=8)
    single = embed_source(
        folder, out=tmp_path / "a", num_workers=0, batch_size=5, progress=False, **_resnet(resnet18_weights)
    )
    workers = embed_source(
        folder, out=tmp_path / "b", num_workers=2, batch_size=5, progress=False, **_resnet(resnet18_weights)
    )
    np.testing.assert_allclose(FeatureStore(single.path).features(), FeatureStore(workers.path).features(), atol=1e-5)
