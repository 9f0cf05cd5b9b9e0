"""LLaVA's instruction generation on real annotations: COCO captions and boxes -> a text-only teacher.

LLaVA (Liu et al., 2023, section 3) gave a text-only GPT each COCO image as two symbolic
representations, its five captions and its objects' boxes (category and normalised
`[x1, y1, x2, y2]`), and asked for three kinds of data: a conversation, a detailed
description and complex reasoning. This module builds that context from the COCO files
(`captions_*.json`, `instances_*.json`), writes the prompts (our own wording, shown in
docs/instruct.md), and hands the requests to the OpenAI-compatible teacher
(`llavakit.synthetic.teacher`: cache, retries, resume, cost). Sample ids are
`coco-<image_id>-<kind>`, so they never collide with the synthetic world's or other sources'.

    llavakit data instruct --source coco --captions captions_train2017.json \\
        --instances instances_train2017.json --image-prefix coco/train2017/ \\
        --backend openai --base-url http://localhost:8000/v1 --model Qwen/Qwen2.5-7B-Instruct
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llavakit.errors import ConfigError, DataError
from llavakit.synthetic.prompts import LLM_KINDS
from llavakit.synthetic.teacher import LLMConfig, generate

OUTPUT_NAME = "instruct_coco.jsonl"

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class CocoImage:
    """One image's text-only view: its captions and (category, normalised box) objects, in annotation order."""

    id: str
    image: str
    captions: tuple[str, ...]
    objects: tuple[tuple[str, Box], ...]


