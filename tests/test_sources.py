import json
import warnings

import pytest

from conftest import write_image_folder, write_text_csv
from tlcache.errors import UserError
from tlcache.sources import load_source


def test_image_folder_with_classes(image_folder):
    source = load_source(image_folder)
    assert source.kind == "image-folder" and source.modality == "image"
    assert len(source) == 12
    assert source.class_names == ["circle", "square"]
    assert source.ids[0] == "circle/circle-000.png"
    assert source.label_indices[:6] == [0] * 6 and source.label_indices[6:] == [1] * 6


def test_flat_image_folder_has_no_labels(tmp_path):
    write_image_folder(tmp_path / "tmp")
    flat = tmp_path / "flat"
    flat.mkdir()
    for image in (tmp_path / "tmp" / "circle").iterdir():
        image.rename(flat / image.name)
    source = load_source(flat)
    assert source.kind == "flat-images" and source.labels is None
    assert source.label_indices == [-1] * 6


def test_renaming_the_folder_keeps_the_fingerprint(image_folder, tmp_path):
    before = load_source(image_folder).fingerprint
    moved = image_folder.rename(tmp_path / "renamed-elsewhere")
    assert load_source(moved).fingerprint == before


def test_editing_one_pixel_changes_the_fingerprint(image_folder):
    from PIL import Image

    before = load_source(image_folder).fingerprint
    target = image_folder / "square" / "square-003.png"
    image = Image.open(target).convert("RGB")
    image.putpixel((0, 0), (255, 255, 255))
    image.save(target)
    assert load_source(image_folder).fingerprint != before


def test_relabelling_changes_the_fingerprint(image_folder):
    before = load_source(image_folder).fingerprint
    (image_folder / "square" / "square-000.png").rename(image_folder / "circle" / "square-000.png")
    assert load_source(image_folder).fingerprint != before


def test_csv_with_default_columns(text_csv):
    source = load_source(text_csv)
    assert source.modality == "text" and len(source) == 24
    assert source.class_names == ["neg", "pos"]
    assert source.items[1].startswith("the movie was very ") and source.items[1].endswith(" 1")
    assert source.ids[:3] == ["0", "1", "2"]


def test_csv_with_named_columns_and_ids(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("key,review,sentiment\na1,good film,pos\na2,bad film,neg\n", encoding="utf-8")
    source = load_source(path, text_column="review", label_column="sentiment", id_column="key")
    assert source.ids == ["a1", "a2"] and source.items == ["good film", "bad film"]
    assert source.labels == ["pos", "neg"]


def test_id_column_is_used_when_present_and_must_be_unique(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text("id,text\nr7,a\nr9,b\n", encoding="utf-8")
    assert load_source(path).ids == ["r7", "r9"]
    path.write_text("id,text\nr7,a\nr8,c\nr7,b\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"repeated ids \('r7' in rows 2 and 4\)"):  # which, where (it named none)
        load_source(path)


def test_csv_without_label_column_is_unlabelled(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("text\nhello\nworld\n", encoding="utf-8")
    source = load_source(path)
    assert source.labels is None and source.class_names == []


def test_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in [("a b", "x"), ("c d", "y")]) + "\n")
    source = load_source(path)
    assert source.kind == "jsonl" and source.items == ["a b", "c d"] and source.labels == ["x", "y"]


def test_editing_one_text_row_changes_the_fingerprint(tmp_path):
    path = write_text_csv(tmp_path / "a.csv")
    before = load_source(path).fingerprint
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace("very", "quite")
    path.write_text("\n".join(lines) + "\n")
    assert load_source(path).fingerprint != before


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "no images found"),
        (  # a new user's folder of texts, one sub-folder per class
            lambda d: (
                (d / "texts" / "py").mkdir(parents=True)
                or (d / "texts" / "py" / "a.txt").write_text("x")
                and d / "texts"
            ),
            "one sub-folder of images per class; texts (1 .txt file there) go in a CSV or JSONL file",
        ),
        (lambda d: (d / "x.parquet").write_bytes(b"PAR1") and d / "x.parquet", "cannot read a '.parquet' file"),
        (lambda d: (d / "n.csv").write_text("title,label\na,b\n") and d / "n.csv", "no column 'text'"),
        (lambda d: (d / "h.csv").write_text("text\n") and d / "h.csv", "no data rows"),
        (lambda d: (d / "b.jsonl").write_text('{"text": "a"}\n{oops\n') and d / "b.jsonl", "line 2: not valid JSON"),
        (
            lambda d: (d / "o.jsonl").write_text('{"text": "a"}\n{"text": {"body": "b"}}\n') and d / "o.jsonl",
            "row 2: the 'text' value is a JSON object, not a text",
        ),
    ],
)
def test_bad_sources_raise_one_clear_line(tmp_path, make, message):
    with pytest.raises(UserError) as caught:
        load_source(make(tmp_path))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_naming_a_missing_label_column_is_an_error(text_csv):
    with pytest.raises(UserError, match="no column 'sentiment'.*--label-column"):
        load_source(text_csv, label_column="sentiment")


