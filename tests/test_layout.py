"""The package layout: imports point one way, and `import llavakit` stays light.

The arrows: cli -> demo -> serve / eval / train / synthetic -> data / interop -> processing -> model.
A package may import itself, `tiny` where listed, and anything below it; nothing imports
upwards or sideways between the products (eval does not import the synthetic world, data
does not import evaluation), so each part can be read and reused on its own.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import llavakit

PACKAGE = Path(llavakit.__file__).resolve().parent

# Foundation modules every package may use (they import no other llavakit module).
FOUNDATION = {"config_files", "errors", "loading_options", "output_paths"}
# Package -> the packages it may import (itself always). The top-level `__init__` re-exports lazily.
ALLOWED = {
    "config_files": {"errors"},
    "errors": set(),
    "loading_options": {"errors"},
    "output_paths": {"errors"},
    "model": set(),
    "processing": {"model"},
    "data": {"processing", "model"},
    "interop": {"processing", "model"},
    "tiny": {"model"},
    "train": {"data", "interop", "processing", "model", "tiny"},
    "eval": {"processing", "model"},
    "synthetic": {"processing", "model"},
    "serve": {"processing", "model", "tiny"},
    "demo": {"train", "eval", "serve", "synthetic", "data", "interop", "processing", "model", "tiny"},
    "ablate": {"demo", "train", "eval", "synthetic", "data", "processing", "model", "tiny"},
    "cli": {"ablate", "demo", "train", "eval", "serve", "synthetic", "data", "interop", "processing", "model", "tiny"},
}


def _part(module_path: Path) -> str:
    relative = module_path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _imported_parts(source: Path) -> set[str]:
    """The llavakit packages a file imports, at module level or inside functions."""
    parts = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            pieces = name.split(".")
            if pieces[0] == "llavakit" and len(pieces) > 1:
                parts.add(pieces[1])
    return parts


def _modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if path != PACKAGE / "__init__.py")


def test_every_package_has_a_rule():
    assert {_part(path) for path in _modules()} <= set(ALLOWED)


@pytest.mark.parametrize("path", _modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_imports_point_one_way(path):
    part = _part(path)
    allowed = ALLOWED[part] | (FOUNDATION if part not in FOUNDATION else set())
    wrong = _imported_parts(path) - allowed - {part}
    assert not wrong, f"{path.relative_to(PACKAGE)} ({part}/) imports {sorted(wrong)}; allowed: {sorted(allowed)}"


def test_the_rule_finds_a_wrong_import(tmp_path):
    source = tmp_path / "bad.py"
    source.write_text("def f():\n    from llavakit.synthetic.world import Scene\n")
    assert _imported_parts(source) == {"synthetic"}


def test_import_and_help_load_neither_torch_nor_transformers():
    """The public API is lazy: the package and the command's parser load no heavy library."""
    code = (
        "import sys, llavakit, llavakit.cli\n"
        "llavakit.cli.build_parser().format_help()\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'numpy', 'PIL'}))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_public_api_names_resolve():
    assert sorted(llavakit.__all__) == sorted(llavakit._EXPORTS)
    for name in llavakit.__all__:
        assert getattr(llavakit, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = llavakit.nothing_here
