"""Fail a test when llavakit's own code calls a deprecated API of a library it depends on.

transformers announces removals (FutureWarning / DeprecationWarning) a few minor versions
ahead, inside the range pyproject allows; a call that warns today breaks users on the next
release. Libraries raise these warnings from deep inside (a decorator, torch's module
dispatch), so the warning's own location says nothing about who made the call: the guard
walks the live stack from the warning up, past the warning library's own frames, and blames
the first caller outside it. Deprecated calls that a library makes of another library
(peft calling a deprecated transformers property) are theirs to fix and pass.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import pytest

import llavakit

SOURCE = str(Path(llavakit.__file__).resolve().parent)
CATEGORIES = (DeprecationWarning, FutureWarning, PendingDeprecationWarning)
# Frames that only pass a call along: torch's module dispatch, functools and contextlib wrappers.
_PASS_THROUGH = ("torch/nn/modules/module.py", "/functools.py", "/contextlib.py", "/warnings.py", "/_py_warnings.py")


def _library_root(filename: str) -> str | None:
    """`.../site-packages/transformers/...` -> `.../site-packages/transformers/`; None outside site-packages."""
    marker = "site-packages/"
    at = filename.find(marker)
    if at < 0:
        return None
    top = filename[at + len(marker) :].split("/", 1)[0]
    return filename[: at + len(marker)] + top + "/"


def _frames(frame: FrameType | None) -> Iterator[FrameType]:
    while frame is not None:
        yield frame
        frame = frame.f_back


def deprecated_call_site(frame: FrameType | None) -> str | None:
    """The file that called into the warning library, given the frame that issued the warning."""
    frames = [f for f in _frames(frame) if not f.f_code.co_filename.endswith(_PASS_THROUGH)]
    if not frames:
        return None
    library = _library_root(frames[0].f_code.co_filename)
    for candidate in frames:
        filename = candidate.f_code.co_filename
        if library is None or not filename.startswith(library):
            return filename
    return None


def _warning_frame() -> FrameType | None:
    """The frame that called `warnings.warn`, seen from inside `showwarning`."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.endswith(("/warnings.py", "/_py_warnings.py", __file__)):
        frame = frame.f_back
    return frame


@contextmanager
def _guard() -> Iterator[None]:
    """Record deprecation warnings whose caller is llavakit's source; fail if there are any."""
    ours: list[str] = []
    others: list[tuple] = []

    def showwarning(message, category, filename, lineno, file=None, line=None) -> None:
        caller = deprecated_call_site(_warning_frame())
        if caller is not None and caller.startswith(SOURCE):
            ours.append(f"{category.__name__} from a call in {caller}: {message}")
        else:
            others.append((message, category, filename, lineno))

    with warnings.catch_warnings():
        for category in CATEGORIES:
            warnings.simplefilter("always", category)
        warnings.showwarning = showwarning
        yield
    for message, category, filename, lineno in others:  # someone else's: back to pytest's own filters
        warnings.warn_explicit(message, category, filename, lineno)
    if ours:
        raise pytest.fail.Exception("llavakit calls deprecated APIs:\n" + "\n".join(sorted(set(ours))), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    with _guard():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    with _guard():
        return (yield)
