"""Readers for the data a user points tlcache at.

Each reader returns a :class:`Source`: ids, items (image paths or texts), optional labels, and a content
fingerprint per item. The fingerprints, not the paths, feed the cache key: moving or renaming the folder
keeps the key, editing one pixel of one image changes it.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tlcache.errors import UserError, first_few, warn_once
from tlcache.fingerprints import file_digests
from tlcache.hashing import hash_bytes, new_hasher
from tlcache.paths import fingerprint_index as fingerprint_index_path
from tlcache.paths import printable

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
TABLE_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".ndjson")
DEFAULT_TEXT_COLUMN = "text"
DEFAULT_LABEL_COLUMN = "label"
DEFAULT_ID_COLUMN = "id"
# Label cells that mean "no label" (pandas reads them as missing too); such rows are unlabelled, not a class.
MISSING_LABELS = frozenset({"nan", "na", "n/a", "#n/a", "null"})
MAX_FIELD_BYTES = 1 << 30  # one CSV cell: a text of up to 1 GiB


@dataclass
class Source:
    """A dataset to embed: one entry per item, in a stable order."""

    path: Path
    kind: str  # "image-folder", "flat-images", "csv" or "jsonl"
    modality: str  # "image" or "text"
    ids: list[str]
    items: list[str]  # absolute image paths, or texts
    fingerprints: list[str]
    labels: list[str | None] | None = None  # None: the source has no labels at all
    groups: list[str | None] | None = None  # a group per item (region, device, ...) for per-group metrics
    options: dict = field(default_factory=dict)  # how it was read (columns), recorded in the store
    part_of: int | None = None  # for a subset (Source.subset): how many items the whole source has

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: Sequence[int]) -> Source:
        """The items at ``rows``, in that order."""
        pick = list(rows)
        return Source(
            path=self.path,
            kind=self.kind,
            modality=self.modality,
            ids=[self.ids[i] for i in pick],
            items=[self.items[i] for i in pick],
            fingerprints=[self.fingerprints[i] for i in pick],
            labels=None if self.labels is None else [self.labels[i] for i in pick],
            groups=None if self.groups is None else [self.groups[i] for i in pick],
            options=self.options,
            part_of=self.part_of or len(self),
        )

    @property
    def class_names(self) -> list[str]:
        if self.labels is None:
            return []
        return sorted({label for label in self.labels if label is not None})

    @property
    def label_indices(self) -> list[int]:
        """Labels as indices into :attr:`class_names`; -1 for an unlabelled item."""
        if self.labels is None:
            return [-1] * len(self.ids)
        index = {name: i for i, name in enumerate(self.class_names)}
        return [index[label] if label is not None else -1 for label in self.labels]

    @property
    def fingerprint(self) -> str:
        """Digest of every item's id, content and label: changes when any of them does, not when the folder moves."""
        hasher = new_hasher()
        hasher.update(f"{self.modality}\n".encode())
        labels = self.labels if self.labels is not None else [None] * len(self.ids)
        groups = self.groups if self.groups is not None else [None] * len(self.ids)
        for item_id, item_fp, label, group in zip(self.ids, self.fingerprints, labels, groups):
            record = [item_id, item_fp, label] if group is None else [item_id, item_fp, label, group]
            hasher.update(json.dumps(record).encode())
            hasher.update(b"\n")
        return hasher.hexdigest()


