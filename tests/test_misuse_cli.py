"""The command's own handling of mistakes: one line naming the culprit, `--debug` for the traceback."""

from __future__ import annotations

import pytest

from llavakit.cli import main
from llavakit.errors import OutputExistsError
from misuse import CliCase, run_cli_case


def _earlier_demo(folder):
    (folder / "demo").mkdir()
    (folder / "demo" / "summary.json").write_text('{"earlier": true}')


CASES = [
    CliCase(
        "demo: an earlier demo without --overwrite",
        lambda d: ["demo", "--size", "quick", "--output", str(d / "demo")],
        lambda d: f"demo output folder {d / 'demo'} already holds 1 entry of earlier work; pass --overwrite",
        setup=_earlier_demo,
    ),
    CliCase(
        "demo: output under a file",
        lambda d: ["demo", "--size", "quick", "--output", str(d / "notes.txt" / "demo")],
        "which is a file",
        setup=lambda d: (d / "notes.txt").write_text("mine"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_misuse(case, tmp_path, capsys):
    run_cli_case(case, tmp_path, capsys)


def test_debug_shows_the_traceback(tmp_path):
    _earlier_demo(tmp_path)
    with pytest.raises(OutputExistsError, match="already holds"):
        main(["--debug", "demo", "--size", "quick", "--output", str(tmp_path / "demo")])


def test_debug_from_the_environment(tmp_path, monkeypatch):
    _earlier_demo(tmp_path)
    monkeypatch.setenv("LLAVAKIT_DEBUG", "1")
    with pytest.raises(OutputExistsError):
        main(["demo", "--size", "quick", "--output", str(tmp_path / "demo")])
