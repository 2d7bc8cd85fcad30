import h5py
import numpy as np
import pytest

from tlcache.errors import UserError
from tlcache.store import FeatureStore, StoreWriter, cache_key, probe_store, resolve_store_path, store_filename


def _write(path, rows, dtype="float32", finish=True, labels=None, class_names=("a", "b")):
    n = len(rows)
    writer = StoreWriter.create(
        path,
        {
            "cache_key": "k" * 32,
            "backbone": "test",
            "backbone_key": "test",
            "modality": "text",
            "preprocessing": {"x": 1},
            "backbone_spec": {"name": "test"},
            "source_options": {},
        },
        ids=[f"id{i}" for i in range(n)],
        labels=labels if labels is not None else [i % 2 for i in range(n)],
        class_names=list(class_names),
        fingerprints=[f"fp{i}" for i in range(n)],
        dim=rows.shape[1],
        dtype=dtype,
    )
    for start in range(0, n, 4):
        writer.append(rows[start : start + 4])
    if finish:
        writer.finish({"device": "cpu"})
    writer.close()
    return path


def test_round_trip(tmp_path):
    rows = np.random.default_rng(0).normal(size=(10, 5)).astype(np.float32)
    path = _write(tmp_path / "s.h5", rows, labels=[0, 1, -1, 0, 1, 0, 1, 0, 1, 0])
    store = FeatureStore(path)
    np.testing.assert_array_equal(store.features(), rows)
    assert store.ids() == [f"id{i}" for i in range(10)]
    assert store.fingerprints()[3] == "fp3"
    assert store.labels().tolist() == [0, 1, -1, 0, 1, 0, 1, 0, 1, 0]
    assert store.class_names == ["a", "b"]
    assert store.n_rows == 10 and store.dim == 5
    assert store.meta["preprocessing"] == {"x": 1} and store.meta["device"] == "cpu"
    summary = store.summary()
    assert summary["classes"] == {"a": 5, "b": 4} and summary["unlabelled"] == 1


def test_float16_store_is_half_the_size_and_reads_as_float32(tmp_path):
    rows = np.random.default_rng(0).normal(size=(2000, 64)).astype(np.float32)
    full = _write(tmp_path / "f32.h5", rows)
    half = _write(tmp_path / "f16.h5", rows, dtype="float16")
    with h5py.File(half) as handle:
        assert handle["features"].dtype == np.float16
    features = FeatureStore(half).features()
    assert features.dtype == np.float32
    np.testing.assert_allclose(features, rows, rtol=1e-3, atol=1e-3)
    with h5py.File(full) as a, h5py.File(half) as b:
        assert b["features"].id.get_storage_size() * 2 == a["features"].id.get_storage_size()


def test_interrupted_store_is_never_read_as_complete(tmp_path):
    rows = np.ones((10, 3), dtype=np.float32)
    path = _write(tmp_path / "cut.h5", rows, finish=False)
    status = probe_store(path)
    assert status.readable and not status.complete and status.rows_done == 10
    with pytest.raises(UserError, match=r"incomplete \(10 of 10 rows\).*run the same `tlcache embed` again"):
        FeatureStore(path)


def test_truncated_file_is_not_a_store(tmp_path):
    rows = np.ones((10, 3), dtype=np.float32)
    path = _write(tmp_path / "t.h5", rows)
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


def test_cache_key_changes_with_each_ingredient():
    base = {"backbone": "b", "weights_digest": "w", "preprocessing": {"size": 224}, "layer": "l", "pooling": "p"}
    key = cache_key("src", base, "float32")
    assert key == cache_key("src", dict(reversed(list(base.items()))), "float32")  # order does not matter
    variants = [cache_key("src2", base, "float32"), cache_key("src", base, "float16")]
    for name, value in [
        ("backbone", "c"),
        ("weights_digest", "v"),
        ("preprocessing", {"size": 96}),
        ("layer", "m"),
        ("pooling", "q"),
    ]:
        variants.append(cache_key("src", {**base, name: value}, "float32"))
    assert key not in variants and len(set(variants)) == len(variants)


def test_store_paths(tmp_path):
    key = "0123456789abcdef" * 2
    assert store_filename("hf:/some/dir", key) == "hf-some-dir-0123456789abcdef01234567.h5"
    assert resolve_store_path(tmp_path / "x.h5", "minilm", key) == tmp_path / "x.h5"
    assert resolve_store_path(tmp_path, "minilm", key) == tmp_path / f"minilm-{key[:24]}.h5"
