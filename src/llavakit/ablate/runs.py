"""One ablation run: a cell of a study at one seed, trained through `llavakit train`'s code and scored.

Everything a run shares with the others is made once per output folder and reused: the
synthetic world (seed 0), its held-out question sets (plus `eval_text.jsonl`: the VQA
questions asked about the scene told in words, no image, for the mixture study), the tokenizer
and language model, and one CLIP tower per tower shape. A seed changes what the LLaVA stages
draw (initialisation of the connector, data order), not the world or the backbones.

Runs are cached by their resolved configs: the key hashes both stages' `TrainConfig`s (output
folders left out) with the question sets, so adding a seed or a study reruns only what is new,
and changing the recipe reruns what it changes. A finished run leaves `result.json` in
`runs/<key>/`; an interrupted one is started again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llavakit.ablate.studies import Cell, Tower
from llavakit.demo.pipeline import (
    peak_memory_mb,
    pretrain_language,
    pretrain_vision_tower,
    stage1_config,
    stage2_config,
    subsample_eval_sets,
    train_tokenizer,
)
from llavakit.demo.settings import DemoSettings
from llavakit.demo.world import DemoWorld, make_world
from llavakit.errors import ConfigError
from llavakit.eval.questions import read_questions
from llavakit.synthetic.instruct import SHORT_ANSWER_PROMPT
from llavakit.synthetic.world import describe, load_scenes
from llavakit.train.config import DatasetConfig, TrainConfig

RESULT_NAME = "result.json"
# MM1's pretraining proportions: captions 45 %, interleaved documents 45 %, text 10 %.
MIXTURE_WEIGHTS = {"pretrain": 45.0, "documents": 45.0, "text": 10.0}


@dataclass
class Shared:
    """What every run of one output folder uses: world, question sets, backbones."""

    root: Path
    settings: DemoSettings
    world: DemoWorld
    eval_files: list[Path]
    eval_digests: dict[str, str]  # question file -> sha256, part of every run's cache key

    @classmethod
    def prepare(cls, root: Path, settings: DemoSettings) -> Shared:
        """Make (or find) the world, the question sets and the language side under `root/shared`."""
        shared = root / "shared"
        _check_same_base(shared / "settings.json", settings)
        if (shared / "world.done").exists():
            world = _existing_world(shared / "world")
        else:
            world = make_world(shared / "world", settings)
            (shared / "world.done").write_text("")
        eval_dir = shared / "eval_sets"
        if not (eval_dir / "eval_text.jsonl").exists():
            files = subsample_eval_sets(world, eval_dir, settings)
            write_text_questions(files[0], world, eval_dir / "eval_text.jsonl")
        eval_files = sorted(eval_dir.glob("eval_*.jsonl"))
        if not (shared / "language" / "config.json").exists():
            tokenizer = train_tokenizer(shared, world, settings)
            pretrain_language(shared, world, settings, tokenizer)
        digests = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in eval_files}
        return cls(root, settings, world, eval_files, digests)

    def tower_dir(self, tower: Tower) -> Path:
        """The CLIP tower of this shape, pretrained on the world's captions the first time it is asked for."""
        from transformers import AutoTokenizer

        folder = self.root / "shared" / f"clip-{tower.image_size}px-patch{tower.patch_size}"
        if not (folder / "clip" / "config.json").exists():
            tokenizer = AutoTokenizer.from_pretrained(self.root / "shared" / "tokenizer")
            settings = self.settings.replace(image_size=tower.image_size, patch_size=tower.patch_size)
            pretrain_vision_tower(folder, self.world, settings, tokenizer)
        return folder / "clip"


def _recipe_changes(stored: str, settings: DemoSettings) -> str:
    """The settings that differ between a folder's recipe (its JSON text) and this one, in field order."""
    try:
        there = json.loads(stored)
    except json.JSONDecodeError:
        there = None
    if not isinstance(there, dict):
        return "its settings.json is not a JSON object of settings"
    here = json.loads(json.dumps(dataclasses.asdict(settings)))  # tuples as JSON lists, like the stored text
    changed = [f"{name}: {there.get(name)!r} -> {value!r}" for name, value in here.items() if there.get(name) != value]
    changed += [f"{name}: {there[name]!r} -> absent" for name in there if name not in here]
    return ", ".join(changed) or "the same values, written differently"