def _read_json(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"COCO {what} file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"COCO {what} file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataError(f"COCO {what} file {path} has no 'annotations' list (is it a COCO annotation file?)")
    return data


def normalised_box(bbox: Any, width: int, height: int) -> Box:
    """COCO's `[x, y, w, h]` in pixels as `[x1, y1, x2, y2]` fractions of the image, 3 decimals (as LLaVA)."""
    x, y, w, h = (float(v) for v in bbox)
    return (
        round(x / width, 3),
        round(y / height, 3),
        round(min(x + w, width) / width, 3),
        round(min(y + h, height) / height, 3),
    )


def _images(data: dict[str, Any], path: Path) -> dict[int, dict[str, Any]]:
    images = {}
    for index, image in enumerate(data.get("images") or []):
        if not isinstance(image, dict) or not all(k in image for k in ("id", "file_name", "width", "height")):
            raise DataError(f"{path}: images[{index}] needs id, file_name, width and height")
        images[image["id"]] = image
    return images


def _id_order(image_id: Any) -> tuple[bool, int, str]:
    """Whole-number ids in numeric order, then any others by text."""
    number = isinstance(image_id, int) and not isinstance(image_id, bool)
    return (not number, image_id if number else 0, str(image_id))


def load_coco(captions: str | Path, instances: str | Path | None = None, image_prefix: str = "") -> list[CocoImage]:
    """Every captioned image of the COCO files, in image id order, with its boxes from `instances`.

    `image_prefix` goes before each file name (the path relative to the training image folder,
    e.g. `coco/train2017/`, as LLaVA's data names them). Crowd annotations are left out, as
    LLaVA's boxes are single objects.
    """
    caption_data = _read_json(captions, "captions")
    images = _images(caption_data, Path(captions))
    texts: dict[int, list[str]] = defaultdict(list)
    for annotation in caption_data["annotations"]:
        if isinstance(annotation, dict) and isinstance(annotation.get("caption"), str):
            texts[annotation.get("image_id")].append(" ".join(annotation["caption"].split()))
    boxes: dict[int, list[tuple[str, Box]]] = defaultdict(list)
    if instances is not None:
        instance_data = _read_json(instances, "instances")
        images = {**_images(instance_data, Path(instances)), **images}
        names = {c["id"]: c["name"] for c in instance_data.get("categories") or [] if isinstance(c, dict)}
        for annotation in instance_data["annotations"]:
            image = images.get(annotation.get("image_id")) if isinstance(annotation, dict) else None
            if image is None or annotation.get("iscrowd") or annotation.get("category_id") not in names:
                continue
            box = normalised_box(annotation["bbox"], image["width"], image["height"])
            boxes[image["id"]].append((names[annotation["category_id"]], box))
    return [
        CocoImage(
            f"coco-{image_id}",
            image_prefix + images[image_id]["file_name"],
            tuple(texts[image_id]),
            tuple(boxes[image_id]),
        )
        for image_id in sorted(texts, key=_id_order)
        if image_id in images
    ]


def coco_context(image: CocoImage) -> str:
    """The text the teacher gets instead of the image: the captions, then each object and its box."""
    lines = ["Captions:", *image.captions, "", "Objects (category: [x1, y1, x2, y2]):"]
    lines += [f"{name}: [{', '.join(f'{v:.3f}' for v in box)}]" for name, box in image.objects]
    if not image.objects:
        lines.append("(none annotated)")
    return "\n".join(lines)


_SHARED = (
    "You are an AI visual assistant looking at a single photograph. You receive it as text: five "
    "sentences that describe it, written by different people, and a list of the objects in it, each "
    "with a bounding box [x1, y1, x2, y2] given as fractions of the image width and height, where "
    "(0, 0) is the top left corner and (1, 1) the bottom right one.\n"
    "Write as if you were seeing the photograph yourself. Never mention the descriptions, bounding "
    "boxes, coordinates or any text you were given, and never use the token <image>. Say only what "
    "the photograph shows for certain; when something cannot be told from it, do not guess."
)
_QA_FORMAT = (
    "Reply in exactly this format, with nothing before the first line:\n"
    "Question:\n<the question>\nAnswer:\n<the answer>\n"
)

COCO_SYSTEM_PROMPTS: dict[str, str] = {
    "conversation": _SHARED + "\n\n"
    "Task: write a conversation between a person asking about the photograph and you, the "
    "assistant. Ask 3 to 5 varied questions with definite answers in the photograph: the objects "
    "and their kinds, counts, actions, where things are relative to each other. Answer each one "
    "directly, in a complete and natural sentence.\n\n" + _QA_FORMAT + "and repeat the pair for every turn.",
    "detail": _SHARED + "\n\n"
    "Task: describe the photograph in rich detail for someone who cannot see it: the scene as a "
    "whole, then the people, animals and objects in it, what they are doing, and where they are.\n\n"
    'Reply with the description only: one or two plain paragraphs, no lists, no "Question:" or "Answer:" lines.',
    "reasoning": _SHARED + "\n\n"
    "Task: ask one question about the photograph that needs reasoning beyond what is visible at a "
    "glance: why something is happening, what a person might do next, what the situation requires, "
    "or background knowledge the scene calls for. Answer it step by step, from what the photograph "
    "shows to the conclusion.\n\n" + _QA_FORMAT + "with exactly one Question and one Answer.",
}

EXAMPLE_IMAGE = CocoImage(
    "coco-example",
    "example.jpg",
    (
        "A man riding a bicycle down a city street next to a red bus.",
        "A cyclist rides beside a double decker bus on a busy road.",
        "A red bus drives past a man on a bike.",
        "A person on a bicycle in traffic near a large bus.",
        "A street scene with a bus, a bicycle and pedestrians.",
    ),
    (
        ("bus", (0.412, 0.105, 0.988, 0.842)),
        ("person", (0.153, 0.402, 0.301, 0.911)),
        ("bicycle", (0.121, 0.611, 0.335, 0.974)),
        ("person", (0.021, 0.433, 0.068, 0.702)),
    ),
)
EXAMPLE_REPLIES: dict[str, str] = {
    "conversation": "Question:\nWhat is the man on the left doing?\n"
    "Answer:\nHe is riding a bicycle along the street, next to a large red bus.\n"
    "Question:\nWhat colour is the bus?\n"
    "Answer:\nThe bus is red.\n"
    "Question:\nHow many people can be seen?\n"
    "Answer:\nTwo people: the cyclist and a pedestrian at the far left edge of the street.",
    "detail": "A busy city street with a large red double decker bus taking up most of the right side of "
    "the picture. To its left a man rides a bicycle in the same direction, close to the bus, and "
    "further left a pedestrian stands near the edge of the road.",
    "reasoning": "Question:\nWhat should the cyclist be careful about in this situation?\n"
    "Answer:\nHe is riding right beside a large bus in traffic. A bus has wide blind spots and may pull "
    "towards the kerb to stop, so he should keep a safe distance, stay visible to the driver, and be "
    "ready to brake if the bus moves towards him.",
}


def coco_messages(kind: str, image: CocoImage) -> list[dict[str, str]]:
    """System prompt, one worked example as a user/assistant pair, then this image's context."""
    if kind not in COCO_SYSTEM_PROMPTS:
        raise ValueError(f"unknown instruction kind {kind!r}; known: {list(LLM_KINDS)}")
    return [
        {"role": "system", "content": COCO_SYSTEM_PROMPTS[kind]},
        {"role": "user", "content": coco_context(EXAMPLE_IMAGE)},
        {"role": "assistant", "content": EXAMPLE_REPLIES[kind]},
        {"role": "user", "content": coco_context(image)},
    ]


def coco_prompts_markdown() -> str:
    """The COCO prompts and example as Markdown (the block in docs/instruct.md)."""
    fence = "````"
    parts = ["Example user message (the context of one image):", "", f"{fence}text", coco_context(EXAMPLE_IMAGE)]
    parts += [fence, ""]
    for kind in LLM_KINDS:
        parts += [f"#### {kind}", "", "System prompt:", "", f"{fence}text", COCO_SYSTEM_PROMPTS[kind], fence, ""]
        parts += ["Example reply:", "", f"{fence}text", EXAMPLE_REPLIES[kind], fence, ""]
    return "\n".join(parts)


def generate_coco_main(
    captions: str,
    instances: str | None,
    out_dir: str | None,
    kinds: list[str],
    limit: int | None,
    seed: int,
    base_url: str | None,
    model: str | None,
    image_prefix: str = "",
    *,
    cache_dir: str | None = None,
    refresh: bool = False,
    **options: Any,
) -> int:
    """`llavakit data instruct --source coco`: samples for the first `limit` images into
    `<out_dir or the captions' folder>/instruct_coco.jsonl`; prints the summary. `options` are
    `LLMConfig` fields. Returns 0 when every planned sample is written, 1 when some failed."""
    model = model or os.environ.get("OPENAI_MODEL")
    if not model:
        raise ConfigError("no model given: pass --model (or set $OPENAI_MODEL) to the name the endpoint serves")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    images = load_coco(captions, instances, image_prefix)[:limit]
    if not images:
        raise DataError(f"{captions}: no image has a caption")
    config = LLMConfig(model=model, base_url=base_url, **options)
    output = Path(out_dir if out_dir is not None else Path(captions).parent) / OUTPUT_NAME
    report = generate(
        images, output, config, kinds or LLM_KINDS, seed, cache_dir, refresh=refresh, messages_for=coco_messages
    )
    print(report.summary())
    return 1 if report.failed else 0


if __name__ == "__main__":
    print(coco_prompts_markdown(), end="")
