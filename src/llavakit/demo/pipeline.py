"""`llavakit demo`: the whole LLaVA recipe on a laptop, from nothing to answered questions.

    world -> tokenizer -> vision tower pretraining -> LM pretraining
          -> stage 1 (connector alignment) -> stage 2 (instruction tuning)
          -> evaluation on the held-out split -> loss curves -> an answered question

The two backbones are pretrained here because nothing may be downloaded; the two LLaVA
stages run through `llavakit.train` exactly as a real recipe would (the same configs,
Trainer, checkpoints), and evaluation through `llavakit.eval`. The output folder keeps
every artefact; `model/` is a checkpoint that `llavakit chat --model` loads.
"""

from __future__ import annotations

import json
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from transformers import LlamaForCausalLM

from llavakit.demo.backbones import (
    LoopSettings,
    language_model_config,
    pretrain_clip,
    pretrain_language_model,
    tower_image_config,
    vision_half,
)
from llavakit.demo.settings import DemoSettings
from llavakit.demo.tile_words import TileWords, tile_words
from llavakit.demo.tower import LabelWeights, SceneLabels, pretrain_labelled_tower
from llavakit.demo.world import DemoWorld, make_tokenizer, make_world
from llavakit.eval.questions import read_questions
from llavakit.model.build import ModelSpec
from llavakit.output_paths import prepare_output_dir
from llavakit.processing.highres import HighResConfig
from llavakit.processing.images import ImageProcessingConfig
from llavakit.synthetic.world import Scene, WorldConfig, generate_world
from llavakit.train.config import (
    DataConfig,
    DatasetConfig,
    OptimizationConfig,
    OutputConfig,
    StageConfig,
    TrainConfig,
)
from llavakit.train.plots import plot_loss_panels

STAGE2_TEMPLATE = "vicuna_v1"
TOWER_SEED_OFFSET = 10_000  # the labelled tower's scenes: another world draw than the demo's own
TOWER_WORDS_SEED_OFFSET = 20_000  # and the scenes of its word crops, a third
NONE_PER_WORD = 1 / 3  # crops without a word the tower sees for each crop with one


@dataclass
class DemoResult:
    """What one demo run produced (all paths inside the output folder)."""

    output_dir: Path
    model_dir: Path
    results: dict[str, Any]
    losses: dict[str, list[tuple[int, float]]]
    answer: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: float = 0.0


def peak_memory_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024


def _model_section(backbones: Path, settings: DemoSettings, **extra: Any) -> ModelSpec:
    """The demo's model; with `hd_grid` > 1 in the grid mode, every image upscaled onto one canvas."""
    grid = {"image_mode": "anyres", "image_grid_pinpoints": settings.grid_pinpoints} if settings.hd_grid > 1 else {}
    return ModelSpec(
        vision=str(backbones / "clip"),
        language=str(backbones / "language"),
        tokenizer=str(backbones / "tokenizer"),
        connector=settings.connector,
        connector_tokens=settings.connector_tokens,
        vision_feature_layer=-2,
        **grid,
        **extra,
    )


def _data_section(
    path: Path, world: DemoWorld, template: str, settings: DemoSettings, fraction: float = 1.0
) -> DataConfig:
    return DataConfig(
        datasets=[DatasetConfig(path=str(path), image_folder=str(world.root), fraction=fraction, name=path.stem)],
        template=template,
        image_aspect="pad" if settings.hd_grid == 1 else None,  # the grid mode fits each image itself
        max_length=settings.max_length,
        packing=True,
        group_by_modality=True,
        seed=settings.seed,
    )


def _optimization(
    batch: int, epochs: float, lr: float, settings: DemoSettings, vision_lr: float | None = None
) -> OptimizationConfig:
    """One rate for the LLM and the connector; the vision tower's own when it trains."""
    return OptimizationConfig(
        global_batch_size=batch,
        per_device_batch_size=batch,
        epochs=epochs,
        lr=lr,
        connector_lr=lr,
        vision_lr=vision_lr,
        warmup_ratio=0.03,
        gradient_checkpointing=False,
        precision="fp32",
        seed=settings.seed,
    )


