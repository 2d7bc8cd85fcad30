"""Where tlcache writes: output paths refused before any work when nothing can be written there."""

import pytest

from tlcache.errors import UserError
from tlcache.paths import check_output_file, check_output_folder


def test_an_output_folder_may_be_new_or_existing_but_not_a_file(tmp_path):
    assert check_output_folder(tmp_path) == tmp_path
    assert check_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checked, not created
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "f", option="--out")
    with pytest.raises(UserError, match=r"lies under .*/f, which is a file"):
        check_output_folder(tmp_path / "f" / "a" / "b")


def test_an_output_file_needs_a_folder_to_go_into_and_is_not_one(tmp_path):
    assert check_output_file(tmp_path / "new" / "p.csv") == tmp_path / "new" / "p.csv"
    with pytest.raises(UserError, match="is a folder; name a file in it"):
        check_output_file(tmp_path)
    (tmp_path / "f").write_text("x")
    assert check_output_file(tmp_path / "f") == tmp_path / "f"  # an existing file is replaced
    with pytest.raises(UserError, match="its folder .* is a file"):
        check_output_file(tmp_path / "f" / "p.csv")