def load_source(
    path: str | Path,
    text_column: str = DEFAULT_TEXT_COLUMN,
    label_column: str | None = None,
    id_column: str | None = None,
    fingerprint_index: Path | None | str = "default",
    group_column: str | None = None,
) -> Source:
    """Read an image folder (class sub-folders or flat), a CSV/TSV file or a JSONL file.

    ``label_column`` and ``id_column`` default to ``"label"`` and ``"id"`` when those columns exist (ids are row
    numbers otherwise); naming a column that is absent is an error. Image digests are remembered in
    ``fingerprint_index`` (default: ``fingerprints.sqlite`` in the cache folder; None: re-read every file).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist: pass an image folder, a .csv/.tsv file or a .jsonl file")
    if path.is_dir():
        if group_column is not None:
            raise UserError(f"--group-column applies to CSV/JSONL sources; {path} is an image folder")
        return _load_image_folder(path, _index_path(fingerprint_index))
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        rows, columns = _read_delimited(path, "\t" if suffix == ".tsv" else ",")
        return _table_source(path, "csv", rows, columns, text_column, label_column, id_column, group_column)
    if suffix in (".jsonl", ".ndjson"):
        rows, columns = _read_jsonl(path)
        return _table_source(path, "jsonl", rows, columns, text_column, label_column, id_column, group_column)
    raise UserError(
        f"{path}: cannot read a '{suffix or 'extension-less'}' file; "
        f"pass an image folder or a file ending in {', '.join(TABLE_EXTENSIONS)}"
    )


def table_columns(path: str | Path) -> list[str]:
    """The columns a table source names on its first line (a CSV/TSV header, or the keys of a JSONL file's first
    object); none for anything else, or a first line that cannot be read."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_EXTENSIONS or not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            first = handle.readline()
        if suffix in (".csv", ".tsv"):
            return next(csv.reader([first], delimiter="\t" if suffix == ".tsv" else ","), [])
        row = json.loads(first)
    except (OSError, UnicodeDecodeError, ValueError, csv.Error):
        return []
    return list(row) if isinstance(row, dict) else []


def modality_of_path(path: str | Path) -> str | None:
    """The modality :func:`load_source` reads ``path`` as (a folder: images; a table: texts), without reading it;
    None when it reads it as neither (a missing path, another kind of file)."""
    path = Path(path)
    if path.is_dir():
        return "image"
    return "text" if path.suffix.lower() in TABLE_EXTENSIONS else None


def classes_needed(src: Source, purpose: str) -> None:
    """A UserError unless ``src`` has labelled items of two classes or more, for ``purpose`` ("compare",
    "fine-tuning"); a source without labels is told where labels come from."""
    if len(src.class_names) >= 2:
        return
    if src.labels is None and src.modality == "text":
        how = f"it has no column '{DEFAULT_LABEL_COLUMN}': name the label column with --label-column"
    elif src.labels is None:
        how = "put its images in one sub-folder per class"
    else:
        how = f"it has {len(src.class_names)} class"
    raise UserError(f"{src.path}: {purpose} needs labelled items of two classes or more; {how}")


def source_from_items(
    items: Sequence, modality: str, labels: Sequence | None = None, fingerprint_index: Path | None | str = "default"
) -> Source:
    """A source made of items in memory: texts, or paths of image files. Ids are positions."""
    if modality == "text":
        texts = [item if isinstance(item, str) else str(item) for item in items]
        fingerprints = [hash_bytes(text.encode()) for text in texts]
    elif modality == "image":
        texts = [os.path.abspath(item) for item in items]
        missing = next((p for p in texts if not os.path.isfile(p)), None)
        if missing is not None:
            raise UserError(f"{missing} is not a file; an image backbone takes paths of image files")
        fingerprints = file_digests(texts, _index_path(fingerprint_index))
    else:
        raise ValueError(f"modality must be 'text' or 'image', not {modality!r}")
    labels = [None if label is None else str(label) for label in labels] if labels is not None else None
    return Source(
        path=Path("<memory>"),
        kind="items",
        modality=modality,
        ids=[str(i) for i in range(len(texts))],
        items=texts,
        fingerprints=fingerprints,
        labels=labels,
    )


def _index_path(fingerprint_index: Path | None | str) -> Path | None:
    """Where image digests are remembered: ``"default"`` is the cache folder's index, None is nowhere."""
    if fingerprint_index == "default":
        return fingerprint_index_path()
    return None if fingerprint_index is None else Path(fingerprint_index)


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _image_files(folder: str, others: list[str]) -> list[str]:
    """Image files under ``folder``, recursively, sorted; hidden files and folders are skipped, and so are links
    to folders (a link back into the tree would list its images again, under the wrong class, or without end).
    A link to a file is read as the file. An image name that is not a regular file (a FIFO, a device, a broken
    link) is refused: reading one could hang or read without end. Other files (not hidden, not images by name)
    are added to ``others``.

    Plain strings, not Path objects: on a 10k-file folder pathlib alone would cost more than the whole look-up.
    """
    found, odd = [], []
    pending = [folder]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif _is_image_name(entry.name) and not entry.is_dir():
                    (found if entry.is_file() else odd).append(entry.path)
                elif not entry.is_dir():
                    others.append(entry.path)
    if odd:
        more = f" (and {len(odd) - 1} more)" if len(odd) > 1 else ""
        raise UserError(f"{odd[0]}{more} is not a regular file (a FIFO, a device or a broken link); remove it")
    return sorted(found)


