import numpy as np
from filelock import FileLock

from conftest import make_store
from tlcache.cache import collect_garbage, list_stores
from tlcache.store import lock_path, partial_path


def test_gc_leaves_a_store_that_is_being_written(tmp_path):
    final = tmp_path / "hf-x-00000000-22222222222222222222.h5"
    make_store(final, np.zeros((5, 3)), [0] * 5, ["x"], finish=False)
    with FileLock(str(lock_path(final))):  # as an embed holds it while writing
        assert [(e.state, e.rows_done, e.n_rows) for e in list_stores(tmp_path)] == [("running", 4, 5)]
        assert collect_garbage(tmp_path) == []
    assert [e.state for e in list_stores(tmp_path)] == ["partial"]
    assert partial_path(final).exists()
    assert [e.state for e in collect_garbage(tmp_path)] == ["partial"]
    assert not partial_path(final).exists()


def test_unreadable_files_are_listed_and_collected(tmp_path):
    (tmp_path / "junk-00000000-33333333333333333333.h5").write_bytes(b"not hdf5")
    (tmp_path / "notes.txt").write_text("ignored")
    [entry] = list_stores(tmp_path)
    assert entry.state == "unreadable" and entry.key is None
    assert len(collect_garbage(tmp_path, dry_run=True)) == 1 and entry.path.exists()
    assert len(collect_garbage(tmp_path)) == 1 and not entry.path.exists()


def test_gc_removes_the_shards_of_a_ray_run_that_is_not_running(tmp_path):
    """Shard folders (tlcache.ray_engine) of a stopped or finished run go, their stores listed; those of a run in
    progress (its store being written) stay."""
    from tlcache.ray_engine import SHARDS_DIR

    target = tmp_path / "hf-x-00000000-44444444444444444444.h5"
    make_store(target, np.zeros((5, 3)), [0] * 5, ["x"], finish=False, cache_key="4" * 32)
    live, stale = tmp_path / SHARDS_DIR / ("4" * 32), tmp_path / SHARDS_DIR / ("5" * 32)
    for shards in (live, stale):
        make_store(shards / "hf-x-00000000-66666666666666666666.h5", np.ones((2, 3)), [0, 0], ["x"])
    with FileLock(str(lock_path(target))):  # the driver of a running Ray embed holds its store's lock
        assert [e.path.parent for e in collect_garbage(tmp_path, dry_run=True)] == [stale]
        assert [e.path.parent for e in collect_garbage(tmp_path)] == [stale]
        assert live.is_dir() and not stale.exists()
    removed = collect_garbage(tmp_path)  # the run stopped: its partial store and its shards go
    assert {e.path.parent for e in removed} == {live, tmp_path} and not (tmp_path / SHARDS_DIR).exists()


def test_a_listing_tells_stores_of_one_backbone_and_source_apart(tmp_path):
    """`tlcache ls` names what differs between stores of the same backbone and source: image size, precision, a
    layer or pooling not the default, views, and images decoded otherwise than this tlcache does (never served)."""
    from tlcache.images import DECODING

    def store(name: str, **meta):
        return make_store(tmp_path / f"bb-{name}-00000000-{name * 20}.h5", np.zeros((4, 3)), [0] * 4, ["x"], **meta)

    image = {"backbone_spec": {"name": "bb", "image_size": 96}, "preprocessing": {"convert": DECODING}}
    store("1", precision="bf16", **image)
    store("2", precision="fp32", layer="blocks.5", pooling="max", **image)
    store("3", precision="bf16", backbone_spec={"name": "bb", "image_size": 96}, preprocessing={"convert": "RGB"})
    store("4", precision="fp32", modality="text", layer="last", preprocessing={"max_length": 8})
    # A new user's stores of one file, long texts cut and read in chunks, or through another label column, read alike.
    text = {"precision": "bf16", "modality": "text", "layer": "last"}
    store("5", **text, preprocessing={"max_length": 8, "long_text": "chunk"})
    store("6", **text, preprocessing={}, source_options={"text_column": "text", "label_column": "section"})
    described = {entry.path.name[3:4]: entry.features for entry in list_stores(tmp_path)}
    assert described == {
        "1": "96 px, bf16 compute",
        "2": "96 px, fp32 compute, layer blocks.5, max pooling",
        "3": "96 px, bf16 compute, decoded by another tlcache",
        "4": "fp32 compute",
        "5": "bf16 compute, long texts in chunks",
        "6": "bf16 compute, columns: label 'section'",
    }
