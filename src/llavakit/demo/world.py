"""The demo's data: the synthetic world, its instruction files, and the texts the backbones learn from.

Everything the backbones see comes from the training split only; the held-out split is
used for evaluation and for the final question.

The language model learns from the training conversations rendered in the chat template,
with each image replaced by the scene's symbolic description: the text-only view of the
world that LLaVA gave GPT-4 to write its instruction data. The tiny LM thus arrives at
stage 1 knowing the chat format, the world's words and its answers' priors; in the demo's
budget it does not yet look an answer up in the told scene (`docs/demo.md`), which is
what the connector's pictures must then feed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from llavakit.demo.settings import DemoSettings
from llavakit.processing.templates import IMAGE_PLACEHOLDER, get_template
from llavakit.synthetic.instruct import build_instruct_data, write_instruct_files, write_json
from llavakit.synthetic.world import describe, load_scenes, write_world
from llavakit.tiny import build_tiny_tokenizer

EVAL_SETS = ("vqa", "counting", "ocr", "region", "pope")


@dataclass
class DemoWorld:
    """Paths of one generated world and its derived files."""

    root: Path
    pretrain: Path
    instruct: Path
    eval_files: dict[str, Path]
    train_scenes: Path
    test_scenes: Path
    stage2: Path  # what stage 2 trains on (`DemoSettings.stage2_kinds`), beside the full `instruct` file

    def caption_pairs(self) -> tuple[list[Path], list[str]]:
        """(image path, caption) of every stage-1 sample: CLIP's training pairs."""
        records = json.loads(self.pretrain.read_text())
        return [self.root / r["image"] for r in records], [r["conversations"][1]["value"] for r in records]

    def texts(self, template: str) -> list[str]:
        """The LM's corpus: every training conversation in `template`, the image told in words."""
        descriptions = {scene.image: describe(scene) for scene in load_scenes(self.train_scenes)}
        chat = get_template(template)
        texts = []
        for path in (self.pretrain, self.instruct):
            for record in json.loads(path.read_text()):
                told = descriptions[record["image"]]
                conversation = [
                    dict(turn, value=turn["value"].replace(IMAGE_PLACEHOLDER, told)) for turn in record["conversations"]
                ]
                texts.append(chat.render(conversation, sample_id=record["id"]).text)
        return texts


def make_world(out_dir: Path, settings: DemoSettings) -> DemoWorld:
    """Render the world and write stage-1, stage-2 and evaluation files into `out_dir`."""
    manifest = write_world(
        out_dir,
        n=settings.scenes,
        seed=settings.seed,
        test_fraction=settings.test_fraction,
        config=settings.world_config(),
    )
    files = write_instruct_files(manifest.root, seed=settings.seed)
    stage2 = build_instruct_data(
        load_scenes(manifest.train_path),
        kinds=settings.stage2_kinds,
        seed=settings.seed,
        per_scene=settings.stage2_per_image,
    )
    stage2_path = manifest.root / "stage2.json"
    write_json(stage2_path, stage2)
    return DemoWorld(
        root=manifest.root,
        pretrain=files["pretrain"],
        instruct=files["instruct"],
        eval_files={name: files[f"eval_{name}"] for name in EVAL_SETS if f"eval_{name}" in files},
        train_scenes=manifest.train_path,
        test_scenes=manifest.test_path,
        stage2=stage2_path,
    )


def make_tokenizer(texts: list[str], settings: DemoSettings) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the world's chat text (`DemoWorld.texts`), so its words and the
    template's are single tokens (a prompt the tokenizer never saw would cost a token per letter)."""
    return build_tiny_tokenizer(extra_texts=texts, vocab_size=settings.vocab_size)