def _warn_of_left_out(root: Path, others: list[str], empty: list[str]) -> None:
    """Say which files and class folders an image folder's reading leaves out: a class of SVG files disappeared
    from a new user's data without a word ("embedded 0 of 153 rows" of the others, and no class of that name)."""
    parts = []
    if others:
        kinds = Counter(os.path.splitext(name)[1].lower() or "no extension" for name in others)
        shown = ", ".join(f"{kind} {count}" for kind, count in kinds.most_common(5))
        some = f"{len(others)} files that are not images" if len(others) > 1 else "1 file that is not an image"
        parts.append(f"{some} it reads ({shown}; e.g. {others[0]})")
    if empty:
        listed = first_few([f"{name}/" for name in empty], 5)
        parts.append(f"the class folder{'s' if len(empty) > 1 else ''} {listed}, with no image in it")
    if parts:
        warn_once(
            f"{root}: left out {' and '.join(parts)}; it reads {', '.join(IMAGE_EXTENSIONS)}: convert or remove "
            "the others"
        )


def _warn_of_classes_of_classes(root: Path, root_name: str, class_files: dict[str, list[str]]) -> None:
    """A warning when class folders hold sub-folders of the same names (train/circle/ and test/circle/): the folder
    is likely one of splits, each a folder of classes. A new user's data/ of train/, test/, few/ and new/ was read as
    four classes of those names (accuracy 0.46) without a word."""
    inner: dict[str, set[str]] = {}
    for class_name, files in class_files.items():
        start = len(os.path.join(root_name, class_name)) + 1
        inner[class_name] = {name[start:].split(os.sep)[0] for name in files if os.sep in name[start:]}
    shared = sorted({name for names in inner.values() for name in names if sum(name in n for n in inner.values()) > 1})
    if shared:
        holding = [class_name for class_name, names in inner.items() if shared[0] in names]
        warn_once(
            f"{root}: its class folders hold sub-folders of the same names ({', '.join(shared[:4])}"
            f"{', ...' if len(shared) > 4 else ''}: {holding[0]}/{shared[0]}/ and {holding[1]}/{shared[0]}/), read as "
            f"part of the classes {', '.join(class_files)}; if it is a folder of splits, embed each split's folder "
            f"({os.path.join(str(root), holding[0])}, ...) on its own"
        )


def _load_image_folder(root: Path, fingerprint_index: Path | None) -> Source:
    root_name = os.path.abspath(root)
    entries = sorted(os.scandir(root_name), key=lambda e: e.name)
    top_images = [e.path for e in entries if e.is_file() and _is_image_name(e.name)]
    class_files, others, empty = {}, [], []
    for entry in entries:
        if entry.is_dir() and not entry.name.startswith("."):
            files = _image_files(entry.path, others)
            if files:
                class_files[entry.name] = files
            else:
                empty.append(entry.name)
    if top_images and class_files:
        raise UserError(
            f"{root} has both images at the top and class sub-folders ({next(iter(class_files))}/, ...); "
            "move the top-level images into a class folder, or point at a folder of one kind"
        )
    if class_files:
        _warn_of_left_out(root, others, empty)
        _warn_of_classes_of_classes(root, root_name, class_files)
        files = [f for class_name in class_files for f in class_files[class_name]]
        labels = [printable(class_name) for class_name in class_files for _ in class_files[class_name]]
        kind = "image-folder"
    elif top_images:
        files, labels, kind = top_images, None, "flat-images"
    else:
        texts = [name for name in others + [e.path for e in entries if e.is_file()] if name.lower().endswith(".txt")]
        hint = (  # a new user's folder of .txt files, one sub-folder per class, read as a folder of no images
            f"; texts ({len(texts)} .txt file{'s' if len(texts) > 1 else ''} there) go in a CSV or JSONL file, a "
            "'text' and a 'label' column"
            if texts
            else ""
        )
        raise UserError(
            f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)}); point at a folder "
            f"of images, or at a folder with one sub-folder of images per class{hint}"
        )
    try:
        fingerprints = file_digests(files, fingerprint_index)
    except OSError as exc:
        raise UserError(f"cannot read {exc.filename}: {exc.strerror}; fix its permissions or remove it") from None
    start = len(root_name) + 1
    ids = [printable(name[start:]) for name in files]
    if os.sep != "/":
        ids = [i.replace(os.sep, "/") for i in ids]
    return Source(
        path=root,
        kind=kind,
        modality="image",
        ids=ids,
        items=files,
        fingerprints=fingerprints,
        labels=labels,
    )


