"""The demo's data: the synthetic world, its instruction files, and the texts the backbones learn from.

Everything the backbones see comes from the training split only; the held-out split is
used for evaluation and for the final question.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from llavakit.data.instruct import write_instruct_files
from llavakit.data.synth import write_world
from llavakit.demo.settings import DemoSettings
from llavakit.tiny_tokenizer import build_tiny_tokenizer

EVAL_SETS = ("vqa", "counting", "ocr", "region", "pope")


@dataclass
class DemoWorld:
    """Paths of one generated world and its derived files."""

    root: Path
    pretrain: Path
    instruct: Path
    eval_files: dict[str, Path]
    test_scenes: Path

    def caption_pairs(self) -> tuple[list[Path], list[str]]:
        """(image path, caption) of every stage-1 sample: CLIP's training pairs."""
        records = json.loads(self.pretrain.read_text())
        return [self.root / r["image"] for r in records], [r["conversations"][1]["value"] for r in records]

    def texts(self) -> list[str]:
        """Every turn of the training conversations, without image placeholders: the LM's corpus."""
        texts = []
        for path in (self.pretrain, self.instruct):
            for record in json.loads(path.read_text()):
                for turn in record["conversations"]:
                    texts.append(turn["value"].replace("<image>", "").strip())
        return texts


def make_world(out_dir: Path, settings: DemoSettings) -> DemoWorld:
    """Render the world and write stage-1, stage-2 and evaluation files into `out_dir`."""
    manifest = write_world(out_dir, n=settings.scenes, seed=settings.seed, test_fraction=settings.test_fraction)
    files = write_instruct_files(manifest.root, seed=settings.seed)
    return DemoWorld(
        root=manifest.root,
        pretrain=files["pretrain"],
        instruct=files["instruct"],
        eval_files={name: files[f"eval_{name}"] for name in EVAL_SETS if f"eval_{name}" in files},
        test_scenes=manifest.test_path,
    )


def make_tokenizer(texts: list[str], settings: DemoSettings) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the world's text (`DemoWorld.texts`), so its words are single tokens."""
    return build_tiny_tokenizer(extra_texts=texts, vocab_size=settings.vocab_size)
