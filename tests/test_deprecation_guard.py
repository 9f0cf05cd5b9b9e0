"""The deprecation guard blames the caller of a deprecated library API, not the library's own frames."""

from __future__ import annotations

import sys
import warnings

from deprecation_guard import SOURCE, deprecated_call_site


def _compiled(code: str, filename: str) -> dict:
    namespace: dict = {"warnings": warnings, "sys": sys}
    exec(compile(code, filename, "exec"), namespace)
    return namespace


LIBRARY = _compiled(
    "def deprecated():\n    return sys._getframe(0)\ndef internal_caller():\n    return deprecated()\n",
    "/env/lib/python3/site-packages/somelib/api.py",
)
OTHER_LIBRARY = _compiled(
    "def calls_somelib(f):\n    return f()\n",
    "/env/lib/python3/site-packages/otherlib/glue.py",
)
OURS = _compiled("def our_call(f):\n    return f()\n", SOURCE + "/model/fake.py")


def test_our_call_into_a_library_is_ours():
    frame = OURS["our_call"](LIBRARY["internal_caller"])
    assert deprecated_call_site(frame) == SOURCE + "/model/fake.py"


def test_another_librarys_call_is_not_ours():
    frame = OURS["our_call"](lambda: OTHER_LIBRARY["calls_somelib"](LIBRARY["deprecated"]))
    assert deprecated_call_site(frame) == "/env/lib/python3/site-packages/otherlib/glue.py"


def test_a_tests_own_call_is_the_tests():
    assert deprecated_call_site(LIBRARY["deprecated"]()) == __file__
