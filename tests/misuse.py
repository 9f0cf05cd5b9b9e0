"""Table-driven misuse cases: a bad input to a command, and what a careful user must see.

Each case builds its inputs in a fresh folder, runs `llavakit ...` in-process, and checks:
the exit status, a message that names the culprit (file, sample, key or request), no
traceback in the output, and that no file that existed before the command changed.

    CASES = [CliCase("train: unknown key", lambda d: ["train", str(d / "r.yaml"), "x=1"], "x", setup=...)]

    @pytest.mark.parametrize("case", CASES, ids=str)
    def test_misuse(case, tmp_path, capsys):
        run_cli_case(case, tmp_path, capsys)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from llavakit.cli import main


@dataclass(frozen=True)
class CliCase:
    """One bad input: `argv(folder)` after `setup(folder)`; `culprit(folder)` or a string must be in the message."""

    name: str
    argv: Callable[[Path], list[str]]
    culprit: str | Callable[[Path], str]
    setup: Callable[[Path], None] | None = None
    status: int = 2

    def __str__(self) -> str:
        return self.name


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below `folder`, by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def run_cli_case(case: CliCase, folder: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run `case` in `folder`; return the printed output after the checks pass."""
    if case.setup is not None:
        case.setup(folder)
    before = file_hashes(folder)
    status = main(case.argv(folder))
    captured = capsys.readouterr()
    output = captured.out + captured.err
    culprit = case.culprit(folder) if callable(case.culprit) else case.culprit
    assert status == case.status, (case.name, status, output)
    assert culprit in output, (case.name, culprit, output)
    assert "Traceback" not in output, (case.name, output)
    after = file_hashes(folder)
    changed = sorted(name for name, digest in before.items() if after.get(name) != digest)
    assert not changed, (case.name, "changed or removed", changed)
    return output
