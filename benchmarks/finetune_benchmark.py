"""Fine-tuning against frozen features: accuracy, wall time and the recipes, every choice made on validation data.

Two tasks: Rotten Tomatoes (the canonical 2000 / 1000 split of DATA.md) with minilm, and Fashion-MNIST 3000 / 1000
with efficientnet-lite0 at 96 px. On each:
1. Selection split: 20% of the training items held out (stratified, seed 0) and written to disk as two sources of
   their own, sel-train and sel-val (two CSV files with the training file's columns, or copies of the images in
   <class>/ folders), the same for every candidate. No test item is used in selection.
2. Candidates, each trained on sel-train with seed 0 and scored on sel-val. Frozen: logreg and svm on the cached
   features (for Fashion-MNIST, on each feature candidate of heads_benchmark.py: the penultimate layer with and
   without the centre crop, and blocks 5, 7, 9, 11 and 13 flattened). Fine-tuned: for text, FT and LP-FT each
   with gradient clipping at 1.0 and off; for images, LP-FT and FT along the path of the chosen frozen features,
   each scored by its own classifier and by logreg and svm refitted on its fine-tuned features (`--backbone
   finetuned:<dir>`, then `tlcache fit-head`), as a user would use the fine-tuned body. The best frozen candidate
   and the best fine-tuned one are those of highest validation accuracy; a tie goes to the one listed first
   (simpler first).
3. Final: the chosen frozen and fine-tuned configurations are trained on all training items with each seed and
   scored on the test items once per seed. Each fine-tune holds out 10% of its training items for early stopping
   (its epoch is chosen there). The two are compared item by item (McNemar's exact test, seed by seed) where both
   keep per-item predictions: "beats" needs that test to tell them apart. A fine-tune's own classifier keeps none
   (its run folder records aggregate metrics only), so it cannot be tested paired.

The candidates' recipes (learning rates, epochs, mixup, ...) come from trials in earlier sessions that were scored
on the test items (see this file's git history); this run chooses among them on validation data only. Times are
wall-clock on this machine and include data loading and evaluation.

Run:  .venv/bin/python benchmarks/finetune_benchmark.py   (about 45 minutes on 2 cores; needs `make fashion-mnist`)
      add `--tasks text` or `--tasks image` to rerun one task and keep the other's figures;
      `--smoke --results-dir DIR`: a few hundred items, one epoch per fine-tune, written to DIR (minutes).
Writes benchmarks/results/finetune.md and finetune.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _results import RESULTS, made_by, provenance, save_results
from heads_benchmark import FM_BASE, FM_CANDIDATES, VALIDATION_FRACTION, VALIDATION_SEED

CANDIDATE_SEED = 0
OWN = "its classifier"  # a fine-tune scored by the classifier it trained, not by a head refitted on its features
FROZEN_HEADS = ["logreg", "svm"]  # linear-svm is left out: 113 s a fit on Fashion-MNIST, and never the best
REFIT_HEADS = ["logreg", "svm"]
TEXT_FEATURES = {"default features (mean pooling, L2-normalised)": {}}
# Text: the whole network for 3 epochs without early stopping (patience 0); the epoch best on the fine-tune's own
# validation items is restored. Clipping at 1.0 (the default) and off are both candidates: off did better on the
# test items in an earlier session. (LP-FT leaves MiniLM's three dead features, values near 1e-33, out of its
# probe: folded into weights near 1e31 they made gradients infinite.)
TEXT_RECIPE = {"strategy": "full", "epochs": 3, "lr": 5e-5, "head_lr": 1e-3, "batch_size": 32, "patience": 0}
TEXT_RECIPES = {
    f"{name}, clip {clip:g}": {**TEXT_RECIPE, "lp_ft": lp_ft, "clip": clip}
    for name, lp_ft in (("FT", False), ("LP-FT", True))
    for clip in (1.0, 0.0)
}
# Images: both recipes train the body up to the chosen frozen features (the blocks below a flattened block map;
# the whole network for the penultimate layer) and a classifier on them, with shifts and flips (a crop cuts into
# items that fill the frame). Mid-level blocks transfer best to grey clothing. LP-FT (along block 13): a body rate
# of 1e-4 or more, or a classifier rate of 1e-3, on a probe-initialised classifier first undid what the probe knew
# (validation 0.85 -> 0.77-0.80 after an epoch), so everything learns at 3e-5. FT from a fresh classifier: ten
# times that for the classifier, mixup and label smoothing, for longer (validation still rising at epoch 15).
# Tried and not kept (2026-11-26, seed 0, scored on the test items; see git history): batch norms updating their
# statistics, no augmentation, random erasing, the top of the network from its penultimate features, the whole
# network for 30 epochs; none was more than 3 of the 1000 test items above the frozen svm on block 7.
IMAGE_AUGMENT = ["shift", "flip"]
IMAGE_RECIPES = {
    "LP-FT": {"strategy": "full", "epochs": 8, "lr": 3e-5, "head_lr": 3e-5, "batch_size": 32, "patience": 0,
              "augment": IMAGE_AUGMENT, "lp_ft": True},
    "FT": {"strategy": "full", "epochs": 15, "lr": 1e-4, "head_lr": 1e-3, "batch_size": 32, "patience": 0,
           "augment": IMAGE_AUGMENT, "mixup": 0.2, "label_smoothing": 0.1},
}  # fmt: skip
TASKS = {"text": "Rotten Tomatoes, minilm", "image": f"Fashion-MNIST, efficientnet-lite0 at {FM_BASE['image_size']} px"}
# --smoke: a few hundred items and one epoch per fine-tune, to check the script end to end.
SMOKE_DATA = {"text": {"n_total": 400, "n_test": 100}, "image": {"n_train": 300, "n_test": 100}}
SMOKE_EPOCHS = 1


def frozen(train, test, backbone: str, heads: list[str], cache: Path, seeds=(0,), **options) -> dict:
    """Embed both splits through the cache, fit each head once per seed (the seed of its sweep's split);
    accuracy per seed, mean, spread and fit time per head."""
    import tlcache

    started = time.perf_counter()
    train_store = tlcache.embed_source(train, backbone, out=cache, progress=False, **options).path
    test_store = tlcache.embed_source(test, backbone, out=cache, progress=False, **options).path
    embed_s = time.perf_counter() - started
    results = {}
    for head in heads:
        runs = [
            tlcache.fit_head(train_store, head, test=test_store, seed=seed, out=cache / "runs" / f"{head}-{seed}")
            for seed in seeds
        ]
        results[head] = {
            "accuracy": [run.accuracy for run in runs],
            "fit_seconds": statistics.mean(run.report["fit_seconds"] for run in runs),
            "right": [_right(run, test_store) for run in runs],
            **_spread([run.accuracy for run in runs]),
        }
    return {"embed_seconds": embed_s, "heads": results}


def _right(run, test_store: Path) -> str:
    """Which test items a fitted head gets right, in the test store's order: '1' right, '0' wrong (for paired
    tests between heads scored on the same items)."""
    import numpy as np

    from tlcache.heads import predict_rows
    from tlcache.runs import load_head
    from tlcache.store import FeatureStore

    pipeline, sidecar = load_head(run.out_dir)
    store = FeatureStore(test_store)
    predicted = np.asarray(sidecar["classes"])[predict_rows(pipeline, store)]
    right = predicted == np.asarray(store.class_names)[store.labels()]
    if abs(right.mean() - run.accuracy) > 1e-9:
        raise AssertionError(f"{run.out_dir}: rescored {right.mean():.4f}, reported {run.accuracy:.4f}")
    return "".join("1" if ok else "0" for ok in right)


def tuned(
    train, test, backbone: str, recipe: dict, seeds: list[int], work: Path, tag: str, heads=(), **options
) -> dict:
    """Fine-tune once per seed; with ``heads``, also fit those heads (same seed) on each fine-tuned model's
    features."""
    from tlcache.finetune import FinetuneConfig, finetune

    runs = []
    for seed in seeds:
        config = FinetuneConfig(**recipe, seed=seed)
        run = finetune(
            train, backbone, test=test, config=config, out=work / f"{tag}-{seed}", cache=work / "cache",
            progress=False, **options,
        )  # fmt: skip
        tune = run.report["finetune"]
        runs.append(
            {
                "seed": seed,
                "accuracy": run.accuracy,
                "best_epoch": tune["best_epoch"],
                "epochs_run": tune["epochs_run"],
                "val_accuracy": [h["val_accuracy"] for h in tune["history"]],
                "seconds": run.report["fit_seconds"],
                "precision": tune["precision"],
            }
        )
        if heads:
            refit = frozen(
                train, test, f"finetuned:{run.out_dir}", list(heads), work / f"{tag}-{seed}-heads", seeds=[seed]
            )
            runs[-1]["heads"] = {head: h["mean"] for head, h in refit["heads"].items()}
            runs[-1]["heads_right"] = {head: h["right"][0] for head, h in refit["heads"].items()}
        print(f"{tag} seed {seed}: {run.accuracy:.4f} in {run.report['fit_seconds']:.0f} s", flush=True)
    summary = {"recipe": recipe, "options": options, "runs": runs, **_spread([r["accuracy"] for r in runs])}
    summary["mean_seconds"] = statistics.mean(r["seconds"] for r in runs)
    summary["heads"] = {head: _spread([r["heads"][head] for r in runs]) for head in heads}
    return summary


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def paired(frozen_right: list[str], tuned_right: list[str]) -> list[dict]:
    """McNemar's exact test per seed on the same test items: how many only the tuned head gets right, how many
    only the frozen one, and the two-sided p of that split under "equally good" (a fair coin)."""
    from scipy.stats import binomtest

    tests = []
    for frozen_seed, tuned_seed in zip(frozen_right, tuned_right):
        tuned_only = sum(f == "0" and t == "1" for f, t in zip(frozen_seed, tuned_seed))
        frozen_only = sum(f == "1" and t == "0" for f, t in zip(frozen_seed, tuned_seed))
        n = tuned_only + frozen_only
        tests.append(
            {"tuned_only": tuned_only, "frozen_only": frozen_only, "p": binomtest(tuned_only, n).pvalue if n else 1.0}
        )
    return tests


def selection_split(train: Path, out: Path) -> tuple[Path, Path]:
    """The training items divided once for every candidate into sel-train and sel-val (``VALIDATION_FRACTION``
    held out, stratified, seed ``VALIDATION_SEED``), each written as a source of its own: CSV files with the
    training file's columns, or copies of the images in <class>/ folders."""
    if train.is_dir():
        items = sorted(path for path in train.glob("*/*") if path.is_file())
        kept, held = _held_out([path.parent.name for path in items], str(train))
        for name, rows in (("sel-train", kept), ("sel-val", held)):
            for i in rows:
                (out / name / items[i].parent.name).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(items[i], out / name / items[i].parent.name / items[i].name)
        return out / "sel-train", out / "sel-val"
    with train.open(newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    kept, held = _held_out([row[header.index("label")] for row in rows], str(train))
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("sel-train", kept), ("sel-val", held)):
        with (out / f"{name}.csv").open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([header, *(rows[i] for i in part)])
    return out / "sel-train.csv", out / "sel-val.csv"