def test_links_to_folders_are_not_followed_and_links_to_files_are_read(image_folder, tmp_path):
    """`ln -s .. circle/loop` once turned 12 images into hundreds of rows, many under the wrong class."""
    import os

    os.symlink("..", image_folder / "circle" / "loop")
    os.symlink(tmp_path, image_folder / "square" / "outside")
    os.symlink(image_folder / "square" / "square-000.png", image_folder / "circle" / "linked.png")
    source = load_source(image_folder)
    assert len(source) == 13
    assert source.ids.count("circle/linked.png") == 1
    assert [source.class_names[i] for i in source.label_indices].count("circle") == 7


def test_files_and_class_folders_left_out_are_said(image_folder):
    """A new user's class of SVG icons vanished without a word: embed counted the other classes' rows only."""
    (image_folder / "places").mkdir()
    for name in ("home.svg", "folder.svg", "notes.txt"):
        (image_folder / "places" / name).write_text("<svg/>")
    (image_folder / "empty").mkdir()
    (image_folder / "circle" / "README").write_text("circles")
    (image_folder / "circle" / ".hidden.txt").write_text("not counted")
    with pytest.warns(UserWarning) as caught:
        source = load_source(image_folder)
    assert source.class_names == ["circle", "square"] and len(source) == 12
    (message,) = [str(w.message) for w in caught]
    assert message.startswith(f"{image_folder}: left out 4 files that are not images it reads (.svg 2, ")
    assert ".txt 1" in message and "no extension 1" in message
    assert "the class folders empty/, places/, with no image in it" in message and "convert or remove" in message


