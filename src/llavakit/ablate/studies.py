"""The ablation studies: each a small grid of training runs and the paper finding it checks.

A `Cell` says how one run differs from the base recipe (the demo's LLaVA recipe at ablation
size, `llavakit.ablate.settings`): model keys for both stages, the vision tower it starts from,
the share of the instruction data, and what stage 1 trains on. A `Finding` is the paper's claim
as a comparison of cells on named question sets; `llavakit.ablate.report` says whether the toy
result agrees, and by how much.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from llavakit.errors import ConfigError

DETAIL_SETS = ("ocr", "counting")
IMAGE_SETS = ("vqa", "counting", "ocr", "region", "pope")
STAGE1_CHOICES = ("captions", "captions+llm", "mixture+llm", "none")


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Tower:
    """The vision tower a cell starts from: input side and patch size (pretrained once, shared)."""

    image_size: int = 32
    patch_size: int = 8

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class Cell:
    """One training run of a study, as its differences from the base recipe.

    `model`: `ModelSpec` keys for both stages (e.g. `connector`, `image_mode`). `stage1`:
    `captions` (LLaVA: the connector learns on captions), `captions+llm` / `mixture+llm` (MM1:
    connector and language model on captions, or on captions + interleaved documents + text
    in MM1's 45:45:10 proportions) or `none` (straight to instruction tuning).
    """

    label: str
    model: Mapping[str, Any] = field(default_factory=_frozen)
    tower: Tower = Tower()
    instruct_fraction: float = 1.0
    stage1: str = "captions"

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", _frozen(self.model))
        if self.stage1 not in STAGE1_CHOICES:
            raise ConfigError(f"cell {self.label}: stage1 must be one of {', '.join(STAGE1_CHOICES)}")

    def key_parts(self) -> dict[str, Any]:
        """What decides this cell's run (its label does not)."""
        return {
            "model": dict(sorted(self.model.items())),
            "tower": [self.tower.image_size, self.tower.patch_size],
            "instruct_fraction": self.instruct_fraction,
            "stage1": self.stage1,
        }


@dataclass(frozen=True)
class Finding:
    """A paper's claim as `better` > `worse` (cell labels) in mean accuracy over `sets`.

    `margin`: for a claim of no loss ("50% of the data keeps the performance"), `better` may
    fall short of `worse` by at most this many points and still agree.
    """

    claim: str
    better: str
    worse: str
    sets: tuple[str, ...] = IMAGE_SETS
    margin: float = 0.0


@dataclass(frozen=True)
class Ranking:
    """MM1's order of importance: the spread of scores along `axes` (name -> cell labels), largest first."""

    claim: str
    axes: tuple[tuple[str, tuple[str, ...]], ...]
    sets: tuple[str, ...] = IMAGE_SETS


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    source: str
    cells: tuple[Cell, ...]
    findings: tuple[Finding | Ranking, ...]
    sets: tuple[str, ...] = IMAGE_SETS
    quick_cells: tuple[str, ...] = ()  # labels run by --quick (default: the first two)

    def cell(self, label: str) -> Cell:
        return next(cell for cell in self.cells if cell.label == label)

    def grid(self, quick: bool) -> tuple[Cell, ...]:
        if not quick:
            return self.cells
        labels = self.quick_cells or tuple(cell.label for cell in self.cells[:2])
        return tuple(self.cell(label) for label in labels)


BASE = Cell("mlp2x_gelu, layer -2")
LOW_RES = Cell("fixed 32 px (16 tokens)")
HD = Cell("LLaVA-1.5-HD grid (2x2 + base)", model={"image_mode": "hd", "hd_max_cells": 4, "use_image_newline": False})
ANYRES = Cell(
    "AnyRes (LLaVA-NeXT)",
    model={"image_mode": "anyres", "image_grid_pinpoints": [[32, 64], [64, 32], [64, 64]], "use_image_newline": True},
)

_MM1_SMALL, _MM1_LARGE = Tower(32, 4), Tower(48, 4)


def _mm1(label: str, connector: str, tokens: int, tower: Tower) -> Cell:
    return Cell(label, model={"connector": connector, "connector_tokens": tokens}, tower=tower)


STUDIES: tuple[Study, ...] = (
    Study(
        "connector",
        "Connector: linear projection vs two-layer MLP",
        "LLaVA-1.5 (Liu et al. 2023, Table 2: the MLP connector improves every benchmark)",
        (Cell("linear", model={"connector": "linear"}), BASE),
        (Finding("a two-layer MLP connector beats a linear one", BASE.label, "linear"),),
    ),
    Study(
        "feature_layer",
        "Vision feature layer: last vs penultimate",
        "LLaVA (Liu et al. 2023, section 5.2: the penultimate layer is 0.96 points better on ScienceQA)",
        (Cell("last layer (-1)", model={"vision_feature_layer": -1}), BASE),
        (Finding("penultimate-layer features beat last-layer ones", BASE.label, "last layer (-1)"),),
    ),
    Study(
        "resolution",
        "Resolution: one low-resolution view vs HD grids vs AnyRes",
        "LLaVA-1.5-HD (Liu et al. 2023, Table 4) and LLaVA-NeXT (2024): higher resolution helps detail (OCR, counting)",
        (LOW_RES, HD, ANYRES),
        (
            Finding("HD grids beat one low-resolution view on detail", HD.label, LOW_RES.label, DETAIL_SETS),
            Finding("AnyRes beats one low-resolution view on detail", ANYRES.label, LOW_RES.label, DETAIL_SETS),
        ),
        quick_cells=(LOW_RES.label, HD.label),
    ),
    Study(
        "mm1",
        "MM1: resolution vs visual-token count vs connector type",
        "MM1 (McKinney et al. 2024, section 3.2: resolution > token count >> connector type at equal tokens)",
        (
            _mm1("48 px, 144 tokens, c_abstractor", "c_abstractor", 144, _MM1_LARGE),
            _mm1("48 px, 64 tokens, c_abstractor", "c_abstractor", 64, _MM1_LARGE),
            _mm1("48 px, 16 tokens, c_abstractor", "c_abstractor", 16, _MM1_LARGE),
            _mm1("32 px, 64 tokens, c_abstractor", "c_abstractor", 64, _MM1_SMALL),
            _mm1("48 px, 64 tokens, avg_pool", "avg_pool", 64, _MM1_LARGE),
            _mm1("48 px, 64 tokens, attn_pool", "attn_pool", 64, _MM1_LARGE),
        ),
        (
            Ranking(
                "image resolution matters most, then the number of visual tokens, the connector type least",
                (
                    ("resolution", ("48 px, 64 tokens, c_abstractor", "32 px, 64 tokens, c_abstractor")),
                    (
                        "token count",
                        (
                            "48 px, 144 tokens, c_abstractor",
                            "48 px, 64 tokens, c_abstractor",
                            "48 px, 16 tokens, c_abstractor",
                        ),
                    ),
                    (
                        "connector type",
                        (
                            "48 px, 64 tokens, c_abstractor",
                            "48 px, 64 tokens, avg_pool",
                            "48 px, 64 tokens, attn_pool",
                        ),
                    ),
                ),
            ),
        ),
        quick_cells=("48 px, 16 tokens, c_abstractor", "32 px, 64 tokens, c_abstractor"),
    ),
    Study(
        "data",
        "Instruction data: 100 / 50 / 30 % of it",
        "LLaVA-1.5 (Liu et al. 2023, section 4.5: 50% of the mixture keeps the full performance)",
        (BASE, Cell("50% of instructions", instruct_fraction=0.5), Cell("30% of instructions", instruct_fraction=0.3)),
        (
            Finding(
                "50% of the instruction data keeps the performance (within 2 points)",
                "50% of instructions",
                BASE.label,
                margin=2.0,
            ),
            Finding("more instruction data is better than 30%", BASE.label, "30% of instructions"),
        ),
        quick_cells=(BASE.label, "30% of instructions"),
    ),
    Study(
        "mixture",
        "Pretraining mixture: captions only vs captions + interleaved + text-only",
        "MM1 (McKinney et al. 2024, section 3.3: text-only data keeps the language ability; interleaved data helps)",
        (Cell("captions only", stage1="captions+llm"), Cell("captions + interleaved + text", stage1="mixture+llm")),
        (
            Finding(
                "adding text-only and interleaved data helps text-only questions",
                "captions + interleaved + text",
                "captions only",
                ("text",),
            ),
        ),
        sets=(*IMAGE_SETS, "text"),
    ),
    Study(
        "stage1",
        "Stage 1: with and without connector pretraining",
        "LLaVA (Liu et al. 2023, Table 8: skipping pretraining costs 5.11 points on ScienceQA)",
        (Cell("no stage 1", stage1="none"), BASE),
        (Finding("pretraining the connector on captions first helps", BASE.label, "no stage 1"),),
    ),
)


def select_studies(names: list[str] | None) -> tuple[Study, ...]:
    """The studies named (all when none); an unknown name is an error listing the known ones."""
    if not names:
        return STUDIES
    known = {study.name: study for study in STUDIES}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"unknown study {', '.join(unknown)}; choose from {', '.join(known)}")
    return tuple(known[name] for name in dict.fromkeys(names))
