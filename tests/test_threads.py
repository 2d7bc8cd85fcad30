"""torch's thread count following the cores the process gets: the decisions, and that they change no number."""

import numpy as np
import pytest
import torch

from conftest import write_image_folder, write_text_csv
from tlcache import FeatureStore
from tlcache import threads as threads_module
from tlcache.embed import embed_source
from tlcache.mlp import MLPHead, fit_many
from tlcache.threads import FIRST_RETRY_SECONDS, ThreadCount, adaptive_threads


def test_all_threads_run_while_they_get_their_cores():
    count = ThreadCount(2)
    assert [count.measured(share, now) for now, share in enumerate([1.98, 1.6, 1.9])] == [2, 2, 2]


def test_fewer_cores_than_threads_runs_as_many_threads_as_cores_then_tries_all_again_after_a_pause():
    count = ThreadCount(2)
    assert count.measured(1.24, now=0.0) == 1  # beside one busy process
    assert count.measured(1.0, now=FIRST_RETRY_SECONDS / 2) == 1  # one thread gets its core: no news of the other
    assert count.measured(1.0, now=FIRST_RETRY_SECONDS) == 2  # the pause is over: both tried again
    assert count.measured(1.01, now=FIRST_RETRY_SECONDS + 0.1) == 1  # still busy: back to one
    # Refused twice: the next pause is twice the first.
    assert count.measured(1.0, now=FIRST_RETRY_SECONDS + 0.1 + 1.5 * FIRST_RETRY_SECONDS) == 1
    assert count.measured(1.0, now=FIRST_RETRY_SECONDS + 0.1 + 2 * FIRST_RETRY_SECONDS) == 2
    assert count.measured(1.95, now=10.0) == 2  # the core is free again: both stay, and the pause starts short again
    assert count.retry_after == FIRST_RETRY_SECONDS


def test_a_block_starts_on_the_threads_the_last_block_decided_and_on_all_once_the_pause_is_over(monkeypatch):
    """A sweep's mlp trains in a block per stage and split: each one started on all threads again, and beside a
    busy process a small sweep took twice as long as on one thread."""
    monkeypatch.setattr(threads_module, "_DECISIONS", {})
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with adaptive_threads() as threads:
            assert torch.get_num_threads() == 2
            assert threads.decide.measured(1.1, now=threads_module.time.perf_counter()) == 1  # beside a busy process
        assert torch.get_num_threads() == 2  # as it was, between blocks
        with adaptive_threads() as threads:
            assert torch.get_num_threads() == 1  # the cores the last block got
            threads.decide.retry_at = threads_module.time.perf_counter()  # the pause is over
        with adaptive_threads():
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_many_threads_drop_to_the_cores_they_get_and_never_below_one():
    count = ThreadCount(8)
    assert count.measured(5.1, now=0.0) == 5
    assert count.measured(0.2, now=0.1) == 1
    assert ThreadCount(1).measured(0.3, now=0.0) == 1
    assert ThreadCount(0).most == 1


def _fit(X, y):
    return [model.coefs_ + model.intercepts_ for model in fit_many(MLPHead(hidden=16, max_iter=8), X, y, [1e-4, 1.0])]


def _on_one_two_and_switching_threads(monkeypatch, run) -> tuple[list, list]:
    """``run()`` on one torch thread, on two, and with a new count after every unit of work (the count as it was
    after each); the three results, and the counts decided."""
    before = torch.get_num_threads()
    decided = []

    def alternate(self, share, now):
        decided.append(1 if not decided or decided[-1] == 2 else 2)
        return decided[-1]

    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
        with monkeypatch.context() as patch:
            patch.setattr(threads_module, "CHECK_SECONDS", 0.0)
            patch.setattr(ThreadCount, "measured", alternate)
            switching = run()
        assert torch.get_num_threads() == 2  # as it was before
    finally:
        torch.set_num_threads(before)
    return [one, two, switching], decided


def test_the_mlp_gives_the_same_numbers_on_one_thread_on_two_and_switching_between_them(monkeypatch):
    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    X = (rng.normal(size=(300, 40)) + np.eye(3, 40)[y]).astype(np.float32)
    (one, two, switching), decided = _on_one_two_and_switching_threads(monkeypatch, lambda: _fit(X, y))
    assert len(decided) > 10
    for a, b, c in zip(one, two, switching):
        for x, w, z in zip(a, b, c):
            assert np.array_equal(x, w) and np.array_equal(x, z)


@pytest.mark.parametrize("modality", ["image", "text"])
def test_embedding_gives_the_same_features_on_one_thread_on_two_and_switching_between_them(
    modality, monkeypatch, tmp_path, resnet18_weights, tiny_bert_dir
):
    if modality == "image":
        source = write_image_folder(tmp_path / "shapes", per_class=10, size=48)
        options = {"backbone": "torchvision:resnet18", "weights": str(resnet18_weights), "image_size": 64}
    else:
        source = write_text_csv(tmp_path / "reviews.csv", n=20)
        options = {"backbone": f"hf:{tiny_bert_dir}"}
    runs = iter(range(3))

    def embed():  # each into a folder of its own, nothing reused
        out = tmp_path / f"cache-{next(runs)}"
        result = embed_source(source, out=out, batch_size=2, device="cpu", progress=False, reuse=False, **options)
        return FeatureStore(result.path).features()

    (one, two, switching), decided = _on_one_two_and_switching_threads(monkeypatch, embed)
    assert len(decided) == 10  # one count decided after each batch's forward pass: 20 items, batches of 2
    assert np.array_equal(one, two) and np.array_equal(one, switching)


def test_the_thread_count_is_as_it_was_after_the_block_even_when_it_fails():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), adaptive_threads() as threads:
        threads._torch.set_num_threads(1)
        raise RuntimeError("the training failed")
    assert torch.get_num_threads() == before
    with adaptive_threads(enabled=False) as nothing:
        assert nothing is None


def test_a_process_beside_another_takes_its_cores_once_that_one_is_done(monkeypatch):
    """`--head all`'s mlp, forked beside the other heads on one thread of two, ran on one thread to its end (MNIST-5k
    15 s, against 8.8 s alone) although the other heads were done after 6 s (tlcache.forked sets the event)."""
    import threading

    monkeypatch.setattr(threads_module, "_DECISIONS", {})
    monkeypatch.setattr(threads_module, "_FREED", None)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        freed = threading.Event()
        threads_module.more_threads_when(freed, 2)
        with adaptive_threads() as threads:
            threads.tick()
            assert torch.get_num_threads() == 1  # its share while the other works
            freed.set()
            threads.tick()
            assert torch.get_num_threads() == 2  # at once, not after a measured interval
        with adaptive_threads():
            assert torch.get_num_threads() == 2  # and in every block after
    finally:
        torch.set_num_threads(before)