def _output(path: Path) -> OutputConfig:
    return OutputConfig(dir=str(path), save_steps=0, report_to="none", plot=True, logging_steps=1)


def stage1_config(out: Path, world: DemoWorld, settings: DemoSettings) -> TrainConfig:
    """LLaVA stage 1: frozen backbones, the connector learns to caption (plain template)."""
    return TrainConfig(
        model=_model_section(out / "backbones", settings),
        data=_data_section(world.pretrain, world, "plain", settings),
        stage=StageConfig(name="pretrain"),
        optimization=_optimization(settings.stage1_batch, settings.stage1_epochs, settings.stage1_lr, settings),
        output=_output(out / "stage1"),
    )


def stage2_config(out: Path, world: DemoWorld, settings: DemoSettings, stage1_dir: Path) -> TrainConfig:
    """LLaVA stage 2: connector + LLM, the vision tower frozen as in LLaVA-1.5 (a `stage2_vision_lr`
    also trains it at that rate, as OneVision does)."""
    train_vision = settings.stage2_vision_lr is not None
    return TrainConfig(
        model=_model_section(out / "backbones", settings, connector_weights=str(stage1_dir)),
        data=_data_section(world.stage2, world, STAGE2_TEMPLATE, settings, settings.stage2_fraction),
        stage=StageConfig(name="finetune", train_vision=train_vision),
        optimization=_optimization(
            settings.stage2_batch, settings.stage2_epochs, settings.stage2_lr, settings, settings.stage2_vision_lr
        ),
        output=_output(out / "stage2"),
    )


def train_tokenizer(out: Path, world: DemoWorld, settings: DemoSettings) -> Any:
    """The tokenizer trained on the world's chat text, saved to `out/tokenizer`."""
    tokenizer = make_tokenizer(world.texts(STAGE2_TEMPLATE), settings)
    tokenizer.save_pretrained(out / "tokenizer")
    return tokenizer


def pretrain_vision_tower(out: Path, world: DemoWorld, settings: DemoSettings, tokenizer: Any) -> list[float]:
    """Train the vision tower as `settings.vision_pretraining` says and save it (`out/clip`); returns the losses."""
    if settings.vision_pretraining == "labels":
        return _pretrain_on_labels(out, settings)
    images, captions = world.caption_pairs()
    clip_loop = LoopSettings(settings.clip_steps, settings.clip_batch, settings.clip_lr, settings.seed)
    clip = pretrain_clip(
        images,
        captions,
        tokenizer,
        settings.image_size,
        settings.patch_size,
        settings.vision_hidden,
        settings.vision_layers,
        clip_loop,
    )
    vision_half(clip).save_pretrained(out / "clip")
    return clip_loop.losses


def tower_scenes(settings: DemoSettings) -> list[Scene]:
    """Fresh scenes of the demo's world for the labelled tower, drawn from their own seed rather than
    taken from the demo's world, so its held-out split is not what the tower learns from."""
    return generate_world(settings.tower_scenes, seed=TOWER_SEED_OFFSET + settings.seed)


def word_crop_layout(settings: DemoSettings) -> tuple[HighResConfig, ImageProcessingConfig]:
    """How the model's processor cuts an image in the grid mode (`hd_grid` > 1), for the tower's crops."""
    if settings.grid_pinpoints is None:
        raise ValueError("the demo cuts no high-resolution crops with hd_grid=1")
    highres = HighResConfig(
        mode="anyres",
        crop_size=settings.image_size,
        patch_size=settings.patch_size,
        grid_pinpoints=tuple(tuple(p) for p in settings.grid_pinpoints),
    )
    return highres, tower_image_config(settings.image_size)


