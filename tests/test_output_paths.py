"""Output folders: checked before work, earlier work refused or emptied on request."""

from __future__ import annotations

import pytest

from llavakit.errors import OutputExistsError, OutputPathError
from llavakit.output_paths import check_writable_dir, check_writable_file, prepare_output_dir


def test_a_fresh_or_empty_folder_is_created(tmp_path):
    assert prepare_output_dir(tmp_path / "a" / "b").is_dir()
    (tmp_path / "empty").mkdir()
    assert prepare_output_dir(tmp_path / "empty").is_dir()


def test_earlier_work_is_refused_then_replaced_with_overwrite(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-1").mkdir(parents=True)
    (out / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(OutputExistsError, match=r"run already holds 2 entries of earlier work; pass --overwrite"):
        prepare_output_dir(out)
    assert (out / "model.safetensors.index.json").exists()
    prepare_output_dir(out, overwrite=True)
    assert list(out.iterdir()) == []


def test_files_in_the_way_are_named(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match="file.txt is a file, not a folder"):
        check_writable_dir(blocker)
    with pytest.raises(OutputPathError, match=r"lies under .*file.txt, which is a file"):
        prepare_output_dir(blocker / "sub" / "run", overwrite=True)
    with pytest.raises(OutputPathError, match="is a folder, not a file"):
        check_writable_file(tmp_path)
    with pytest.raises(OutputPathError, match=r"out.json: .*file.txt is a file, not a folder"):
        check_writable_file(blocker / "out.json")
    assert blocker.read_text() == "x"