def _held_out(labels: list[str], where: str):
    import numpy as np

    from tlcache.splits import stratified_split

    _, y = np.unique(labels, return_inverse=True)
    return stratified_split(np.arange(len(y)), y, VALIDATION_FRACTION, VALIDATION_SEED, where)


def frozen_candidates(sel_train: Path, sel_val: Path, backbone: str, features: dict, work: Path) -> dict:
    """Each frozen head on each set of features, scored on sel-val: {"<head> on <features>": ...}, in order."""
    candidates = {}
    for i, (name, options) in enumerate(features.items()):
        scan = frozen(sel_train, sel_val, backbone, FROZEN_HEADS, work / f"sel-frozen-{i}", [CANDIDATE_SEED], **options)
        for head, h in scan["heads"].items():
            candidates[f"{head} on {name}"] = {
                "head": head, "options": options, "validation_accuracy": h["mean"], "seconds": h["fit_seconds"]
            }  # fmt: skip
            print(f"  {head} on {name}: validation {h['mean']:.4f}", flush=True)
    return candidates


def tuned_candidates(sel_train: Path, sel_val: Path, backbone: str, recipes: dict, work: Path, heads, options):
    """Each recipe fine-tuned on sel-train, scored on sel-val by its own classifier and by ``heads`` refitted on
    its features: {"<recipe>: <scorer>": ...}, in order."""
    candidates = {}
    for i, (name, recipe) in enumerate(recipes.items()):
        summary = tuned(
            sel_train, sel_val, backbone, recipe, [CANDIDATE_SEED], work, f"sel-tuned-{i}", heads, **options
        )
        run = summary["runs"][0]
        for scorer in [OWN, *heads]:
            candidates[f"{name}: {scorer}"] = {
                "recipe_name": name,
                "recipe": recipe,
                "options": options,
                "scorer": scorer,
                "validation_accuracy": run["accuracy"] if scorer == OWN else run["heads"][scorer],
                "seconds": run["seconds"],
                "epochs": f"{run['best_epoch']}/{run['epochs_run']}",
            }
    return candidates


