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