def test_a_table_of_image_paths_is_warned_of(image_folder, tmp_path):
    """A new user's CSV of image paths was embedded as text, and the class in each path gave accuracy 1.0."""
    table = tmp_path / "images.csv"
    names = sorted(p.relative_to(tmp_path) for p in image_folder.rglob("*.png"))
    table.write_text("path,label\n" + "".join(f"{name},{name.parent.name}\n" for name in names))
    with pytest.warns(UserWarning, match="'path' column holds image file names .* embedded as text"):
        load_source(table, text_column="path")
    plain = write_text_csv(tmp_path / "reviews.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_source(plain)  # texts that are not file names: nothing said


@pytest.mark.parametrize("kind", ["fifo", "device", "broken link"])
def test_an_image_name_that_is_not_a_regular_file_is_refused_in_one_line(image_folder, kind):
    import os

    odd = image_folder / "circle" / "odd.jpg"
    if kind == "fifo":
        os.mkfifo(odd)
    else:
        os.symlink("/dev/zero" if kind == "device" else "/nowhere/at/all.jpg", odd)
    with pytest.raises(UserError, match="odd.jpg is not a regular file"):
        load_source(image_folder)


@pytest.mark.parametrize("line", ['"a review",pos,extra', '"a review"'])
def test_a_row_with_more_or_fewer_fields_than_the_header_is_refused_with_its_line(tmp_path, line):
    path = tmp_path / "ragged.csv"
    path.write_text(f'text,label\n"fine",neg\n{line}\n"fine too",pos\n')
    with pytest.raises(UserError, match="ragged.csv, line 3: [13] fields where the header has 2"):
        load_source(path)


def test_an_unclosed_quote_is_named_where_it_opened(tmp_path):
    """A new user's unclosed quote was reported as a count of fields on a later line: the quote takes the lines
    after it into one field. A quoted field over two lines, closed, is read as one text."""
    path = tmp_path / "open.csv"
    path.write_text('text,label\n"two\nlines",neg\n"an open quote,pos\nnext,neg\nlast,pos\n')
    with pytest.raises(UserError, match=r"open.csv, line 4: a quoted field opened there runs to line 6"):
        load_source(path)
    path.write_text('text,label\n"two\nlines",neg\n"closed",pos\n')
    assert load_source(path).items == ["two\nlines", "closed"]


def test_a_long_text_is_read_whole(tmp_path):
    path = tmp_path / "long.csv"
    text = "word " * 1_000_000  # 5 MB in one cell
    path.write_text(f'text,label\n"{text}",pos\n"short",neg\n')
    source = load_source(path)
    assert source.items[0] == text and source.class_names == ["neg", "pos"]


def test_missing_label_marks_leave_a_row_unlabelled(tmp_path):
    path = tmp_path / "marks.csv"
    path.write_text("text,label\na,pos\nb,NaN\nc,N/A\nd,\ne,neg\nf,None\n")
    source = load_source(path)
    assert source.class_names == ["None", "neg", "pos"]  # "None" may be a class: only spreadsheet marks are missing
    assert source.label_indices == [2, -1, -1, -1, 1, 0]


def test_json_numbers_that_are_equal_are_one_label(tmp_path):
    path = tmp_path / "numbers.jsonl"
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": 1.0}, {"text": "c", "label": 2}, {"text": "d"}]
    path.write_text("\n".join(json.dumps(row) for row in rows) + '\n{"text": "e", "label": NaN}\n')
    source = load_source(path)
    assert source.class_names == ["1", "2"]
    assert source.label_indices == [0, 0, 1, -1, -1]


def test_empty_texts_are_refused_by_row_as_missing_ones_are(tmp_path):
    """A new user's CSV with an empty and a whitespace-only text embedded both (one vector for every empty item),
    trained on them and predicted them, silently; a missing text (a JSON null) was refused already."""
    table = tmp_path / "blank.csv"
    table.write_text('text,label\nfine film,pos\n"",neg\ndull,neg\n"   ",pos\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"blank.csv: 2 rows with an empty 'text' \(row 3, 5\); fill them in or drop"):
        load_source(table)
    lines = tmp_path / "blank.jsonl"
    lines.write_text('{"text": "fine", "label": "pos"}\n{"text": " ", "label": "neg"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"1 row with an empty 'text' \(row 2\); fill it in or drop it"):
        load_source(lines)


def test_a_file_of_another_delimiter_is_told_what_it_seems_to_be(tmp_path):
    """A new user's semicolon-separated CSV got "2 fields where the header has 1" and nothing more."""
    path = tmp_path / "semi.csv"
    path.write_text("text;label\nfine, really;pos\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"line 2: 2 fields where the header has 1 \(.*separated by ';'\?"):
        load_source(path)
    path.write_text("text;label\nfine;pos\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"has no column 'text' \(columns: text;label\) \(.*separated by ';'"):
        load_source(path)


def test_a_folder_of_splits_read_as_classes_is_warned_of(tmp_path):
    """A new user's data/ of train/, test/ and new/ was read as three classes of those names (accuracy 0.46)."""
    data = tmp_path / "data"
    write_image_folder(data / "train", per_class=2)
    write_image_folder(data / "test", per_class=2, seed=1)
    write_image_folder(data / "new", per_class=1, classes=("x",))
    with pytest.warns(UserWarning) as caught:
        source = load_source(data)
    assert source.class_names == ["new", "test", "train"]
    (message,) = [str(w.message) for w in caught]
    assert message.startswith(f"{data}: its class folders hold sub-folders of the same names (circle, square: ")
    assert "test/circle/ and train/circle/" in message and f"({data / 'test'}, ...) on its own" in message
    # Sub-folders of other names in each class (kinds of a class) are a class's own: no warning.
    write_image_folder(tmp_path / "kinds" / "circle", per_class=1, classes=("big", "small"))
    write_image_folder(tmp_path / "kinds" / "square", per_class=1, classes=("plain",))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_source(tmp_path / "kinds").class_names == ["circle", "square"]


@pytest.mark.parametrize("column", ["id", "label", "group"])
def test_a_nul_character_in_an_id_label_or_group_is_refused_by_row(tmp_path, column):
    """A new user's id with a NUL byte ended `embed` and `predict` in h5py's traceback, leaving a partial store in
    the cache; in a text it is the text's own."""
    import csv

    rows = [{"id": f"r{n}", "text": f"item {n}\0 fine", "label": "ab"[n % 2], "group": "g"} for n in range(4)]
    rows[2][column] = "x\0y"
    for suffix in (".csv", ".jsonl"):
        path = tmp_path / f"t{suffix}"
        if suffix == ".csv":
            with open(path, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        else:
            path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        line = 4 if suffix == ".csv" else 3
        with pytest.raises(UserError, match=rf"t{suffix}, row {line}: the '{column}' value holds a NUL character"):
            load_source(path, group_column="group")
    rows[2][column] = "fine"
    (tmp_path / "ok.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    assert load_source(tmp_path / "ok.jsonl", group_column="group").items[0] == "item 0\0 fine"