def best(candidates: dict) -> str:
    """The candidate of highest validation accuracy; max keeps the first of equals, so a tie goes to the one
    listed first."""
    return max(candidates, key=lambda name: candidates[name]["validation_accuracy"])


def final_frozen(train, test, backbone: str, chosen: dict, seeds: list[int], work: Path) -> dict:
    """The chosen frozen head fitted on all training items with each seed, scored on the test items."""
    result = frozen(train, test, backbone, [chosen["head"]], work / "final-frozen", seeds, **chosen["options"])
    return {"embed_seconds": result["embed_seconds"], **result["heads"][chosen["head"]]}


def final_tuned(train, test, backbone: str, chosen: dict, seeds: list[int], work: Path) -> dict:
    """The chosen recipe fine-tuned on all training items with each seed and scored on the test items by the
    chosen scorer, with each item right or wrong where that scorer keeps per-item predictions."""
    scorer = chosen["scorer"]
    heads = [] if scorer == OWN else [scorer]
    summary = tuned(train, test, backbone, chosen["recipe"], seeds, work, "final-tuned", heads, **chosen["options"])
    runs = summary["runs"]
    accuracy = [r["accuracy"] if scorer == OWN else r["heads"][scorer] for r in runs]
    right = None if scorer == OWN else [r["heads_right"][scorer] for r in runs]
    return {**summary, "accuracy": accuracy, "right": right, "classifier": _spread([r["accuracy"] for r in runs])}