def _read_delimited(path: Path, delimiter: str) -> tuple[list[dict], list[str]]:
    """The rows of a CSV (or TSV) file, each with as many fields as the header: a row with more or fewer is
    refused with its line number (a stray delimiter or quote would otherwise shift every column after it)."""
    limit = csv.field_size_limit(MAX_FIELD_BYTES)  # csv's default, 128 KiB, refuses a long text as bad quoting
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            rows = []
            columns = list(reader.fieldnames or [])  # reading the header: the line count starts after it
            first_line = reader.line_num + 1  # where the next row starts (its fields may span lines, quoted)
            for row in reader:
                if None in row or None in row.values():
                    raise UserError(_bad_row(path, reader, row, first_line))
                rows.append(row)
                first_line = reader.line_num + 1
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except csv.Error as exc:
        raise UserError(f"{path} is not a valid CSV file ({exc}); check its quoting") from None
    finally:
        csv.field_size_limit(limit)
    return rows, columns


def _bad_row(path: Path, reader: csv.DictReader, row: dict, first_line: int) -> str:
    """The line for a row whose field count is not the header's: a quote left open (the row ran from
    ``first_line`` over later lines, taking them into one field) is named where it opened; otherwise the count, at
    the row's line."""
    columns = reader.fieldnames or []
    n_fields = len(columns) + len(row.get(None, [])) - list(row.values()).count(None)
    values = [value for value in row.values() if isinstance(value, str)]
    if reader.line_num > first_line and n_fields < len(columns) and any("\n" in value for value in values):
        return (
            f"{path}, line {first_line}: a quoted field opened there runs to line {reader.line_num}, taking the "
            'lines between into one field; close its quote (or double a quote inside a quoted field: "")'
        )
    return (
        f"{path}, line {reader.line_num}: {n_fields} fields where the header has {len(columns)}"
        f"{_delimiter_hint(columns)}; check that line's delimiters and quoting"
    )


def _delimiter_hint(columns) -> str:
    """Words for a header read as one column that holds another delimiter (a new user's semicolon-separated CSV was
    told of field counts only), else nothing."""
    if not columns or len(columns) != 1:
        return ""
    other = next((mark for mark in (";", "\t", "|", ",") if mark in columns[0]), None)
    if other is None:
        return ""
    return (
        f" (its header reads as one column, {columns[0][:40]!r}: is the file separated by {other!r}? a .csv is read "
        "with ',' and a .tsv with tabs)"
    )


def _read_jsonl(path: Path) -> tuple[list[dict], list[str]]:
    rows, columns = [], {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}, line {line_number}: not valid JSON ({exc.msg}); fix that line") from None
                if not isinstance(row, dict):
                    raise UserError(f"{path}, line {line_number}: expected a JSON object per line")
                rows.append(row)
                columns.update(dict.fromkeys(row))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    return rows, list(columns)