def word_crops(settings: DemoSettings) -> TileWords:
    """The high-resolution crops the tower learns the word from: fresh scenes that all hold a word,
    cut as the model's processor cuts them."""
    scenes = generate_world(
        settings.tower_word_scenes, seed=TOWER_WORDS_SEED_OFFSET + settings.seed, config=WorldConfig(text_prob=1.0)
    )
    highres, image_config = word_crop_layout(settings)
    return tile_words(scenes, highres, image_config, SceneLabels().words, NONE_PER_WORD, settings.seed)


def _pretrain_on_labels(out: Path, settings: DemoSettings) -> list[float]:
    loop = LoopSettings(settings.tower_steps, settings.clip_batch, settings.clip_lr, settings.seed)
    tower = pretrain_labelled_tower(
        tower_scenes(settings),
        settings.image_size,
        settings.patch_size,
        settings.vision_hidden,
        settings.vision_layers,
        loop,
        LabelWeights(kinds=settings.tower_kind_weight, counts=settings.tower_count_weight),
        tiles=word_crops(settings) if settings.tower_tile_batch else None,
        tile_batch=settings.tower_tile_batch,
    )
    tower.save_pretrained(out / "clip")
    return loop.losses


def pretrain_language(out: Path, world: DemoWorld, settings: DemoSettings, tokenizer: Any) -> list[float]:
    """Train the language model on the world's chat text and save it (`out/language`); returns the losses.

    Seeded here, before the weights are drawn: a process starts from a random torch seed, so an
    unseeded initialisation would differ between two runs of the same recipe.
    """
    torch.manual_seed(settings.seed)
    language = LlamaForCausalLM(language_model_config(tokenizer, settings.text_hidden, settings.text_layers))
    lm_loop = LoopSettings(settings.lm_steps, settings.lm_batch, settings.lm_lr, settings.seed)
    pretrain_language_model(language, world.texts(STAGE2_TEMPLATE), tokenizer, settings.lm_context, lm_loop)
    language.save_pretrained(out / "language")
    return lm_loop.losses


def pretrain_backbones(out: Path, world: DemoWorld, settings: DemoSettings) -> dict[str, list[tuple[int, float]]]:
    """Train and save the tokenizer, the vision tower and the language model under `out`."""
    tokenizer = train_tokenizer(out, world, settings)
    tower_losses = pretrain_vision_tower(out, world, settings, tokenizer)
    lm_losses = pretrain_language(out, world, settings, tokenizer)
    return {
        "vision tower pretraining": list(enumerate(tower_losses, 1)),
        "LM pretraining": list(enumerate(lm_losses, 1)),
    }


