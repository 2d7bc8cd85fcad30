"""What `tlcache embed` did: EmbedResult, its one-line summary, and the items it could not read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlcache.errors import UserError
from tlcache.images import describe_unreadable


@dataclass
class EmbedResult:
    path: Path
    key: str
    backbone: str
    dim: int
    rows: int  # the source's items, unreadable ones included
    embedded: int  # rows computed by this call: 0 on a cache hit
    reused: int  # rows copied from other stores of the same config (identical items)
    seconds: float
    cached: bool
    truncated: int = 0  # texts longer than the model reads, cut to its limit (0 for images); on a hit, as recorded
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, why) of items that could not be read
    engine: dict[str, Any] = field(default_factory=dict)  # on Ray: workers, shards, rows per second per worker
    unlabelled: int = 0  # stored rows without a label, where others have one (an empty label cell); 0 otherwise
    load_seconds: float = 0.0  # of ``seconds``: loading the model (and compiling it), before the first row

    @property
    def stored(self) -> int:
        """Rows the store holds: the source's items but the unreadable ones."""
        return self.rows - len(self.skipped)

    def summary_line(self) -> str:
        left_out = f", {len(self.skipped)} unreadable left out" if self.skipped else ""
        unlabelled = f", {self.unlabelled} without a label" if self.unlabelled else ""
        if self.cached:
            cut = f", {_texts(self.truncated)} cut to the model's limit" if self.truncated else ""
            return (
                f"cache hit: {self.stored} rows of {self.backbone} ({self.dim}-d) already "
                f"embedded{left_out}{cut}{unlabelled}, nothing computed -> {self.path}"
            )
        # The rate of the rows themselves: on a small set the model's loading took most of the call (a new user read
        # the rate over both as the model's speed).
        working = self.seconds - self.load_seconds
        per_second = self.embedded / working if self.embedded and working > 0 else 0.0
        rate = f"{per_second:.0f}/s" if per_second >= 10 else f"{per_second:.2g}/s" if per_second else ""
        if rate and self.load_seconds >= 0.05:
            rate += f" after {self.load_seconds:.1f} s loading the model"
        rate = f" ({rate})" if rate else ""
        kept = self.rows - self.embedded - self.reused - len(self.skipped)
        notes = [f"{self.reused} reused from other stores"] if self.reused else []
        notes += [f"{kept} kept from an interrupted run"] if kept else []
        if self.truncated:
            notes.append(f"{_texts(self.truncated)} cut to the model's limit: their ends are not embedded")
        if self.skipped:
            notes.append(f"{len(self.skipped)} unreadable, left out")
        if self.unlabelled:
            notes.append(f"{self.unlabelled} without a label: fit-head leaves them out")
        if self.engine:
            notes.append(self._on_ray())
        extra = f" ({'; '.join(notes)})" if notes else ""
        return (
            f"embedded {self.embedded} of {self.rows} rows with {self.backbone} ({self.dim}-d) in "
            f"{self.seconds:.1f} s{rate}{extra} -> {self.path}"
        )

    def _on_ray(self) -> str:
        e = self.engine
        before = f", {e['shards_done_before']} finished before" if e["shards_done_before"] else ""
        rate = e["rows_per_second_per_worker"]
        rate = f", {rate:.0f} rows/s per worker" if rate else ""
        return f"on Ray: {e['ray_workers']} workers, {e['shards']} shards{before}{rate}"

    def refused_if_skipped(self, skip_option: bool = True) -> EmbedResult:
        """Itself when no item was left out; else a UserError naming them in one line (``--on-error fail``), which
        advises ``--on-error skip`` where the command has it (``skip_option``)."""
        if self.skipped:
            skip = ", or use --on-error skip to go on without them" if skip_option else ""
            raise UserError(
                f"{describe_unreadable(self.skipped)}; the other {self.rows - len(self.skipped)} items are "
                f"embedded in {self.path}, which lists every bad one (`tlcache info`); fix or remove them and run "
                f"again (rows are reused){skip}"
            )
        return self

    def skipped_lines(self) -> list[str]:
        """One line per item left out, with why (the store lists them too: `tlcache info`)."""
        return skipped_lines(self.skipped)


def skipped_lines(skipped: list[tuple[str, str]]) -> list[str]:
    """A line for each (id, why) of items left out, as embed and predict say them."""
    return [f"skipped {item}: it {why}" for item, why in skipped]


def _texts(n: int) -> str:
    return f"{n} text{'' if n == 1 else 's'}"
