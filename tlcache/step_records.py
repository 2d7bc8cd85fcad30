"""The record a pipeline step leaves beside its output, written and read here only, so a rerun can skip the step.

A record (``<out>/.tlcache-step.json`` for a folder, ``.<name>.tlcache-step.json`` beside a file) holds the step's
command line, the identity of each input (a store's cache key, a file's or a folder's content digest) and a digest
of every file of its output. It says "running" while the step runs and "done" once it has succeeded, written whole
under a temporary name and renamed. A step is done when its record says "done" for the same command line and
inputs, and its output files are the ones it wrote: a changed option, a changed input, an interrupted run or an
output file changed since all run the step again. Files other commands add to a run folder are not the step's
output: the models `tlcache export` writes there (``*.onnx``, and its work folders), its lock file. `tlcache
report` writes the same bytes again, so it changes nothing either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tlcache.runs import write_whole

RECORD_NAME = ".tlcache-step.json"
FOLDER_OUTPUTS = ("fit-head", "finetune", "compare")  # steps whose `out` is a folder; predict's is a file
FORMAT = 2  # 1: output files by size and modification time (`tlcache report` made a step run again)


@dataclass
class StepRecord:
    """What a step (``kind``, writing to ``out``) is about to run: its command line and the identities of its
    inputs (see :func:`identity`)."""

    kind: str
    out: Path
    argv: list[str]
    inputs: dict[str, str]

    @property
    def path(self) -> Path:
        if self.kind in FOLDER_OUTPUTS:
            return self.out / RECORD_NAME
        return self.out.with_name(f".{self.out.name}{RECORD_NAME}")

    def saved(self) -> dict[str, Any] | None:
        """The record on disk, or None when there is none (or it cannot be read: the step runs again)."""
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return saved if isinstance(saved, dict) and saved.get("format") == FORMAT else None

    def done(self) -> bool:
        """Whether the step ran to the end with this command line and these inputs, and its output is intact."""
        saved = self.saved()
        return (
            saved is not None
            and saved.get("state") == "done"
            and saved.get("argv") == self.argv
            and saved.get("inputs") == self.inputs
            and bool(saved.get("files"))
            and saved["files"] == self._snapshot()
        )

    def matches_apart_from(self, unresolved: set[int]) -> bool:
        """For a dry run: whether a finished record has this command line at every position but ``unresolved``
        (references to outputs not made yet), the same identity for each input known already (``inputs``: a
        new user's changed new.csv was not seen behind a reference), and its output intact (a run would redo a step
        whose files changed)."""
        saved = self.saved()
        if saved is None or saved.get("state") != "done" or len(saved.get("argv", ())) != len(self.argv):
            return False
        same = all(i in unresolved or a == b for i, (a, b) in enumerate(zip(saved["argv"], self.argv)))
        inputs = saved.get("inputs") or {}
        same = same and all(inputs.get(key) == value for key, value in self.inputs.items())
        return same and bool(saved.get("files")) and saved["files"] == self._snapshot()

    def output(self) -> Path | None:
        """The output a later step refers to, as the finished record names it."""
        saved = self.saved() or {}
        return Path(saved["output"]) if saved.get("output") else None

    def owns_output(self) -> bool:
        """Whether a record of this step's own (done or not) lies in its output: the step wrote what is there."""
        return self.path.exists()

    def clear_previous(self) -> list[Path]:
        """Remove the files this step's last run wrote (as its record lists them; a record of an older tlcache lists
        none) and the folders they leave empty but for a lock file: a rerun with other options must not leave them
        beside its own (`--head all`'s leaderboard and head folders beside one head). Files of the user's own, and
        what other commands added, stay; but the exports of a head removed go. Returns the files removed."""
        try:
            listed = json.loads(self.path.read_text(encoding="utf-8")).get("wrote") or []
        except (OSError, ValueError, AttributeError):
            return []
        from tlcache.runs import EXPORT_FILES, LOCK_FILE, SIDECAR_FILE

        root = self.out.resolve()
        removed = []
        for name in listed if isinstance(listed, list) else []:
            if not isinstance(name, str):
                continue
            path = (self.out / name).resolve()
            if root not in path.parents or not path.is_file():  # a tampered record names nothing outside the output
                continue
            path.unlink()
            removed.append(path)
            if path.name == SIDECAR_FILE:  # the exports of the head removed are stale
                for export in EXPORT_FILES:
                    (path.parent / export).unlink(missing_ok=True)
        for folder in sorted({p.parent for p in removed}, key=lambda p: len(p.parts), reverse=True):
            rest = list(folder.iterdir()) if folder.is_dir() else []
            if folder != root and all(p.name == LOCK_FILE for p in rest):
                for lock in rest:
                    lock.unlink()
                folder.rmdir()
        return removed

    def start(self) -> None:
        self._before = self._stats()
        self._write({"state": "running"})

    def finish(self, output: Path | None) -> None:
        # What the step wrote: its files new or replaced since it started (not a file of the user's lying there).
        before = getattr(self, "_before", {})
        wrote = sorted(name for name, stat in self._stats().items() if before.get(name) != stat)
        self._write(
            {"state": "done", "output": str(output) if output else None, "files": self._snapshot(), "wrote": wrote}
        )

    def _stats(self) -> dict[str, tuple[int, int, int]]:
        """(inode, size, modification time) of every file of the output: a file written whole anew changes them."""
        names, files = self._output_files()
        stats = [p.stat() for p in files]
        return {name: (st.st_ino, st.st_size, st.st_mtime_ns) for name, st in zip(names, stats)}

    def _output_files(self) -> tuple[list[str], list[Path]]:
        """The files of the output (its record and what other commands add aside), and their names in it."""
        if self.kind in FOLDER_OUTPUTS:
            files = _files(self.out) if self.out.is_dir() else []
            return [p.relative_to(self.out).as_posix() for p in files], files
        files = [self.out] if self.out.is_file() else []
        return [self.out.name] * len(files), files

    def _write(self, fields: dict[str, Any]) -> None:
        record = {"format": FORMAT, "kind": self.kind, "argv": self.argv, "inputs": self.inputs, **fields}
        record["written"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_whole(self.path, (json.dumps(record, indent=1) + "\n").encode("utf-8"))

    def _snapshot(self) -> dict[str, str]:
        """A digest of every file of the output (its record and what other commands add aside), remembered in the
        cache's fingerprint index: an unchanged file costs a stat."""
        from tlcache.fingerprints import file_digests
        from tlcache.paths import fingerprint_index

        names, files = self._output_files()
        return dict(zip(names, file_digests([str(p.resolve()) for p in files], fingerprint_index())))


def identity(path: Path) -> str:
    """What an input is, by content: a finished store's cache key, else a digest of a file's bytes or of a folder's
    files (names and bytes). Digests are remembered in the cache's fingerprint index, so an unchanged folder costs
    one stat per file."""
    from tlcache.fingerprints import file_digests
    from tlcache.hashing import hash_json
    from tlcache.paths import fingerprint_index
    from tlcache.store import STORE_SUFFIX, probe_store

    if path.is_file() and path.suffix == STORE_SUFFIX:
        status = probe_store(path)
        if status.complete and status.key:
            return f"store {status.key}"
    files = [path] if path.is_file() else _files(path)
    digests = file_digests([str(p.resolve()) for p in files], fingerprint_index())
    if path.is_file():
        return f"file {digests[0]}"
    return "folder " + hash_json([[p.relative_to(path).as_posix(), d] for p, d in zip(files, digests)])


def _files(folder: Path) -> list[Path]:
    """The files of a step's output folder, or of a folder given as input: neither records nor half-written files,
    nor what other commands add to a run folder (exports, their work folders, the lock file)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not _added(p.relative_to(folder)))


def _added(relative: Path) -> bool:
    from tlcache.export import WORK_PREFIX
    from tlcache.runs import LOCK_FILE

    name = relative.name
    return (
        name.endswith((RECORD_NAME, ".partial", ".onnx"))
        or name == LOCK_FILE
        or any(part.startswith(WORK_PREFIX) for part in relative.parts)
    )