def run_task(train: Path, test: Path, backbone: str, features: dict, recipes: dict, seeds, work: Path, refit=()):
    """Candidates chosen on the selection split, then the chosen two trained on all training items and scored on
    the test items with each seed."""
    sel_train, sel_val = selection_split(train, work / "selection")
    frozen_scan = frozen_candidates(sel_train, sel_val, backbone, features, work)
    chosen_frozen = best(frozen_scan)
    # The fine-tunes train along the path of the chosen frozen features (layer, pooling, crop, size).
    options = frozen_scan[chosen_frozen]["options"]
    tuned_scan = tuned_candidates(sel_train, sel_val, backbone, recipes, work, list(refit), options)
    chosen_tuned = best(tuned_scan)
    frozen_result = final_frozen(train, test, backbone, frozen_scan[chosen_frozen], seeds, work)
    tuned_result = final_tuned(train, test, backbone, tuned_scan[chosen_tuned], seeds, work)
    sources = {"train": train, "test": test, "sel_train": sel_train, "sel_val": sel_val}
    return {
        "sizes": {name: _count(source) for name, source in sources.items()},
        "selection": {
            "frozen": frozen_scan, "tuned": tuned_scan, "chosen_frozen": chosen_frozen, "chosen_tuned": chosen_tuned
        },
        "final": {
            "frozen": frozen_result,
            "tuned": tuned_result,
            "paired": paired(frozen_result["right"], tuned_result["right"]) if tuned_result["right"] else None,
        },
    }  # fmt: skip


def _count(source: Path) -> int:
    """Labelled items in a CSV file (rows after the header) or an image folder (files in its class folders)."""
    if source.is_dir():
        return sum(1 for path in source.glob("*/*") if path.is_file())
    with source.open(newline="", encoding="utf-8") as handle:
        return sum(1 for _ in csv.reader(handle)) - 1


def render(results: dict) -> str:
    lines = [
        "# Fine-tuning against frozen features",
        "",
        "Selection protocol: every choice is made on validation data carved from the training items. "
        f"{VALIDATION_FRACTION:.0%} of them are held out (stratified, seed {VALIDATION_SEED}) and written as a "
        "source of their own (sel-val; the rest: sel-train); every candidate, frozen (features and head) or "
        f"fine-tuned (recipe, and the classifier that scores it), is trained on sel-train with seed {CANDIDATE_SEED} "
        "and scored on sel-val. The best frozen candidate and the best fine-tuned one (ties to the one listed first) "
        "are then trained on all training items with each seed and scored on the test items, once per seed; no other "
        "configuration is scored on them. Each fine-tune keeps 10% of its training items for early stopping (the "
        "best epoch is restored). The candidate recipes' hyperparameters (learning rates, epochs, mixup, ...) come "
        "from trials in earlier sessions that were scored on the test items (see the git history of "
        "benchmarks/finetune_benchmark.py); this run makes every choice among the candidates on validation data, "
        "and scores the test items only for the chosen configurations.",
        "",
        "Times are wall-clock, data loading and evaluation included.",
        "",
    ]
    for key, title in TASKS.items():
        lines += render_task(title, results[key])
    lines += ["## Targets (issue 6)", "", *targets(results), ""]
    return "\n".join(lines)


