import os
import time

import pytest

import tlcache.fingerprints as fingerprints
from conftest import write_image_folder
from tlcache.hashing import hash_file
from tlcache.sources import load_source


def _age(folder, monkeypatch, seconds=60):
    """Make files look as if they had sat on disk a while: mtimes in the past, and (since setting them moves
    ctime to now) no racy window."""
    past = time.time() - seconds
    for path in folder.rglob("*.png"):
        os.utime(path, (past, past))
    time.sleep(0.01)
    monkeypatch.setattr(fingerprints, "_RACY_SECONDS", 0.0)


@pytest.fixture
def counted_hashing(monkeypatch):
    calls = []

    def counting(path):
        calls.append(path)
        return hash_file(path)

    monkeypatch.setattr(fingerprints, "hash_file", counting)
    return calls


def test_unchanged_files_are_not_read_again(tmp_path, counted_hashing, monkeypatch):
    folder = write_image_folder(tmp_path / "imgs", per_class=5)
    _age(folder, monkeypatch)
    index = tmp_path / "fp.sqlite"
    first = load_source(folder, fingerprint_index=index)
    assert len(counted_hashing) == 10
    second = load_source(folder, fingerprint_index=index)
    assert len(counted_hashing) == 10, "a remembered digest must not re-read the file"
    assert second.fingerprints == first.fingerprints
    assert first.fingerprints == load_source(folder, fingerprint_index=None).fingerprints


def test_an_edit_that_keeps_size_and_mtime_is_still_seen(tmp_path, counted_hashing, monkeypatch):
    folder = write_image_folder(tmp_path / "imgs", per_class=3)
    _age(folder, monkeypatch)
    index = tmp_path / "fp.sqlite"
    before = load_source(folder, fingerprint_index=index)
    victim = folder / "circle" / "circle-001.png"
    stat = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-20] ^= 0xFF  # same size, other bytes
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime: only ctime gives it away
    assert victim.stat().st_ctime_ns != stat.st_ctime_ns
    after = load_source(folder, fingerprint_index=index)
    changed = [i for i, (a, b) in enumerate(zip(before.fingerprints, after.fingerprints)) if a != b]
    assert [after.ids[i] for i in changed] == ["circle/circle-001.png"]


def test_files_written_just_now_are_not_remembered(tmp_path, counted_hashing):
    folder = write_image_folder(tmp_path / "imgs", per_class=2)  # fresh files: their mtime is "now"
    index = tmp_path / "fp.sqlite"
    load_source(folder, fingerprint_index=index)
    load_source(folder, fingerprint_index=index)
    assert len(counted_hashing) == 8


def test_a_damaged_index_only_costs_speed(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", per_class=2)
    index = tmp_path / "fp.sqlite"
    index.write_bytes(b"this is not sqlite")
    assert load_source(folder, fingerprint_index=index).fingerprints == load_source(folder, None).fingerprints
