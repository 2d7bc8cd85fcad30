"""The offline default run (`make demo`): two real tasks, pretrained features against no-pretraining baselines.

Text: Rotten Tomatoes fresh vs rotten (2000 train / 1000 test, the canonical split) with `minilm`.
Images: MNIST-5k (4000 train / 1000 test PNG files in class folders) with `efficientnet-lite0` at 96 px.
For each: embed train and test (through the cache), fit logreg, svm and mlp heads (ranked in a leaderboard), and
compare with TF-IDF + logistic regression (text) and raw pixels + logistic regression (images). A second run embeds
nothing.

Everything lands in demo-output/ (data, feature stores, runs); `rm -r demo-output` starts afresh.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import tlcache
from tlcache.datasets import mnist_5k, rotten_tomatoes

OUT = Path("demo-output")
HEADS = ("logreg", "svm", "mlp")
SEED = 0


def timed_fit(model, X_train, y_train, X_test, y_test) -> tuple[float, float]:
    started = time.perf_counter()
    model.fit(X_train, y_train)
    seconds = time.perf_counter() - started
    return float((model.predict(X_test) == np.asarray(y_test)).mean()), seconds


def tfidf_baseline(train_csv: Path, test_csv: Path) -> tuple[float, float]:
    import pandas as pd
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    train, test = pd.read_csv(train_csv), pd.read_csv(test_csv)
    model = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000))
    return timed_fit(model, train["text"], train["label"], test["text"], test["label"])


def pixel_baseline(train_dir: Path, test_dir: Path) -> tuple[float, float]:
    from PIL import Image
    from sklearn.linear_model import LogisticRegression

    def load(folder: Path):
        files = sorted(folder.glob("*/*.png"))
        X = np.stack([np.asarray(Image.open(f), dtype=np.float32).ravel() / 255.0 for f in files])
        return X, [f.parent.name for f in files]

    (X_train, y_train), (X_test, y_test) = load(train_dir), load(test_dir)
    return timed_fit(LogisticRegression(max_iter=2000), X_train, y_train, X_test, y_test)


def run_task(task: str, train, test, backbone: str, baseline, **backbone_options) -> list[tuple]:
    cache = OUT / "cache"
    embedded = []
    for part in (train, test):
        result = tlcache.embed_source(part, backbone, out=cache, **backbone_options)
        print(f"  {result.summary_line()}", flush=True)
        embedded.append(result)
    # The heads as `fit-head --head all` fits them: the mlp in a forked process beside the others where that is safe
    # (torch not imported yet: so on a second run, whose stores are cache hits), the same runs either way.
    runs = tlcache.fit_all_heads(embedded[0].path, HEADS, test=embedded[1].path, seed=SEED, out=OUT / "runs" / task)
    by_head = {run.report["head"]: run for run in runs}
    rows = [(task, f"{backbone} features", h, by_head[h].accuracy, by_head[h].report["fit_seconds"]) for h in HEADS]
    accuracy, seconds = baseline(train, test)
    rows.append((task, baseline.__doc__ or baseline.__name__, "logreg", accuracy, seconds))
    cached = all(r.cached for r in embedded)
    embed_seconds = sum(r.seconds for r in embedded)
    print(f"  embedding: {'all from the cache' if cached else 'computed'} ({embed_seconds:.1f} s)", flush=True)
    return rows


def main() -> int:
    started = time.perf_counter()
    print("text task: Rotten Tomatoes fresh/rotten, 2000 train / 1000 test", flush=True)
    train_csv, test_csv = rotten_tomatoes(OUT / "data" / "rotten_tomatoes")
    tfidf_baseline.__doc__ = "TF-IDF (no pretraining)"
    rows = run_task("rotten-tomatoes", train_csv, test_csv, "minilm", tfidf_baseline)

    print("image task: MNIST-5k digits, 4000 train / 1000 test PNG files, 96 px", flush=True)
    train_dir, test_dir = mnist_5k(OUT / "data" / "mnist5k")
    pixel_baseline.__doc__ = "raw pixels (no pretraining)"
    rows += run_task("mnist-5k", train_dir, test_dir, "efficientnet-lite0", pixel_baseline, image_size=96)

    header = ("task", "features", "head", "accuracy", "fit s")
    table = [header] + [(t, f, h, f"{a:.4f}", f"{s:.2f}") for t, f, h, a, s in rows]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    print()
    for n, row in enumerate(table):
        print("  ".join(cell.ljust(w) if c < 3 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print(
        f"\nreports in {OUT / 'runs'}; feature stores in {OUT / 'cache'}; total {time.perf_counter() - started:.0f} s"
    )

    best = {}
    for task, features, _, accuracy, _ in rows:
        kind = "baseline" if "no pretraining" in features else "pretrained"
        best[(task, kind)] = max(best.get((task, kind), 0.0), accuracy)
    losers = [
        task for task in ("rotten-tomatoes", "mnist-5k") if best[(task, "pretrained")] <= best[(task, "baseline")]
    ]
    if losers:
        print(f"pretrained features did not beat the baseline on: {', '.join(losers)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
