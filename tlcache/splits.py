"""How labelled items are divided, the same way for heads and fine-tuning: stratified held-out splits, few-shot
draws, and labels of another dataset mapped onto the training classes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tlcache.errors import UserError, first_few, warn_once
from tlcache.hashing import hash_bytes


def stratified_split(
    rows: np.ndarray, y: np.ndarray, fraction: float, seed: int, where: str, flag: str = "--test-fraction"
) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) rows, each sorted: ``fraction`` of ``rows`` held out with ``seed``, stratified by ``y`` (see
    :func:`split_beside_single_items`; refused for test items when most classes have a single item). ``where`` and
    ``flag`` name the data and the option in messages."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"{flag} {fraction} must be between 0 and 1 (exclusive)")
    if len(y) < 4:
        raise UserError(f"{where} has only {len(y)} labelled items; holding out {flag} {fraction:g} needs more")
    counts = np.bincount(y)
    present, single = int(np.count_nonzero(counts)), int(np.count_nonzero(counts == 1))
    # Test items held out where most classes have one item: most could not be both learnt and tested (a label
    # column of ids, say). A validation split of a one-shot draw is not refused: its classes are known.
    if flag == "--test-fraction" and single > present / 2:
        raise UserError(
            f"{where}: {single} of its {present} classes have a single labelled item, which cannot be both trained "
            f"and tested on; check that the label column holds the classes (--label-column), or give a --test set"
        )
    try:
        kept, held = split_beside_single_items(rows, y, fraction, seed)
    except ValueError as exc:
        raise UserError(f"{where}: cannot hold out {flag} {fraction:g} of {len(y)} labelled items ({exc})") from None
    return np.sort(kept), np.sort(held)


def split_beside_single_items(rows: np.ndarray, y: np.ndarray, fraction: float, seed: int | None):
    """scikit-learn's ``train_test_split`` of ``rows``, ``fraction`` held out, stratified by the class codes ``y``;
    the rows of a class with a single item, which cannot be on both sides, are kept on the training side and the
    others stratified, rather than no class stratified (a new user's class of one image made a plain random split
    of seven classes of ten: five test items of one, none of another, in a report that said "stratified"). A plain
    random split where every class has one item (a one-shot draw)."""
    from sklearn.model_selection import train_test_split

    single = np.bincount(y)[y] == 1
    if single.all():
        return train_test_split(rows, test_size=fraction, random_state=seed)
    kept, held = train_test_split(rows[~single], test_size=fraction, random_state=seed, stratify=y[~single])
    return np.concatenate([kept, rows[single]]), held


def sample_shots(
    rows: np.ndarray,
    labels: np.ndarray,
    shots: int,
    seed: int,
    where: str,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """``shots`` rows of every class, drawn with ``seed``; the same seed always draws the same rows. A class with
    fewer rows is refused, by its name in ``class_names`` (which ``labels`` index)."""
    if shots < 1:
        raise UserError(f"--shots {shots} must be 1 or more")
    present, counts = np.unique(labels[rows], return_counts=True)
    if (short := counts < shots).any():
        order = np.argsort(counts[short], kind="stable")  # the smallest class first
        named = [
            f"{class_names[label]!r}" if class_names is not None else f"{label}" for label in present[short][order]
        ]
        few = counts[short][order]
        also = [f"{name} ({count})" for name, count in zip(named[1:4], few[1:4])]
        also += [f"{len(named) - 4} more"] if len(named) > 4 else []
        as_do = f", as do {', '.join(also)}" if also else ""
        raise UserError(
            f"{where}: class {named[0]} has only {few[0]} training items, fewer than --shots {shots}{as_do}; "
            f"use --shots {few[0]} or fewer"
        )
    rng = np.random.default_rng(seed)
    picked = [rng.choice(rows[labels[rows] == label], size=shots, replace=False) for label in present]
    return np.sort(np.concatenate(picked))


def remap_labels(y: np.ndarray, names: Sequence[str], train_names: Sequence[str], where: str) -> np.ndarray:
    """Labels ``y`` (indices into ``names``) as indices into the training classes ``train_names``; a class the
    training data lacks is refused."""
    unknown = sorted({names[i] for i in np.unique(y)} - set(train_names))
    if unknown:
        listed = first_few(unknown, 5)
        note = spelling_note(unknown, train_names)
        raise UserError(f"{where} has classes the training data lacks ({listed}); use matching data{note}")
    index = {name: i for i, name in enumerate(train_names)}
    return np.array([index[names[i]] for i in y], dtype=np.int64)


def spelling_note(unknown: Sequence[str], known: Sequence[str], where: str = "there") -> str:
    """A note naming the ``unknown`` class names that are ``known`` ones but for case, spaces, '-' or '_' (class
    folders "Actions" and "actions"), for a message that refuses or counts them; "" when there are none. ``where``
    says where the known names are ("'Actions' is 'actions' there")."""
    by_spelling = {_spelled(name): name for name in known}
    pairs = [(name, by_spelling[_spelled(name)]) for name in unknown if _spelled(name) in by_spelling]
    if not pairs:
        return ""
    shown = ", ".join(f"{name!r} is {match!r} {where}" for name, match in pairs[:5])
    return f" ({shown}: class names must match exactly, case included; rename one side)"


def warn_of_near_names(class_names: Sequence[str], where: str) -> None:
    """Warn (once) of class names of one source that differ only in case, spaces, '-' or '_' ("Libs", " libs "):
    they are different classes to every head, which is seldom what a labeller meant."""
    first: dict[str, str] = {}
    pairs = []
    for name in class_names:
        if (match := first.setdefault(_spelled(name), name)) != name:
            pairs.append(f"{match!r} and {name!r}")
    if pairs:
        warn_once(
            f"{where}: the classes {'; '.join(pairs[:5])} differ only in case, spaces, '-' or '_', and are kept as "
            "different classes; give each pair one name if it is one class"
        )


def warn_of_conflicting_labels(src, where: str) -> None:
    """Warn (once) of items whose content (text, image bytes) is also another item's under another label: no head
    can tell them apart, and a validation split scores them against each other (a new user's icon theme held 15)."""
    if src.labels is None:
        return
    first: dict[str, int] = {}
    pairs = []
    for n, (fingerprint, label) in enumerate(zip(src.fingerprints, src.labels)):
        if label is None:
            continue
        other = first.setdefault(fingerprint, n)
        if other != n and src.labels[other] != label:
            pairs.append((other, n))
    if pairs:
        a, b = pairs[0]
        warn_once(
            f"{where}: {len(pairs)} item{'s have' if len(pairs) > 1 else ' has'} the content of an item of another "
            f"class (e.g. {_shown(src.ids[b])}, {_shown(src.labels[b])}, is {_shown(src.ids[a])}, "
            f"{_shown(src.labels[a])}); no head can tell them apart: correct their labels or keep one of each"
        )


def _shown(name: str, most: int = 40) -> str:
    """A name quoted for a message, cut to ``most`` characters (a new user's swapped columns made 2000-character
    texts the class names, and this warning 4500 characters long)."""
    return repr(name if len(name) <= most else name[: most - 1] + "…")


def _spelled(name: str) -> str:
    """A class name without case, spaces, '-' or '_': what two spellings of one name share."""
    return "".join(c for c in name.casefold() if c not in " -_")


def shared_with_training(
    train_fingerprints: Sequence[str],
    test_fingerprints: Sequence[str],
    where: str,
    given: bool = True,
    warn: bool = True,
) -> int:
    """How many test items are also training items (the same content: the same text, the same image file's bytes),
    with a warning that says so; a UserError when every one of a ``given`` test set is, for the accuracy would be
    recall of items trained on (the training data passed as the test data). Test items held out of the training
    data (``given`` False) are only warned of: its duplicates are the data's. ``where`` names the test data;
    ``warn`` False counts without the warning."""
    seen = set(train_fingerprints)
    shared = sum(fingerprint in seen for fingerprint in test_fingerprints)
    if given and shared and shared == len(test_fingerprints):
        raise UserError(
            f"{where}: every one of its {shared} test items is also a training item (the same content); "
            "the accuracy would measure recall of what was trained on: test on other items"
        )
    message = (
        f"{where}: {shared} of {len(test_fingerprints)} test items are also training items (the same content), "
        "so the test accuracy overstates how the model does on new items; remove them from the test data"
    )
    if shared and warn:
        warn_once(message)
    return shared


def content_digest(fingerprints: Sequence[str]) -> str:
    """The content of items (their fingerprints) in a form a head's sidecar can keep: 16 hex digits (the first 8
    bytes of tlcache's hash) for each distinct item, sorted and joined; :func:`count_in` counts the items of another
    set in it."""
    return "".join(sorted({_item_key(f) for f in fingerprints}))


def count_in(digest: str, fingerprints: Sequence[str]) -> int:
    """How many of the items whose ``fingerprints`` are given are among those of a :func:`content_digest`."""
    known = {digest[i : i + 16] for i in range(0, len(digest), 16)}
    return sum(_item_key(f) in known for f in fingerprints)


def _item_key(fingerprint: str) -> str:
    return hash_bytes(fingerprint.encode())[:16]