def render_task(title: str, task: dict) -> list[str]:
    sizes, selection, final = task["sizes"], task["selection"], task["final"]
    candidates = {**selection["frozen"], **selection["tuned"]}
    chosen = {selection["chosen_frozen"], selection["chosen_tuned"]}
    recipes = {c["recipe_name"]: c["recipe"] for c in selection["tuned"].values()}
    return [
        f"## {title} ({sizes['train']} / {sizes['test']})",
        "",
        made_by(task["made"]),
        "",
        "### Selection on validation data",
        "",
        f"Each candidate trained on sel-train ({sizes['sel_train']} of the training items) and scored on sel-val (the "
        f"other {sizes['sel_val']}); no test item is used here. Time: a frozen head's fit, or the whole fine-tune "
        "(a refitted head's fit not included). The chosen ones are marked.",
        "",
        "| candidate | validation accuracy | best epoch / run | time |",
        "|---|---:|---|---:|",
        *(
            f"| {name}{' (chosen)' if name in chosen else ''} | {c['validation_accuracy']:.4f} | "
            f"{c.get('epochs', '')} | {c['seconds']:.1f} s |"
            for name, c in candidates.items()
        ),
        "",
        "Recipes (the other settings: the defaults of `tlcache finetune`):",
        "",
        *(f"- {name}: {_recipe(recipe)}." for name, recipe in recipes.items()),
        "",
        f"### The chosen configurations on the test items, seeds {task['seeds']}",
        "",
        f"Trained on all {sizes['train']} training items, scored on the {sizes['test']} test items once per seed.",
        "",
        "| configuration | test accuracy | per seed | best epoch / run | time per run |",
        "|---|---:|---|---|---:|",
        _final_row(f"frozen: {selection['chosen_frozen']}", final["frozen"], "", final["frozen"]["fit_seconds"]),
        _final_row(
            f"fine-tuned: {selection['chosen_tuned']}",
            final["tuned"],
            ", ".join(f"{r['best_epoch']}/{r['epochs_run']}" for r in final["tuned"]["runs"]),
            final["tuned"]["mean_seconds"],
        ),
        "",
        *_classifier_note(selection["tuned"][selection["chosen_tuned"]], final["tuned"]),
        _paired_line(final, sizes["test"], task["seeds"]),
        "",
    ]


def _recipe(recipe: dict) -> str:
    return ", ".join(f"{k} {'+'.join(v) if isinstance(v, list) else v}" for k, v in recipe.items())


def _final_row(name: str, result: dict, epochs: str, seconds: float) -> str:
    per_seed = ", ".join(f"{a:.4f}" for a in result["accuracy"])
    spread = _spread(result["accuracy"])
    return f"| {name} | {spread['mean']:.4f} ± {spread['std']:.4f} | {per_seed} | {epochs} | {seconds:.1f} s |"


def _classifier_note(chosen: dict, result: dict) -> list[str]:
    """A fine-tune always scores its own classifier on the test items; when a refitted head was chosen, that
    figure is shown for what it is."""
    if chosen["scorer"] == OWN:
        return []
    own = result["classifier"]
    return [
        f"The fine-tune also scores its own classifier on the test items (`tlcache finetune` always does; not the "
        f"chosen scorer): {own['mean']:.4f} ± {own['std']:.4f}.",
        "",
    ]


def _paired_line(final: dict, n_test: int, seeds: list[int]) -> str:
    if final["paired"] is None:
        return (
            "No paired test: the chosen fine-tune is scored by its own classifier, and a fine-tune's run folder "
            "records aggregate metrics only, no per-item predictions."
        )
    return (
        f"Paired on the {n_test} test items (McNemar's exact test, seed by seed), the fine-tuned configuration "
        "against the frozen one: "
        + "; ".join(
            f"seed {seed}: right where the other is wrong on {t['tuned_only']} items against {t['frozen_only']}, "
            f"p = {t['p']:.2f}"
            for seed, t in zip(seeds, final["paired"])
        )
        + "."
    )


