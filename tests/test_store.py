import h5py
import numpy as np
import pytest

from conftest import make_store
from tlcache.errors import UserError
from tlcache.store import (
    FeatureStore,
    StoreWriter,
    cache_key,
    config_key,
    partial_path,
    probe_store,
    resolve_store_path,
    store_filename,
)

# What every store records, and its readers need: its key and the backbone that made it.
MINIMAL_META = {"cache_key": "k", "backbone": "test-bb", "backbone_spec": {"name": "test-bb"}}


def test_round_trip(tmp_path):
    rows = np.random.default_rng(0).normal(size=(10, 5)).astype(np.float32)
    path = make_store(tmp_path / "s.h5", rows, [0, 1, -1, 0, 1, 0, 1, 0, 1, 0], ["a", "b"])
    store = FeatureStore(path)
    np.testing.assert_array_equal(store.features(), rows)
    np.testing.assert_array_equal(store.features(np.array([1, 4, 7])), rows[[1, 4, 7]])
    assert store.ids() == [f"id{i}" for i in range(10)]
    assert store.fingerprints()[3] == "s-fp3"  # make_store: the store name, then the row
    assert store.labels().tolist() == [0, 1, -1, 0, 1, 0, 1, 0, 1, 0]
    assert store.class_names == ["a", "b"]
    assert store.n_rows == 10 and store.dim == 5 and store.views() is None
    assert store.meta["preprocessing"] == {"size": 8} and store.meta["device"] == "cpu"
    summary = store.summary()
    assert summary["classes"] == {"a": 5, "b": 4} and summary["unlabelled"] == 1
    batches = list(store.iter_batches(batch_size=4))
    assert [b[0] for b in batches] == [slice(0, 4), slice(4, 8), slice(8, 10)]
    np.testing.assert_array_equal(np.vstack([b[1] for b in batches]), rows)


def test_rows_can_be_written_in_any_order_with_views(tmp_path):
    rng = np.random.default_rng(1)
    features, views = rng.normal(size=(6, 4)), rng.normal(size=(6, 2, 4))
    writer = StoreWriter.create(
        tmp_path / "v.h5", MINIMAL_META, list("abcdef"), [0] * 6, ["x"], list("123456"), dim=4, views=2
    )
    for rows in (np.array([1, 3, 5]), np.array([0]), np.array([2, 4])):
        assert not writer.done[rows].any()
        writer.write(rows, features[rows], views[rows])
    assert writer.rows_done == 6 and len(writer.pending()) == 0
    writer.finish({})
    store = FeatureStore(tmp_path / "v.h5")
    np.testing.assert_allclose(store.features(), features, rtol=1e-6)
    np.testing.assert_allclose(store.views(), views, rtol=1e-6)
    assert store.n_views == 2


def test_finish_refuses_missing_rows(tmp_path):
    writer = StoreWriter.create(tmp_path / "m.h5", MINIMAL_META, ["a", "b"], [0, 0], ["x"], ["1", "2"], dim=2)
    writer.write(np.array([0]), np.zeros((1, 2)))
    with pytest.raises(RuntimeError, match="1 rows neither written nor skipped"):
        writer.finish({})


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compressed_store_reads_the_same(tmp_path, compression):
    rows = np.round(np.random.default_rng(0).normal(size=(3000, 16)), 1).astype(np.float32)
    writer = StoreWriter.create(
        tmp_path / "c.h5", MINIMAL_META, [str(i) for i in range(3000)], [0] * 3000, ["x"], ["f"] * 3000, dim=16
    )
    writer.write(np.arange(3000), rows)
    writer.finish({}, compression=compression)
    store = FeatureStore(tmp_path / "c.h5")
    np.testing.assert_array_equal(store.features(), rows)
    assert store.meta["compression"] == compression and not partial_path(tmp_path / "c.h5").exists()
    with h5py.File(tmp_path / "c.h5") as handle:
        assert handle["features"].compression == compression
        assert handle["features"].chunks[1] == 16  # whole rows per chunk: row-batch reads stay fast
        assert handle["features"].id.get_storage_size() < rows.nbytes