def subsample_eval_sets(world: DemoWorld, out: Path, settings: DemoSettings) -> list[Path]:
    """At most `eval_per_set` questions per set (seeded), written beside the originals' images."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, path in world.eval_files.items():
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if settings.eval_per_set is not None and len(lines) > settings.eval_per_set:
            lines = random.Random(f"{settings.seed}:{name}").sample(lines, settings.eval_per_set)
        target = out / path.name
        target.write_text("\n".join(lines) + "\n", encoding="utf-8")
        files.append(target)
    return files


def held_out_question(world: DemoWorld, seed: int) -> dict[str, str]:
    """A held-out image and a question about it with its true answer (from the VQA set)."""
    record = random.Random(seed).choice(read_questions(world.eval_files["vqa"]))
    return {"image": str(world.root / record["image"]), "question": record["question"], "answer": str(record["answer"])}


class _Phases:
    """Times each phase and announces it, so a long run shows where it is."""

    def __init__(self, console: Console):
        self.console = console
        self.seconds: dict[str, float] = {}

    def run(self, name: str, work, *args, **kwargs):
        self.console.rule(f"[bold]{name}")
        start = time.perf_counter()
        value = work(*args, **kwargs)
        self.seconds[name] = time.perf_counter() - start
        self.console.print(f"{name}: {self.seconds[name]:.1f} s")
        return value


def evaluate_model(
    model_dir: Path, files: list[Path], world: DemoWorld, out: Path, settings: DemoSettings, progress: bool = True
):
    from llavakit.eval.runner import evaluate_files
    from llavakit.serve.chat import load_chat_model

    model, processor = load_chat_model(model_dir)
    results = evaluate_files(
        model,
        processor,
        files,
        image_folder=world.root,
        batch_size=settings.eval_batch,
        max_new_tokens=16,
        output_dir=out,
        progress=progress,
    )
    return model, processor, results


def _answer(model, processor, question: dict[str, str]) -> dict[str, str]:
    from llavakit.serve.chat import ChatSession

    session = ChatSession(model, processor, Path(question["image"]), max_new_tokens=32, temperature=0.0)
    return dict(question, prediction=session.ask(question["question"]))


def run_demo(
    output_dir: str | Path, settings: DemoSettings, console: Console | None = None, overwrite: bool = False
) -> DemoResult:
    """Run every phase into `output_dir` and return what it measured; see the module docstring.

    A folder holding an earlier demo is refused before any work unless `overwrite` (which empties it).
    """
    from llavakit.eval.report import results_markdown, results_table
    from llavakit.train.run import run_training

    console = console or Console()
    settings.world_config()  # a bad world setting is refused before the folder is touched
    out = prepare_output_dir(output_dir, overwrite, "demo output folder")
    phases = _Phases(console)
    started = time.perf_counter()

    world = phases.run("synthetic world", make_world, out / "world", settings)
    losses = phases.run(
        "backbone pretraining (vision tower + language model)", pretrain_backbones, out / "backbones", world, settings
    )
    stage1 = phases.run("stage 1: align the connector", run_training, stage1_config(out, world, settings))
    losses["stage 1 (alignment)"] = stage1.losses
    stage2 = phases.run(
        "stage 2: instruction tuning", run_training, stage2_config(out, world, settings, stage1.output_dir)
    )
    losses["stage 2 (instruction tuning)"] = stage2.losses
    files = subsample_eval_sets(world, out / "eval_sets", settings)
    model, processor, results = phases.run(
        "evaluation on the held-out split", evaluate_model, stage2.model_path, files, world, out / "eval", settings
    )
    plot_loss_panels(losses, out / "losses.png", "llavakit demo: training losses")
    answer = _answer(model, processor, held_out_question(world, settings.seed))
    total = time.perf_counter() - started

    console.print(results_table(results, title="Held-out evaluation (chance and majority baselines beside each)"))
    console.print(f"[bold]Held-out image[/bold] {answer['image']}")
    console.print(f"USER: {answer['question']}\nASSISTANT: {answer['prediction']}\n(true answer: {answer['answer']})")
    result = DemoResult(
        out,
        stage2.model_path,
        {name: r.to_dict() for name, r in results.items()},
        losses,
        answer,
        dict(phases.seconds, total=total),
        peak_memory_mb(),
    )
    _write_summary(result, results_markdown(results), settings)
    console.print(
        f"Total {total:.0f} s, peak memory {result.peak_memory_mb:.0f} MB. Loss curves: {out / 'losses.png'}; "
        f"chat with: llavakit chat --model {stage2.model_path}"
    )
    return result


def _write_summary(result: DemoResult, table: str, settings: DemoSettings) -> None:
    summary = {
        "settings": settings.__dict__,
        "seconds": result.seconds,
        "peak_memory_mb": result.peak_memory_mb,
        "model_dir": str(result.model_dir),
        "results": result.results,
        "answer": result.answer,
    }
    (result.output_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    times = "\n".join(f"| {name} | {seconds:.0f} s |" for name, seconds in result.seconds.items())
    (result.output_dir / "summary.md").write_text(
        f"# llavakit demo\n\n{table}\n\n| phase | time |\n|---|---|\n{times}\n\n"
        f"Peak memory: {result.peak_memory_mb:.0f} MB\n"
    )
