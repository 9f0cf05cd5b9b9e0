"""Tables, plots and the agreement summary of finished ablation runs.

Per study: a markdown table (one row per cell, one column per question set: mean ± standard
deviation over seeds, in %; chance and majority in the first rows), a bar plot with the same
numbers (error bars: the spread over seeds; chance and majority as marks), and per finding a
verdict: `agrees` when the difference points the paper's way by more than its spread over
seeds, `does not reproduce` when it points the other way by more than that, `inconclusive`
otherwise, and always when no compared cell beats the majority answer on the finding's sets
(a model that answers from priors has no visual design choice to show). The spread of a
difference is the two cells' standard deviations combined
(sqrt(s1² + s2²)); with one seed it is 0, which is why the default runs three.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llavakit.ablate.studies import Finding, Ranking, Study

Scores = Mapping[str, Mapping[str, Any]]  # set -> {"accuracy", "chance", "majority", "n"}


@dataclass
class CellStats:
    """A cell's per-set accuracy over its seeds."""

    label: str
    per_seed: list[Scores]
    seconds: float

    def values(self, name: str) -> list[float]:
        return [scores[name]["accuracy"] for scores in self.per_seed if name in scores]

    def majority(self, sets: Sequence[str]) -> float | None:
        """The majority answer's accuracy, averaged over `sets` (None when a set has none)."""
        values = [self.per_seed[0].get(name, {}).get("majority") for name in sets] if self.per_seed else [None]
        return None if any(value is None for value in values) else statistics.fmean(values)

    def mean(self, sets: Sequence[str]) -> list[float]:
        """Per seed, the mean accuracy over `sets` (the number a finding compares)."""
        return [statistics.fmean(scores[name]["accuracy"] for name in sets) for scores in self.per_seed]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _baseline(cells: Sequence[CellStats], name: str, which: str) -> float | None:
    for cell in cells:
        for scores in cell.per_seed:
            value = scores.get(name, {}).get(which)
            if value is not None:
                return float(value)
    return None


def study_table(study: Study, cells: Sequence[CellStats]) -> str:
    """Markdown: baselines first, then each cell's mean ± std per set, and the seeds it has."""
    header = "| | " + " | ".join(study.sets) + " | seeds | time |\n|---|" + "---:|" * (len(study.sets) + 2)
    rows = []
    for which in ("chance", "majority"):
        values = [_baseline(cells, name, which) for name in study.sets]
        rows.append(f"| *{which}* | " + " | ".join("" if v is None else f"{v:.1f}" for v in values) + " | | |")
    for cell in cells:
        entries = []
        for name in study.sets:
            mean, std = mean_std(cell.values(name))
            entries.append("n/a" if math.isnan(mean) else f"{mean:.1f} ± {std:.1f}")
        rows.append(f"| {cell.label} | " + " | ".join(entries) + f" | {len(cell.per_seed)} | {cell.seconds:.0f} s |")
    return "\n".join([header, *rows])


@dataclass
class Verdict:
    claim: str
    verdict: str
    detail: str


ONE_SEED = "inconclusive (one seed: no spread to judge by)"
AT_MAJORITY = "inconclusive (no cell beats the majority answer)"


def _above_majority(cells: Sequence[CellStats], sets: Sequence[str]) -> bool:
    """Whether any cell beats always answering the majority: below it, differences are noise in the priors."""
    majority = cells[0].majority(sets) if cells else None
    return majority is None or any(mean_std(cell.mean(sets))[0] > majority for cell in cells)


def judge_finding(finding: Finding, cells: Mapping[str, CellStats]) -> Verdict:
    """The finding's difference (better - worse, mean over its sets) against its spread over seeds."""
    better, worse = (
        mean_std(cells[finding.better].mean(finding.sets)),
        mean_std(cells[finding.worse].mean(finding.sets)),
    )
    difference = better[0] - worse[0] + finding.margin
    spread = math.hypot(better[1], worse[1])
    verdict = "agrees" if difference > spread else "does not reproduce" if difference < -spread else "inconclusive"
    if not _above_majority([cells[finding.better], cells[finding.worse]], finding.sets):
        verdict = AT_MAJORITY
    if min(len(cells[finding.better].per_seed), len(cells[finding.worse].per_seed)) < 2:
        verdict = ONE_SEED
    margin = f" (allowed shortfall {finding.margin:.0f})" if finding.margin else ""
    detail = (
        f"{finding.better} {better[0]:.1f} vs {finding.worse} {worse[0]:.1f} on {', '.join(finding.sets)}: "
        f"{better[0] - worse[0]:+.1f} points{margin}, spread ±{spread:.1f}"
    )
    return Verdict(finding.claim, verdict, detail)


