"""The cells of a comparison: one (method, shots, seed) run each, saved the moment it ends.

A cell's file holds its result and the identity of the comparison it belongs to (the data, the backbone, the
settings that change its numbers). A rerun loads every finished cell of the same identity instead of running it
again, so a killed comparison resumes where it stopped, and adding a method or a shot count runs only the new
cells. A file is written under a temporary name and renamed, so a cell that reads as finished is complete.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from tlcache.errors import UserError, differing_settings
from tlcache.runs import write_whole

CELLS_DIR = "cells"


@dataclass(frozen=True)
class CellKey:
    method: str  # a head (logreg, svm, mlp, ...) or a fine-tune (ft, lp-ft)
    kind: str  # "frozen" or "finetune"
    shots: int | str  # labelled items per class, or "all"
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-{self.shots}-seed{self.seed}"


def cell_path(out_dir: Path, key: CellKey) -> Path:
    return out_dir / CELLS_DIR / f"{key.name}.json"


PROBE_FILE = "probe.json"  # beside the cells: the fine-tune's timing probe, measured once per comparison


def kept_probe(out_dir: Path, identity: dict, probe: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    """The timing probe's (fixed seconds, seconds per item pass), from the folder when a run of the same comparison
    measured them (a budgeted rerun spent half a minute on the probe every time), else measured and kept."""
    path = out_dir / CELLS_DIR / PROBE_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        rates = saved["rates"] if isinstance(saved, dict) and saved.get("identity") == identity else None
        if isinstance(rates, list) and len(rates) == 2 and all(isinstance(r, float) and r >= 0 for r in rates):
            return rates[0], rates[1]
    except (OSError, ValueError, KeyError):
        pass  # none yet, or unreadable: measured again and rewritten
    rates = probe()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, (json.dumps({"identity": identity, "rates": [float(r) for r in rates]}) + "\n").encode("utf-8"))
    return rates


def load_cell(
    out_dir: Path,
    key: CellKey,
    identity: dict,
    redo: tuple[str, ...] = (),
    needs: tuple[str, ...] = (),
    n_test: int | None = None,
) -> dict | None:
    """The finished cell's result, or None when it has not run. A cell of another comparison in the same folder is
    refused in one line naming what differs: its numbers belong to other data or settings; one that differs only in
    the identity's ``redo`` entries (settings a rerun may change, such as the frozen heads' candidate features), or
    whose result lacks a field of ``needs`` (saved by an older tlcache), runs again. A result that disagrees with
    itself (an accuracy that is not its per-item results' mean; other than ``n_test`` per-item results) is refused
    too: an edited or damaged cell would otherwise put numbers in the report that no run gave."""
    path = cell_path(out_dir, key)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise UserError(f"{path} is not a readable cell ({error}); delete it to run that cell again") from None
    if not isinstance(saved, dict):
        raise UserError(f"{path} is not a readable cell (not a JSON object); delete it to run that cell again")
    if saved.get("identity") != identity:
        if redo and _without(saved.get("identity"), redo) == _without(identity, redo):
            return None
        raise UserError(
            f"{out_dir} holds a comparison of other data or settings ({path.name}: "
            f"{differing_settings(saved.get('identity'), identity)}); use another --out or delete it"
        )
    result = saved.get("result")
    problem = _inconsistency(result, n_test)
    if problem:
        raise UserError(f"{path} does not agree with itself ({problem}); delete it to run that cell again")
    if any(name not in result for name in needs):
        return None
    return result


def _inconsistency(result, n_test: int | None) -> str | None:
    """What is wrong with a saved cell's result, or None: its per-item results (``correct``: 0 or 1 per test item)
    must be ``n_test`` many, its accuracy their mean, its other scores between 0 and 1."""
    if not isinstance(result, dict) or not isinstance(result.get("correct"), list):
        return "no per-item results"
    correct = result["correct"]
    if not all(value in (0, 1) and not isinstance(value, float) for value in correct):
        return "per-item results other than 0 and 1"
    if n_test is not None and len(correct) != n_test:
        return f"{len(correct)} per-item results for {n_test} test items"
    accuracy = result.get("accuracy")
    if not isinstance(accuracy, (int, float)) or not correct or abs(accuracy - sum(correct) / len(correct)) > 1e-9:
        return f"accuracy {accuracy!r} where its per-item results give {sum(correct) / max(len(correct), 1):.4f}"
    for name in ("macro_f1", "validation_accuracy"):
        value = result.get(name)
        if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
            return f"{name} {value!r} outside 0..1"
    return None


def _without(identity, names: tuple[str, ...]):
    return {k: v for k, v in identity.items() if k not in names} if isinstance(identity, dict) else identity


def save_cell(out_dir: Path, key: CellKey, identity: dict, result: dict) -> None:
    path = cell_path(out_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"cell": asdict(key), "identity": identity, "result": result}
    write_whole(path, (json.dumps(record) + "\n").encode("utf-8"))


def run_cells(
    out_dir: Path,
    keys: Iterable[CellKey],
    identity: dict,
    run_one: Callable[[CellKey], dict],
    report=print,
    admit: Callable[[CellKey], bool] | None = None,
    redo: tuple[str, ...] = (),
    needs: tuple[str, ...] = (),
    n_test: int | None = None,
) -> tuple[list[dict], int]:
    """Every cell's result (with its key's fields), running only those not finished yet (or finished under other
    ``redo`` settings, or without a field of ``needs``: see load_cell), and of those only the ones ``admit`` lets
    through (a budget); and how many ran."""
    results, ran = [], 0
    for key in keys:
        result = load_cell(out_dir, key, identity, redo, needs, n_test)
        if result is None:
            if admit is not None and not admit(key):
                continue
            result = run_one(key)
            save_cell(out_dir, key, identity, result)
            ran += 1
            report(f"  {key.name}: accuracy {result['accuracy']:.4f} ({result['seconds']:.1f} s)")
        results.append({**asdict(key), **result})
    return results, ran
