"""Where tlcache writes: output paths refused before any work when nothing can be written there."""

import pytest

from tlcache.errors import UserError
from tlcache.paths import check_output_file, check_output_folder, folder_for_output


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


def test_a_failed_command_removes_the_folders_it_made_for_its_output_and_only_those(tmp_path):
    (tmp_path / "old").mkdir()
    with pytest.raises(ValueError), folder_for_output(tmp_path / "old" / "a" / "b") as folder:
        assert folder.is_dir()
        raise ValueError("the work failed")
    assert (tmp_path / "old").is_dir() and not (tmp_path / "old" / "a").exists()
    with pytest.raises(ValueError), folder_for_output(tmp_path / "c" / "d"):
        (tmp_path / "c" / "other").write_text("written meanwhile")  # by someone else: kept, and its folder too
        raise ValueError("the work failed")
    assert not (tmp_path / "c" / "d").exists() and (tmp_path / "c" / "other").is_file()
    with folder_for_output(tmp_path / "e" / "f"):
        pass
    assert (tmp_path / "e" / "f").is_dir()  # the work went well: the folders stay