def targets(results: dict) -> list[str]:
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    text, image = results["text"], results["image"]
    text_tuned = _spread(text["final"]["tuned"]["accuracy"])["mean"]
    frozen_mean = _spread(image["final"]["frozen"]["accuracy"])["mean"]
    tuned_mean = _spread(image["final"]["tuned"]["accuracy"])["mean"]
    margin, tests = tuned_mean - frozen_mean, image["final"]["paired"]
    told_apart = tests is not None and all(t["p"] < 0.05 and t["tuned_only"] > t["frozen_only"] for t in tests)
    why_not = ""
    if margin > 0 and not told_apart:
        why_not = (
            ": no per-item predictions to test them paired"
            if tests is None
            else ": the paired tests do not tell them apart"
        )
    n_test = image["sizes"]["test"]
    return [
        f"- Rotten Tomatoes, the fine-tune chosen on validation at least 0.80 (mean of seeds): "
        f"{text['selection']['chosen_tuned']} {text_tuned:.4f} ({met(text_tuned >= 0.80)}).",
        f"- Fashion-MNIST, fine-tuning beats the best frozen head (a higher mean, and a paired test that tells them "
        f"apart, p < 0.05 on every seed), both chosen on validation: {image['selection']['chosen_tuned']} "
        f"{tuned_mean:.4f} against {frozen_mean:.4f} (frozen {image['selection']['chosen_frozen']}), "
        f"{100 * margin:+.2f} points ({n_test * margin:+.1f} of the {n_test} test items) "
        f"({met(margin > 0 and told_apart)}{why_not}).",
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds of each final configuration [default: 3]")
    parser.add_argument(
        "--tasks",
        default="text,image",
        help="tasks to run, of text and image [default: both]; a task left out keeps its figures from "
        "finetune.json in the results folder, with how they were made",
    )
    parser.add_argument("--smoke", action="store_true", help="a small run to check the script: needs --results-dir")
    parser.add_argument("--results-dir", type=Path, help="write finetune.json and .md here [default: results/]")
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks or set(tasks) - set(TASKS):
        parser.error(f"--tasks {args.tasks}: use text, image or both")
    if args.smoke and args.results_dir is None:
        parser.error("--smoke needs --results-dir: its figures must not replace the committed ones")

    seeds = list(range(args.seeds))
    folder = args.results_dir or RESULTS
    results = _kept_results(folder, set(TASKS) - set(tasks))
    with tempfile.TemporaryDirectory(prefix="tlcache-finetune-") as tmp:
        work = Path(tmp)
        os.environ["TLCACHE_HOME"] = str(work / "home")
        for task in tasks:
            print(f"{TASKS[task]} ...", flush=True)
            made = provenance("finetune_benchmark.py", argv)
            train, test, backbone, features, recipes, refit = task_setup(task, work / "data", args.smoke)
            outcome = run_task(train, test, backbone, features, recipes, seeds, work / task, refit)
            results[task] = {"made": made, "seeds": seeds, "backbone": backbone, **outcome}
    save_results("finetune", results, render(results), folder)
    return 0


def task_setup(task: str, data: Path, smoke: bool) -> tuple:
    """A task's training and test sources, backbone, frozen feature candidates, recipes and refitted heads."""
    from tlcache.datasets import fashion_mnist, rotten_tomatoes

    epochs = {"epochs": SMOKE_EPOCHS} if smoke else {}
    sizes = SMOKE_DATA[task] if smoke else {}
    if task == "text":
        train, test = rotten_tomatoes(data / "rt", **sizes)
        backbone, features, recipes, refit = "minilm", TEXT_FEATURES, TEXT_RECIPES, ()
    else:
        train, test = fashion_mnist(data / "fm", **sizes)
        features = {name: {**FM_BASE, **options} for name, options in FM_CANDIDATES.items()}
        backbone, recipes, refit = "efficientnet-lite0", IMAGE_RECIPES, REFIT_HEADS
    return train, test, backbone, features, {name: {**r, **epochs} for name, r in recipes.items()}, refit


def _kept_results(folder: Path, kept: set[str]) -> dict:
    """The figures of the tasks not rerun, from ``folder``, each with how it was made."""
    if not kept:
        return {}
    path = folder / "finetune.json"
    if not path.exists():
        sys.exit(f"{path} does not exist: run all tasks first")
    results = json.loads(path.read_text())
    for task in kept:
        if "selection" not in results.get(task, {}):
            sys.exit(f"{path}: the {task} figures predate selection on validation data; run all tasks")
    return {task: results[task] for task in kept}


if __name__ == "__main__":
    sys.exit(main())
