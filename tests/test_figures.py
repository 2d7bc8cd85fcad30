import warnings

import pytest

from tlcache.figures import plot_sweep


@pytest.mark.parametrize("param, value", [("C", 1000.0), ("C", 0.01), ("n_neighbors", 5)])
def test_a_sweep_of_one_value_is_drawn_without_a_warning(tmp_path, param, value):
    sweep = {"param": param, "best": value, "curve": [[value, 0.8]], "selection": "one value", "score": "accuracy"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "identical low and high xlims" would be one per run
        plot_sweep(sweep, "logreg", tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes().startswith(b"\x89PNG")


def test_a_confusion_matrix_of_many_classes_is_drawn_without_a_text_per_cell(tmp_path, monkeypatch):
    """A label column of ids gave 1500 classes: a text per cell (2.25 million) took the machine's 24 GB. Beyond
    COUNTED_CLASSES the cells carry no counts, beyond LABELLED_CLASSES the axes no names, and report.md gives the
    matrix as a table only up to TABLE_MAX_CLASSES."""
    import numpy as np
    from matplotlib.axes import Axes

    from tlcache.figures import COUNTED_CLASSES, LABELLED_CLASSES, plot_confusion
    from tlcache.report import TABLE_MAX_CLASSES, classification_metrics, render_markdown

    texts = []
    original = Axes.text
    monkeypatch.setattr(Axes, "text", lambda self, *a, **k: texts.append(a) or original(self, *a, **k))
    for k, expected in ((COUNTED_CLASSES, COUNTED_CLASSES**2), (COUNTED_CLASSES + 1, 0), (1500, 0)):
        texts.clear()
        plot_confusion(np.eye(k, dtype=int).tolist(), [f"class {i}" for i in range(k)], tmp_path / f"{k}.png")
        assert len(texts) == expected and (tmp_path / f"{k}.png").stat().st_size > 1000
    assert LABELLED_CLASSES < 1500
    classes = [str(i) for i in range(TABLE_MAX_CLASSES + 1)]
    y = np.arange(len(classes))
    report = {"head": "knn", "backbone": "b", "classes": classes, "metrics": classification_metrics(y, y, classes)}
    report |= {"n_train": 1, "n_test": len(y), "test": "t", "fit_seconds": 0.0, "seed": 0, "store": "s"}
    markdown = render_markdown(report)
    assert f"{len(classes)} classes, too many for a table here" in markdown and "| **0** |" not in markdown


def test_accuracy_against_time_names_methods_in_a_legend_and_points_by_their_count(tmp_path, monkeypatch):
    """Five methods at four counts each: labels of method and count on every point overlapped; now the legend
    names the methods and each point carries its count only."""
    from matplotlib.axes import Axes

    from tlcache.compare.summary import plot_accuracy_time

    methods = [("logreg", "frozen"), ("svm", "frozen"), ("mlp", "frozen"), ("ft", "finetune"), ("lp-ft", "finetune")]
    rows = [
        {"method": m, "kind": kind, "shots": shots, "accuracy": 0.6 + 0.01 * i + 0.03 * j, "seconds": 0.1 * 10**i}
        for i, (m, kind) in enumerate(methods)
        for j, shots in enumerate([4, 16, 64, "all"])
    ]
    labels, legends = [], []
    original_annotate, original_legend = Axes.annotate, Axes.legend
    monkeypatch.setattr(
        Axes, "annotate", lambda self, text, *a, **k: labels.append(text) or original_annotate(self, text, *a, **k)
    )
    monkeypatch.setattr(
        Axes, "legend", lambda self, *a, **k: legends.append(original_legend(self, *a, **k)) or legends[-1]
    )
    plot_accuracy_time({"rows": rows, "all_per_class": 900}, tmp_path / "at.png")
    assert sorted(labels) == sorted(["4", "16", "64", "all"] * 5)
    assert [t.get_text() for t in legends[0].get_texts()] == [f"{m} ({kind})" for m, kind in methods]
    assert (tmp_path / "at.png").stat().st_size > 5000
