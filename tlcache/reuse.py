"""Incremental reuse: rows of items that a store of the same config already holds are copied, not computed
(add 10 images to a folder and only those 10 are embedded). Items are matched by content fingerprint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tlcache.backbones import Backbone
from tlcache.errors import UserError
from tlcache.sources import Source
from tlcache.store import FeatureStore, StoreWriter, probe_store, sibling_stores

_COPY_BATCH = 4096


def donor_stores(path: Path, bb: Backbone, config: str) -> list[FeatureStore]:
    """The complete stores beside ``path`` made with the same config: their rows of identical items can be reused."""
    donors = []
    for candidate in sibling_stores(path, bb.name, config):
        status = probe_store(candidate)
        if status.complete and status.config == config:
            try:
                donors.append(FeatureStore(candidate))
            except UserError:  # a damaged store gives nothing; its items are embedded instead
                continue
    return donors


def reuse_rows(writer: StoreWriter, src: Source, donors: list[FeatureStore]) -> int:
    """Copy the rows of items (matched by content fingerprint) that a store of the same config already holds."""
    reused = 0
    for targets, features, views in rows_from_donors(src.fingerprints, donors):
        writer.write(targets, features, views)
        reused += len(targets)
    return reused


def rows_from_donors(
    fingerprints: list[str], donors: list[FeatureStore]
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """(target rows, features, views) for every item whose fingerprint a donor store holds, targets increasing
    within each piece. Each donor is read once, front to back, in row batches: sequential reads, bounded memory."""
    wanted: dict[str, list[int]] = {}
    for row, fingerprint in enumerate(fingerprints):
        wanted.setdefault(fingerprint, []).append(row)
    for donor in donors:
        if not wanted:
            break
        pairs = sorted(
            (donor_row, target) for donor_row, fp in enumerate(donor.fingerprints()) for target in wanted.pop(fp, ())
        )
        if not pairs:
            continue
        donor_rows = np.array([p[0] for p in pairs])
        targets = np.array([p[1] for p in pairs])
        try:
            for rows, features in donor.iter_batches(_COPY_BATCH):
                inside = (donor_rows >= rows.start) & (donor_rows < rows.stop)
                if not inside.any():
                    continue
                local, batch_targets = donor_rows[inside] - rows.start, targets[inside]
                order = np.argsort(batch_targets)
                views = donor.views(rows)
                yield batch_targets[order], features[local][order], None if views is None else views[local][order]
        except UserError:  # a damaged donor (NaN features, say): the rows it did not give are embedded instead
            continue