def judge_ranking(ranking: Ranking, cells: Mapping[str, CellStats]) -> Verdict:
    """Each axis's effect: the range of its cells' means; agrees when the ranges fall in the claimed order."""
    effects = []
    for axis, labels in ranking.axes:
        means = [mean_std(cells[label].mean(ranking.sets))[0] for label in labels]
        effects.append((axis, max(means) - min(means)))
    ordered = all(first[1] >= second[1] for first, second in zip(effects, effects[1:]))
    detail = "; ".join(f"{axis}: {effect:.1f} points" for axis, effect in effects)
    verdict = "agrees" if ordered else "does not reproduce"
    if not _above_majority([cells[label] for _, labels in ranking.axes for label in labels], ranking.sets):
        verdict = AT_MAJORITY
    if any(len(cells[label].per_seed) < 2 for _, labels in ranking.axes for label in labels):
        verdict = ONE_SEED
    return Verdict(ranking.claim, verdict, f"range of mean accuracy by {detail}")


def judge(study: Study, cells: Sequence[CellStats]) -> list[Verdict]:
    by_label = {cell.label: cell for cell in cells}
    verdicts = []
    for finding in study.findings:
        needed = (
            [finding.better, finding.worse]
            if isinstance(finding, Finding)
            else [label for _, labels in finding.axes for label in labels]
        )
        if any(label not in by_label for label in needed):
            continue  # not in this (quick) grid
        verdicts.append(
            judge_finding(finding, by_label) if isinstance(finding, Finding) else judge_ranking(finding, by_label)
        )
    return verdicts


def plot_study(study: Study, cells: Sequence[CellStats], path: Path) -> Path | None:
    """Grouped bars: a group per set, a bar per cell (mean; error bar: seed spread); chance and majority marks."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    figure = Figure(figsize=(max(6.0, 1.6 * len(study.sets) * max(1, len(cells)) / 2), 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    width = 0.8 / max(1, len(cells))
    for index, cell in enumerate(cells):
        stats = [mean_std(cell.values(name)) for name in study.sets]
        positions = [x - 0.4 + width * (index + 0.5) for x in range(len(study.sets))]
        axis.bar(positions, [m for m, _ in stats], width, yerr=[s for _, s in stats], capsize=3, label=cell.label)
    for which, marker in (("chance", "_"), ("majority", "x")):
        values = [_baseline(cells, name, which) for name in study.sets]
        xs = [x for x, v in zip(range(len(study.sets)), values) if v is not None]
        axis.scatter(
            xs,
            [v for v in values if v is not None],
            marker=marker,
            s=400 if marker == "_" else 60,
            color="black",
            zorder=3,
            label=which,
        )
    axis.set_xticks(range(len(study.sets)), study.sets)
    axis.set_ylabel("held-out accuracy (%)")
    axis.set_title(study.title, fontsize=10)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path)
    return path


def study_section(
    study: Study, cells: Sequence[CellStats], verdicts: Sequence[Verdict], plot: Path | None, relative_to: Path
) -> str:
    """One `##` section: source, table, plot, verdicts (`judge`'s), time."""
    lines = [f"## {study.name}: {study.title}", "", f"Source: {study.source}.", "", study_table(study, cells), ""]
    if plot is not None:
        lines += [f"![{study.name}]({plot.relative_to(relative_to).as_posix()})", ""]
    lines += ["| finding | agreement | numbers |", "|---|---|---|"]
    lines += [f"| {v.claim} | **{v.verdict}** | {v.detail} |" for v in verdicts]
    seconds = sum(cell.seconds for cell in cells)
    lines += ["", f"Measured time: {seconds / 60:.1f} min of training and scoring ({len(cells)} cells)."]
    return "\n".join(lines) + "\n"


def summary_table(sections: Sequence[tuple[Study, list[Verdict]]]) -> str:
    lines = ["| study | finding | agreement |", "|---|---|---|"]
    for study, verdicts in sections:
        lines += [f"| {study.name} | {v.claim} | {v.verdict} |" for v in verdicts]
    return "\n".join(lines)
