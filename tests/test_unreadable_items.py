"""Items that cannot be read: every one found in one run, left out of the store and listed with why
(`--on-error skip`, the default) or named in one line after the others are stored (`--on-error fail`); rows
already done are never lost, and fixing the bad files later embeds only them."""

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import write_image_folder
from tlcache.cache import list_stores
from tlcache.cli import cli
from tlcache.embed import embed_source
from tlcache.errors import UserError
from tlcache.store import FeatureStore, partial_path


def _resnet(weights):
    return dict(backbone="torchvision:resnet18", weights=str(weights), image_size=32, precision="fp32")


def _damage(folder):
    """Three kinds of bad file: a truncated PNG whose header still reads, bytes that are no image, an empty file."""
    victim = folder / "square" / "square-002.png"
    victim.write_bytes(victim.read_bytes()[:-60])
    (folder / "circle" / "noise.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "circle" / "empty.jpg").write_bytes(b"")
    return {
        "square/square-002.png": "could not be decoded",
        "circle/noise.png": "not a readable image",
        "circle/empty.jpg": "not a readable image",
    }


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_items_are_left_out_listed_and_the_others_are_exact(tmp_path, resnet18_weights, workers):
    clean = write_image_folder(tmp_path / "clean", per_class=6)
    damaged = write_image_folder(tmp_path / "damaged", per_class=6)
    bad = _damage(damaged)
    options = {"out": tmp_path / "cache", "progress": False, "batch_size": 4, **_resnet(resnet18_weights)}
    result = embed_source(damaged, num_workers=workers, **options)
    assert result.rows == 14 and result.embedded == 11 and len(result.skipped) == 3
    store = FeatureStore(result.path)
    assert dict((i, why.split(" (")[0].removeprefix("is ")) for i, why in store.skipped()) == bad
    assert store.n_rows == 11 and not set(bad) & set(store.ids())
    assert store.summary()["skipped"][0].keys() == {"id", "reason"}
    assert (
        all(line.startswith("skipped ") for line in result.skipped_lines()) and "3 unreadable" in result.summary_line()
    )
    reference = FeatureStore(embed_source(clean, **options).path)
    expected = dict(zip(reference.ids(), reference.features()))
    for item, row in zip(store.ids(), store.features()):
        np.testing.assert_allclose(row, expected[item], rtol=1e-4, atol=1e-5)  # a bad neighbour changes nothing
    labels = dict(zip(reference.ids(), reference.labels()))
    assert [labels[i] for i in store.ids()] == list(store.labels())
    if workers == 0:  # a head fitted on the store says what its data lost (a new user's report said nothing)
        from tlcache.heads import fit_head

        run = fit_head(result.path, "logreg", test_fraction=0.3, out=tmp_path / "run", progress=False)
        assert run.report["unreadable"] == 3
        assert "| unreadable items left out | 3 (when embedded" in (tmp_path / "run" / "report.md").read_text()


def test_fail_names_every_bad_item_in_one_run_keeps_the_rest_and_a_fix_embeds_only_the_fixed(
    tmp_path, resnet18_weights
):
    folder = write_image_folder(tmp_path / "imgs", per_class=6)
    bad = _damage(folder)
    options = {"out": tmp_path / "cache", "progress": False, **_resnet(resnet18_weights)}
    with pytest.raises(UserError) as caught:
        embed_source(folder, on_error="fail", **options)
    message = str(caught.value)
    assert "3 unreadable items" in message and all(item in message for item in bad) and "\n" not in message
    with pytest.raises(UserError, match="3 unreadable items"):  # the same answer from the cache, nothing computed
        embed_source(folder, on_error="fail", **options)
    assert embed_source(folder, **options).cached  # skip takes the store as it is
    for item in bad:
        (folder / item).unlink()
    (folder / "square" / "square-002.png").write_bytes((folder / "square" / "square-001.png").read_bytes())
    fixed = embed_source(folder, on_error="fail", **options)
    assert fixed.rows == 12 and fixed.embedded == 0 and fixed.reused == 12 and not fixed.skipped


def test_a_folder_of_nothing_but_bad_files_is_one_line(tmp_path, resnet18_weights):
    folder = tmp_path / "imgs"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        (folder / name / "x.png").write_bytes(b"junk")
    with pytest.raises(UserError, match="none of the 2 items could be read: 2 unreadable items"):
        embed_source(folder, out=tmp_path / "cache", progress=False, **_resnet(resnet18_weights))


def test_a_run_killed_while_publishing_is_finished_without_embedding_again(tmp_path, resnet18_weights, monkeypatch):
    folder = write_image_folder(tmp_path / "imgs", per_class=4)
    _damage(folder)
    options = {"out": tmp_path / "cache", "progress": False, **_resnet(resnet18_weights)}
    first = embed_source(folder, **options)
    rows = FeatureStore(first.path).features()

    # What a kill after marking the partial complete, before the rewrite and rename, leaves.
    def killed(partial, final_path, compression="none"):
        raise KeyboardInterrupt

    first.path.unlink()
    monkeypatch.setattr("tlcache.repack.publish", killed)
    with pytest.raises(KeyboardInterrupt):
        embed_source(folder, **options)
    partial = partial_path(first.path)
    assert partial.exists() and not first.path.exists()
    with h5py.File(partial, "r") as handle:
        assert handle.attrs["complete"] and handle.attrs["n_skipped"] == 3
    with pytest.raises(UserError, match="incomplete"):
        FeatureStore(partial)  # never read as a store, complete mark or not
    assert [e.state for e in list_stores(tmp_path / "cache")] == ["partial"]
    monkeypatch.undo()
    again = embed_source(folder, **options)
    assert again.cached and len(again.skipped) == 3 and not partial.exists()
    np.testing.assert_array_equal(FeatureStore(again.path).features(), rows)


def test_cli_lists_each_skipped_item_and_fail_exits_2(tmp_path, resnet18_weights):
    folder = write_image_folder(tmp_path / "imgs", per_class=4)
    bad = _damage(folder)
    args = ["embed", str(folder), "--out", str(tmp_path / "cache"), "--no-progress", "-b", "torchvision:resnet18"]
    args += ["--weights", str(resnet18_weights), "--image-size", "32"]
    skip = CliRunner().invoke(cli, args)
    assert skip.exit_code == 0 and "3 unreadable, left out" in skip.stdout
    listed = [line.split(": ")[0] for line in skip.stderr.splitlines() if line.startswith("skipped")]
    assert sorted(listed) == sorted(f"skipped {item}" for item in bad)
    fail = CliRunner().invoke(cli, [*args, "--on-error", "fail"])
    assert fail.exit_code == 2 and fail.exception is None or isinstance(fail.exception, SystemExit)
    assert fail.stderr.strip().count("\n") == 0 and "3 unreadable items" in fail.stderr
    shown = json.loads(CliRunner().invoke(cli, [*args, "--json"]).stdout)
    assert (shown["rows"], shown["stored"], len(shown["skipped"])) == (10, 7, 3)  # 8 images and 2 bad files
    # predict says each one as embed does (a new user's CSV lacked a row, and the summary only counted it).
    clean = json.loads(
        CliRunner().invoke(cli, [*args[:1], str(write_image_folder(tmp_path / "clean")), *args[2:], "--json"]).stdout
    )
    assert CliRunner().invoke(cli, ["fit-head", clean["path"], "--out", str(tmp_path / "run")]).exit_code == 0
    predicted = CliRunner().invoke(
        cli, ["predict", str(tmp_path / "run"), str(folder), "--out", str(tmp_path / "p.csv")]
    )
    assert predicted.exit_code == 0, predicted.output
    listed = [line.split(": ")[0] for line in predicted.stderr.splitlines() if line.startswith("skipped")]
    assert sorted(listed) == sorted(f"skipped {item}" for item in bad)


def test_compare_names_the_unreadable_items_without_advising_an_option_it_lacks(tmp_path, resnet18_weights):
    from tlcache.compare import compare

    folder = write_image_folder(tmp_path / "imgs", per_class=8)
    _damage(folder)
    with pytest.raises(UserError) as refused:
        compare(
            folder,
            heads=("logreg",),
            finetunes=(),
            shots=("all",),
            repeats=1,
            out=tmp_path / "cmp",
            cache=tmp_path / "cache",
            progress=False,
            **_resnet(resnet18_weights),
        )
    message = str(refused.value)
    assert "3 unreadable items" in message and "fix or remove them and run again" in message
    assert "--on-error" not in message  # compare has no such option: every method needs every item


def test_images_past_pillows_bomb_limit_are_named_in_one_warning_and_embedded(tmp_path, resnet18_weights, monkeypatch):
    from PIL import Image

    folder = write_image_folder(tmp_path / "imgs", per_class=3)  # 40 x 40 = 1600 pixels each
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # past it (a warning), not twice past it (an error)
    options = {"out": tmp_path / "cache", "progress": False, **_resnet(resnet18_weights)}
    with pytest.warns(UserWarning, match=r"^6 images are larger than Pillow's limit of 1000 pixels.*imgs.*and 3 more"):
        result = embed_source(folder, **options)
    assert result.embedded == 6 and not result.skipped
