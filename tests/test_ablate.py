"""`llavakit ablate --quick`: every cell trained and scored, shown in tables, plots and verdicts; reruns cached."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest

from llavakit.ablate.report import CellStats, judge_finding, judge_ranking
from llavakit.ablate.runs import Shared
from llavakit.ablate.settings import DEFAULT, QUICK
from llavakit.ablate.studies import STUDIES, Finding, Ranking, select_studies
from llavakit.cli import main
from llavakit.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def scores(**accuracy: float) -> dict:
    return {name: {"accuracy": value, "chance": 10.0, "majority": 20.0, "n": 10} for name, value in accuracy.items()}


def test_a_finding_agrees_only_beyond_the_seed_spread():
    finding = Finding("b beats a", "b", "a", ("vqa",))
    a = CellStats("a", [scores(vqa=40.0), scores(vqa=42.0), scores(vqa=44.0)], 1.0)
    close = CellStats("b", [scores(vqa=41.0), scores(vqa=44.0), scores(vqa=47.0)], 1.0)
    far = CellStats("b", [scores(vqa=50.0), scores(vqa=51.0), scores(vqa=52.0)], 1.0)
    worse = CellStats("b", [scores(vqa=30.0), scores(vqa=31.0), scores(vqa=32.0)], 1.0)
    assert judge_finding(finding, {"a": a, "b": close}).verdict == "inconclusive"  # +2 against a spread of 3.6
    assert judge_finding(finding, {"a": a, "b": far}).verdict == "agrees"
    assert judge_finding(finding, {"a": a, "b": worse}).verdict == "does not reproduce"
    assert "+9.0 points" in judge_finding(finding, {"a": a, "b": far}).detail
    # "no loss" claims: within the margin counts as agreeing
    within = Finding("b keeps a's score", "b", "a", ("vqa",), margin=15.0)
    assert judge_finding(within, {"a": a, "b": worse}).verdict == "agrees"
    at_majority = {"a": CellStats("a", [scores(vqa=10.0), scores(vqa=11.0)], 1.0), "b": far}
    at_majority["b"] = CellStats("b", [scores(vqa=19.0), scores(vqa=19.5)], 1.0)  # majority is 20
    assert judge_finding(finding, at_majority).verdict == "inconclusive (no cell beats the majority answer)"
    single = {"a": CellStats("a", [scores(vqa=1.0)], 1.0), "b": CellStats("b", [scores(vqa=99.0)], 1.0)}
    assert judge_finding(finding, single).verdict.startswith("inconclusive (one seed")


def test_a_ranking_compares_the_axes_effects():
    cells = {
        label: CellStats(label, [scores(vqa=value), scores(vqa=value + 1)], 1.0)
        for label, value in {"r1": 60, "r2": 40, "t1": 50, "t2": 45, "c1": 50, "c2": 49}.items()
    }
    ranking = Ranking("r > t > c", (("res", ("r1", "r2")), ("tokens", ("t1", "t2")), ("conn", ("c1", "c2"))), ("vqa",))
    assert judge_ranking(ranking, cells).verdict == "agrees"
    flipped = Ranking("t > r", (("tokens", ("t1", "t2")), ("res", ("r1", "r2"))), ("vqa",))
    assert judge_ranking(flipped, cells).verdict == "does not reproduce"


def test_unknown_studies_are_named(capsys):
    with pytest.raises(ConfigError, match="unknown study colour; choose from connector"):
        select_studies(["colour"])
    assert main(["ablate", "--study", "colour", "--quick", "--output", "unused"]) == 2
    assert "unknown study colour" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_ablation_trains_and_scores_every_cell(tmp_path, capsys):
    out = tmp_path / "ablate"
    assert main(["ablate", "--quick", "--output", str(out)]) == 0
    report = (out / "ablations.md").read_text()
    runs = json.loads((out / "ablations.json").read_text())
    assert list(runs) == [study.name for study in STUDIES]
    for study in STUDIES:
        cells = study.grid(quick=True)
        assert [cell.label for cell in cells] == list(runs[study.name])
        section = report.split(f"## {study.name}: ")[1].split("\n## ")[0]
        header = next(line for line in section.splitlines() if line.startswith("| | "))
        assert header == "| | " + " | ".join(study.sets) + " | seeds | time |"
        rows = [line for line in section.splitlines() if line.startswith("| ") and " | 1 | " in line]
        assert [row.split(" | ")[0][2:] for row in rows] == [cell.label for cell in cells]
        for cell in cells:
            (run,) = runs[study.name][cell.label]  # one seed
            assert run["seconds"] > 0
            for name in study.sets:  # trained and scored on every set, numbers in the table
                score = run["scores"][name]
                assert score["n"] > 0 and 0 <= score["accuracy"] <= 100 and not math.isnan(score["accuracy"])
        assert (out / "plots" / f"{study.name}.png").stat().st_size > 1000
        assert re.search(r"Measured time: [\d.]+ min", section)
    assert "inconclusive (one seed" in report  # one seed never claims agreement
    capsys.readouterr()

    # A second seed for one study trains only the new runs; the rest is cached. A run trained
    # again (its result removed) gives the same scores: the same seed, the same numbers.
    linear_seed0 = runs["connector"]["linear"][0]
    (result,) = [path for path in (out / "runs").glob("*/result.json") if json.loads(path.read_text()) == linear_seed0]
    result.unlink()
    assert main(["ablate", "--quick", "--study", "connector", "--seeds", "2", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count(": cached") == 1 and printed.count("seed 1: ") == 2
    again = json.loads((out / "ablations.json").read_text())
    assert all(len(runs_of_cell) == 2 for runs_of_cell in again["connector"].values())
    assert again["connector"]["linear"][0]["scores"] == linear_seed0["scores"]


def test_a_folder_of_another_base_recipe_is_refused_naming_what_changed(tmp_path, capsys):
    out = tmp_path / "ablate"
    (out / "shared").mkdir(parents=True)
    (out / "shared" / "settings.json").write_text(json.dumps(dataclasses.asdict(DEFAULT), sort_keys=True))
    with pytest.raises(ConfigError, match=r"another base recipe \(.*scenes: 500 -> 80.*clip_steps: 300 -> 10"):
        Shared.prepare(out, QUICK)
    assert main(["ablate", "--quick", "--output", str(out)]) == 2
    assert "use another --output folder" in capsys.readouterr().err
    assert sorted(path.name for path in (out / "shared").iterdir()) == ["settings.json"]  # nothing was made


@pytest.mark.parametrize("stored", ["{not json", "[1, 2]"])
def test_a_folder_whose_settings_file_holds_no_settings_is_refused_by_name(tmp_path, stored):
    settings = tmp_path / "ablate" / "shared" / "settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(stored)
    with pytest.raises(ConfigError, match=r"another base recipe \(its settings.json is not a JSON object of settings"):
        Shared.prepare(tmp_path / "ablate", QUICK)
    assert settings.read_text() == stored and sorted(settings.parent.iterdir()) == [settings]  # nothing overwritten