def _cell_text(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON's 1 and 1.0 are one label
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text if text.strip() else None


def _warn_of_image_paths(path: Path, texts: list[str], text_column: str) -> None:
    """Warn when a table's texts are the paths of image files: they would be embedded as text, and a head could
    read the class from a folder's name in them (a new user's "accuracy 1.0000")."""
    sample = texts[:20]
    paths = [text for text in sample if _is_image_name(os.path.basename(text.strip()))]
    found = any(os.path.isfile(name) or os.path.isfile(os.path.join(path.parent, name)) for name in paths)
    if len(paths) * 2 > len(sample) and found:
        warn_once(
            f"{path}: the '{text_column}' column holds image file names (e.g. {paths[0]!r}), embedded as text: a "
            "text model reads the names, not the images; to embed the images, put them in one folder per class "
            "and pass the folder"
        )


def _label_text(value) -> str | None:
    """A label cell's class name, or None for a missing label: empty, null, or a spreadsheet's marks of one."""
    text = _cell_text(value)
    return None if text is None or text.strip().lower() in MISSING_LABELS else text


def _table_source(
    path: Path,
    kind: str,
    rows: list[dict],
    columns: Sequence[str],
    text_column: str,
    label_column: str | None,
    id_column: str | None,
    group_column: str | None = None,
) -> Source:
    if not rows:
        raise UserError(f"{path} has no data rows; add rows with a '{text_column}' column")
    shown = ", ".join(columns) or "none"
    if text_column not in columns:
        raise UserError(
            f"{path} has no column '{text_column}' (columns: {shown}){_delimiter_hint(columns)}; pass "
            "--text-column NAME"
        )
    for option, name in (
        ("--label-column", label_column),
        ("--id-column", id_column),
        ("--group-column", group_column),
    ):
        if name is not None and name not in columns:
            raise UserError(f"{path} has no column '{name}' (columns: {shown}); fix {option}")
    if label_column is None and DEFAULT_LABEL_COLUMN in columns:
        label_column = DEFAULT_LABEL_COLUMN
    if id_column is None and DEFAULT_ID_COLUMN in columns:
        id_column = DEFAULT_ID_COLUMN
    row_offset = 2 if kind == "csv" else 1  # first data row's line number, for messages

    texts, ids = [], []
    for n, row in enumerate(rows):
        text = row.get(text_column)
        if text is None:
            raise UserError(f"{path}, row {n + row_offset}: no '{text_column}' value; fill it or drop the row")
        if isinstance(text, (dict, list)):  # a new user's {"body": ...} was embedded as its printout, silently
            kind = "a JSON object" if isinstance(text, dict) else "a JSON list"
            raise UserError(
                f"{path}, row {n + row_offset}: the '{text_column}' value is {kind}, not a text; give the text itself"
            )
        texts.append(text if isinstance(text, str) else str(text))
        if id_column:
            item_id = _cell_text(row.get(id_column))
            if item_id is None:
                raise UserError(f"{path}, row {n + row_offset}: no '{id_column}' value; ids must be filled in")
            ids.append(item_id)
        else:
            ids.append(str(n))
    if len(set(ids)) != len(ids):
        first: dict[str, int] = {}
        n, repeated = next((n, i) for n, i in enumerate(ids) if first.setdefault(i, n) != n)
        raise UserError(
            f"{path}: column '{id_column}' has repeated ids ({repeated!r} in rows {first[repeated] + row_offset} and "
            f"{n + row_offset}); ids must be unique: name another --id-column, or none"
        )
    # An empty text embeds to the same vector whatever its item (it was trained on and predicted, silently).
    empty = [n + row_offset for n, text in enumerate(texts) if not text.strip()]
    if empty:
        where = first_few([str(row) for row in empty], 5)
        raise UserError(
            f"{path}: {len(empty)} row{'s' if len(empty) > 1 else ''} with an empty '{text_column}' (row "
            f"{where}); fill {'them' if len(empty) > 1 else 'it'} in or drop {'them' if len(empty) > 1 else 'it'}"
        )
    _warn_of_image_paths(path, texts, text_column)
    labels = [_label_text(row.get(label_column)) for row in rows] if label_column else None
    groups = [_cell_text(row.get(group_column)) or "(none)" for row in rows] if group_column else None
    for column, names in ((id_column, ids), (label_column, labels), (group_column, groups)):
        # A NUL in a name ended a new user's embed in h5py's traceback, leaving a partial store behind.
        at = next((n for n, name in enumerate(names or ()) if name and "\0" in name), None) if column else None
        if at is not None:
            raise UserError(
                f"{path}, row {at + row_offset}: the '{column}' value holds a NUL character, which no id, label or "
                "group can; remove it"
            )
    return Source(
        path=path,
        kind=kind,
        modality="text",
        ids=ids,
        items=texts,
        fingerprints=[hash_bytes(text.encode()) for text in texts],
        labels=labels,
        groups=groups,
        options={
            "text_column": text_column,
            "label_column": label_column,
            "id_column": id_column,
            "group_column": group_column,
        },
    )