def _check_same_base(path: Path, settings: DemoSettings) -> None:
    """One output folder, one base recipe: its world and backbones were made for it."""
    wanted = json.dumps(dataclasses.asdict(settings), sort_keys=True)
    stored = path.read_text() if path.exists() else wanted
    if stored != wanted:
        raise ConfigError(
            f"{path.parent.parent} holds ablation runs of another base recipe ({_recipe_changes(stored, settings)}; "
            "--quick and the default differ, and so may two llavakit versions): use another --output folder"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(wanted)


def _existing_world(root: Path) -> DemoWorld:
    names = {path.stem.removeprefix("eval_"): path for path in root.glob("eval_*.jsonl")}
    return DemoWorld(
        root=root,
        pretrain=root / "pretrain.json",
        instruct=root / "instruct.json",
        eval_files=names,
        train_scenes=root / "scenes_train.jsonl",
        test_scenes=root / "scenes_test.jsonl",
        stage2=root / "stage2.json",
    )


def write_text_questions(vqa_file: Path, world: DemoWorld, target: Path) -> Path:
    """The VQA questions with the scene told in words instead of shown: what text-only data should keep."""
    scenes = {scene.image: scene for scene in load_scenes(world.test_scenes)}
    lines = []
    for record in read_questions(vqa_file):
        told = describe(scenes[record["image"]])
        question = dict(
            record, id=f"{record['id']}-text", prompt=f"{told}\n{record['question']}\n{SHORT_ANSWER_PROMPT}"
        )
        question.pop("image")
        lines.append(json.dumps(question))
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


@dataclass
class RunPlan:
    """A cell at a seed: its two stage configs (stage 1 may be absent) and its cache key."""

    cell: Cell
    seed: int
    stage1: TrainConfig | None
    stage2: TrainConfig
    key: str
    folder: Path


def _with_model(config: TrainConfig, cell: Cell, vision: Path, shared: Shared) -> TrainConfig:
    """The config with the shared backbones and the cell's model keys (and no squaring in grid modes)."""
    backbones = shared.root / "shared"
    model = dataclasses.replace(
        config.model,
        vision=str(vision),
        language=str(backbones / "language"),
        tokenizer=str(backbones / "tokenizer"),
        **dict(cell.model),
    )
    data = config.data
    if model.image_mode != "fixed":
        data = dataclasses.replace(data, image_aspect=None)  # the grid modes tile the image themselves
    return dataclasses.replace(config, model=model, data=data)


def _stage1(cell: Cell, shared: Shared, settings: DemoSettings, folder: Path, vision: Path) -> TrainConfig | None:
    if cell.stage1 == "none":
        return None
    config = _with_model(stage1_config(folder, shared.world, settings), cell, vision, shared)
    if cell.stage1 == "captions":
        return config
    stage = dataclasses.replace(config.stage, train_llm=True)
    data = config.data
    if cell.stage1 == "mixture+llm":
        world = shared.world.root
        weights = MIXTURE_WEIGHTS
        datasets = [
            DatasetConfig(
                path=str(world / "pretrain.json"), image_folder=str(world), name="captions", weight=weights["pretrain"]
            ),
            DatasetConfig(
                path=str(world / "documents.jsonl"),
                image_folder=str(world),
                name="interleaved",
                format="interleaved",
                weight=weights["documents"],
            ),
            DatasetConfig(path=str(world / "text.jsonl"), name="text", format="text", weight=weights["text"]),
        ]
        # The same number of samples as the captions alone, so only the mixture differs.
        captions = len(json.loads((world / "pretrain.json").read_text()))
        data = dataclasses.replace(data, datasets=datasets, mixture_size=captions, group_by_modality=False)
    return dataclasses.replace(config, stage=stage, data=data)


def stage_configs(cell: Cell, seed: int, shared: Shared, folder: Path) -> tuple[TrainConfig | None, TrainConfig]:
    """Stage 1 (None: skipped) and stage 2 of `cell` at `seed`, writing under `folder`."""
    settings = shared.settings.replace(seed=seed, stage2_fraction=cell.instruct_fraction)
    vision = shared.tower_dir(cell.tower)
    stage1 = _stage1(cell, shared, settings, folder, vision)
    stage2 = _with_model(stage2_config(folder, shared.world, settings, folder / "stage1"), cell, vision, shared)
    if stage1 is None:
        stage2 = dataclasses.replace(stage2, model=dataclasses.replace(stage2.model, connector_weights=None))
    elif stage1.stage.train_llm:  # a full model out of stage 1: stage 2 starts from it
        model = dataclasses.replace(stage2.model, checkpoint=str(folder / "stage1"), connector_weights=None)
        stage2 = dataclasses.replace(stage2, model=model)
    return stage1, stage2


def plan_run(cell: Cell, seed: int, shared: Shared) -> RunPlan:
    """The resolved stage configs of `cell` at `seed`, in the folder their hash names."""
    key = run_key(list(stage_configs(cell, seed, shared, Path("<run>"))), shared)
    folder = shared.root / "runs" / key
    stage1, stage2 = stage_configs(cell, seed, shared, folder)
    return RunPlan(cell, seed, stage1, stage2, key, folder)


def run_key(configs: list[TrainConfig | None], shared: Shared) -> str:
    """A short hash of the resolved configs (paths relative to the output folder) and the question sets."""
    parts: list[Any] = [None if config is None else dataclasses.asdict(config) for config in configs]
    parts.append(shared.eval_digests)
    text = json.dumps(parts, sort_keys=True, default=str).replace(str(shared.root), "<root>")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_result(plan: RunPlan) -> dict[str, Any] | None:
    path = plan.folder / RESULT_NAME
    return json.loads(path.read_text()) if path.exists() else None


def execute(plan: RunPlan, shared: Shared) -> dict[str, Any]:
    """Train both stages, score the held-out sets, write `result.json`; returns it."""
    from llavakit.demo.pipeline import evaluate_model
    from llavakit.train.run import run_training

    if plan.folder.exists():
        shutil.rmtree(plan.folder)  # an interrupted run: start it again
    started = time.perf_counter()
    if plan.stage1 is not None:
        run_training(plan.stage1)
    stage2 = run_training(plan.stage2)
    _, _, results = evaluate_model(
        stage2.model_path, shared.eval_files, shared.world, plan.folder / "eval", shared.settings, progress=False
    )
    scores = {
        name: {
            "accuracy": 100 * result.metrics["accuracy"],
            "chance": 100 * result.metrics["chance"] if "chance" in result.metrics else None,
            "majority": 100 * result.metrics["majority"] if "majority" in result.metrics else None,
            "n": result.metrics["n"],
        }
        for name, result in results.items()
    }
    result = {
        "cell": plan.cell.key_parts(),
        "seed": plan.seed,
        "scores": scores,
        "seconds": time.perf_counter() - started,
        "peak_memory_mb": peak_memory_mb(),  # of the process so far: every run before this one included
    }
    for stage in ("stage1", "stage2"):
        shutil.rmtree(plan.folder / stage, ignore_errors=True)  # weights are not kept: results are
    (plan.folder / RESULT_NAME).write_text(json.dumps(result, indent=2) + "\n")
    return result