def test_float16_store_is_half_the_size_and_reads_as_float32(tmp_path):
    rows = np.random.default_rng(0).normal(size=(2000, 64)).astype(np.float32)
    full = make_store(tmp_path / "f32.h5", rows, [0] * 2000, ["a"])
    writer = StoreWriter.create(
        tmp_path / "h.h5",
        MINIMAL_META,
        [str(i) for i in range(2000)],
        [0] * 2000,
        ["a"],
        ["f"] * 2000,
        dim=64,
        dtype="float16",
    )
    writer.write(np.arange(2000), rows)
    writer.finish({})
    half = tmp_path / "h.h5"
    with h5py.File(half) as handle:
        assert handle["features"].dtype == np.float16
    features = FeatureStore(half).features()
    assert features.dtype == np.float32
    np.testing.assert_allclose(features, rows, rtol=1e-3, atol=1e-3)
    with h5py.File(full) as a, h5py.File(half) as b:
        assert b["features"].id.get_storage_size() * 2 == a["features"].id.get_storage_size()


def test_interrupted_store_is_never_read_as_complete(tmp_path):
    path = make_store(tmp_path / "cut.h5", np.ones((10, 3)), [0] * 10, ["a"], finish=False)
    assert not path.exists() and partial_path(path).exists()
    status = probe_store(partial_path(path))
    assert status.readable and not status.complete and status.rows_done == 4 and status.n_rows == 10
    for name in (path, partial_path(path)):
        with pytest.raises(UserError, match=r"incomplete \(4 of 10 rows\).*run the same `tlcache embed` again"):
            FeatureStore(name)


def test_truncated_file_is_not_a_store(tmp_path):
    path = make_store(tmp_path / "t.h5", np.ones((10, 3)), [0] * 10, ["a"])
    path.write_bytes(path.read_bytes()[:300])
    assert not probe_store(path).readable
    with pytest.raises(UserError, match="not a tlcache feature store"):
        FeatureStore(path)


def test_foreign_hdf5_and_other_files_are_refused(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as handle:
        handle["x"] = np.zeros(3)
    with pytest.raises(UserError, match="HDF5 file but not a tlcache feature store"):
        FeatureStore(tmp_path / "other.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(UserError, match="not a tlcache feature store"):
        FeatureStore(tmp_path / "text.h5")
    with pytest.raises(UserError, match="does not exist"):
        FeatureStore(tmp_path / "nothing.h5")


def test_keys_change_with_each_ingredient():
    base = {"backbone": "b", "weights_digest": "w", "preprocessing": {"size": 224}, "layer": "l", "pooling": "p"}
    config = config_key(base, "float32")
    assert config == config_key(dict(reversed(list(base.items()))), "float32")  # order does not matter
    configs = [config_key(base, "float16"), config_key(base, "float32", {"n": 2, "augment": {}, "seed": 0})]
    for name, value in [
        ("backbone", "c"),
        ("weights_digest", "v"),
        ("preprocessing", {"size": 96}),
        ("layer", "m"),
        ("pooling", "q"),
    ]:
        configs.append(config_key({**base, name: value}, "float32"))
    assert config not in configs and len(set(configs)) == len(configs)
    key = cache_key("src", config)
    assert key != cache_key("src2", config) and key not in {cache_key("src", c) for c in configs}


def test_store_paths(tmp_path):
    config, key = "c" * 32, "0123456789abcdef" * 2
    assert store_filename("minilm", config, key) == "minilm-cccccccc-0123456789abcdef0123.h5"
    assert store_filename("hf:/some/dir/my-bert/", config, key).startswith("hf-my-bert-cccccccc-")
    assert store_filename("torchvision:resnet50", config, key).startswith("torchvision-resnet50-")
    assert resolve_store_path(tmp_path / "x.h5", "minilm", config, key) == tmp_path / "x.h5"
    assert resolve_store_path(tmp_path, "minilm", config, key) == tmp_path / store_filename("minilm", config, key)
