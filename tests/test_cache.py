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
