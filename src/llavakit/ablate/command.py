"""`llavakit ablate`: the papers' design findings, rerun at toy scale on the synthetic world.

    llavakit ablate                                  # every study, 3 seeds (about an hour on 2 cores)
    llavakit ablate --study connector resolution --seeds 5 --output runs/ablate
    llavakit ablate --quick                          # two cells a study, a tiny world: a smoke run

Writes into `--output`: `ablations.md` (one `##` section per study: table, plot, verdicts, time;
a summary first), `ablations.json` (every run's scores), `plots/<study>.png`, and `runs/<key>/`
(each run's result, cached: a rerun with more seeds or studies trains only what is new).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from llavakit.ablate.report import CellStats, judge, plot_study, study_section, summary_table
from llavakit.ablate.settings import preset_for
from llavakit.ablate.studies import STUDIES, Study, select_studies

DEFAULT_OUTPUT = "runs/ablate"


def add_ablate_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "ablate",
        help="rerun the papers' design findings at toy scale (about an hour for the default on 2 cores)",
        description=(
            "Trains a small grid per study on the synthetic world through llavakit train's code, scores each "
            "run on the same held-out questions and writes tables, plots and whether each paper finding "
            "reproduces. The default (every study, 3 seeds, 48 runs) takes about an hour on 2 CPU cores; --quick "
            "takes under 2 minutes. Runs are cached in OUTPUT/runs by their resolved configs."
        ),
    )
    parser.add_argument(
        "--study",
        nargs="+",
        metavar="NAME",
        help=f"studies to run (default: all): {', '.join(study.name for study in STUDIES)}",
    )
    parser.add_argument("--seeds", type=int, default=None, help="seeds per cell (default: 3; --quick: 1)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"output folder (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--quick", action="store_true", help="two cells a study on a tiny world (a smoke run)")
    parser.set_defaults(run=ablate_main)


def ablate_main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from llavakit.errors import ConfigError

    console = Console()
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    studies = select_studies(args.study)
    output = Path(args.output)
    report = run_ablations(studies, seeds, output, args.quick, console)
    console.print(f"[bold]{report}[/bold]: {len(studies)} studies, {seeds} seed(s) each")
    return 0


def run_ablations(studies: tuple[Study, ...], seeds: int, output: Path, quick: bool, console: Any) -> Path:
    """Run (or find cached) every cell x seed, then write the report; returns `ablations.md`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from llavakit.ablate.runs import Shared, cached_result, execute, plan_run
    from llavakit.demo.pipeline import peak_memory_mb
    from llavakit.output_paths import check_writable_dir

    started = time.perf_counter()
    check_writable_dir(output, "ablation output folder").mkdir(parents=True, exist_ok=True)
    console.rule("[bold]shared: world, question sets, language model")
    shared = Shared.prepare(output, preset_for(quick))
    jobs = [(study, cell, seed) for study in studies for cell in study.grid(quick) for seed in range(seeds)]
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("ablation runs", total=len(jobs))
        for study, cell, seed in jobs:
            plan = plan_run(cell, seed, shared)
            result = cached_result(plan)
            status = "cached"
            if result is None:
                progress.update(task, description=f"{study.name}: {cell.label}, seed {seed}")
                result = execute(plan, shared)
                status = f"{result['seconds']:.0f} s"
            results.setdefault((study.name, cell.label), []).append(result)
            progress.console.print(f"{study.name} / {cell.label} / seed {seed}: {status}")
            progress.advance(task)
    peak = max([peak_memory_mb()] + [run.get("peak_memory_mb", 0.0) for runs in results.values() for run in runs])
    unique = {json.dumps([run["cell"], run["seed"]], sort_keys=True): run for runs in results.values() for run in runs}
    trained = sum(run["seconds"] for run in unique.values()) / 60
    cost = f"{trained:.0f} min of training and scoring over {len(unique)} distinct runs, peak memory {peak:.0f} MB"
    command = f"llavakit ablate{' --quick' if quick else ''} --seeds {seeds}"
    preface = f"Made by `{command}`.\n\n{base_recipe(shared.settings)}\n\nCost: {cost}."
    report = write_report(studies, results, output, quick, preface)
    console.print(f"this call: {time.perf_counter() - started:.0f} s; all runs: {cost}")
    return report


def base_recipe(settings: Any) -> str:
    """The base recipe in words, from the settings every run shares."""
    test = round(settings.scenes * settings.test_fraction)
    return (
        f"Base recipe (every cell changes one thing of it): the demo's LLaVA recipe on a world of {settings.scenes} "
        f"scenes ({settings.scenes - test} to train on, {test} held out); a CLIP tower pretrained on the world's "
        f"captions ({settings.image_size} px, {settings.patch_size} px patches: "
        f"{(settings.image_size // settings.patch_size) ** 2} visual tokens a view, the world's 64 px images halved in "
        f"the fixed mode), a {settings.text_layers}-layer Llama of width {settings.text_hidden} pretrained "
        f"{settings.lm_steps} steps on the world's text, `mlp2x_gelu` on layer -2; stage 1 {settings.stage1_epochs:g} "
        f"epoch on captions, stage 2 {settings.stage2_epochs:g} epoch on {settings.stage2_per_image} "
        f"conversations of kind {', '.join(settings.stage2_kinds)} per training image, batches of "
        f"{settings.stage2_batch}; at most {settings.eval_per_set} held-out questions a set. Seeds change the "
        "connector's initialisation and the data order, not the world or the pretrained backbones. A verdict "
        "`agrees` when the difference points the paper's way by more than the two cells' combined standard "
        "deviation over seeds, `does not reproduce` when it points the other way by more than that, "
        "`inconclusive` otherwise, and always when no compared cell beats the majority answer (a model answering "
        "from priors has no design choice to show)."
    )


def write_report(
    studies: tuple[Study, ...],
    results: dict[tuple[str, str], list[dict[str, Any]]],
    output: Path,
    quick: bool,
    preface: str = "",
) -> Path:
    """`ablations.md` (summary, then a section per study), `ablations.json` and the plots."""
    plots = output / "plots"
    plots.mkdir(exist_ok=True)
    sections, verdicts, data = [], [], {}
    for study in studies:
        cells = [
            CellStats(
                cell.label,
                [run["scores"] for run in results[(study.name, cell.label)]],
                sum(run["seconds"] for run in results[(study.name, cell.label)]),
            )
            for cell in study.grid(quick)
        ]
        plot = plot_study(study, cells, plots / f"{study.name}.png")
        judged = judge(study, cells)
        sections.append(study_section(study, cells, judged, plot, output))
        verdicts.append((study, judged))
        data[study.name] = {cell.label: results[(study.name, cell.label)] for cell in study.grid(quick)}
    scale = "quick grid (a smoke run, not evidence)" if quick else "default grid"
    head = f"# Ablations at toy scale\n\n{scale}; accuracy in % on held-out questions, mean ± std over seeds.\n\n"
    head += f"{preface}\n\n" if preface else ""
    (output / "ablations.md").write_text(head + summary_table(verdicts) + "\n\n" + "\n".join(sections))
    (output / "ablations.json").write_text(json.dumps(data, indent=2) + "\n")
    return output / "ablations.md"
