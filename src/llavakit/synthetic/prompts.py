"""What the text-only teacher sees and must write when an LLM generates instruction data.

Why: LLaVA turned images into text (captions + boxes) so that a text-only model could write
conversations, detailed descriptions and reasoning questions about them. This module holds
that half of the recipe for llavakit's synthetic world: the symbolic context of a scene,
one system prompt and two few-shot examples per kind (sent as alternating user/assistant
messages), and the parser that turns a reply back into (question, answer) turns. The
teacher sees captions and boxes but must answer as if it were looking at the image.

    from llavakit.synthetic.prompts import build_messages, parse_reply
    messages = build_messages("conversation", scene)   # -> any chat-completions endpoint
    turns = parse_reply("conversation", reply_text)     # ValueError says what is wrong

`python -m llavakit.synthetic.prompts` prints the prompts and examples as Markdown
(the block in docs/instruct.md is exactly that output, and a test keeps it so).
"""

from __future__ import annotations

import re

from llavakit.synthetic.instruct import normalized_box
from llavakit.synthetic.world import (
    Scene,
    SceneObject,
    SceneWord,
    caption,
    describe,
    position_name,
)

LLM_KINDS: tuple[str, ...] = ("conversation", "detail", "reasoning")

_SHARED = (
    "You are a visual assistant looking at one image of simple flat shapes (circles, squares, "
    "triangles, diamonds) on a plain background, sometimes with a short printed word. You receive "
    "the image as text: captions that describe it, and a list of its objects, each with a bounding "
    "box [x1, y1, x2, y2] given as fractions of the image width and height, where (0, 0) is the top "
    "left corner and (1, 1) the bottom right one. Shapes listed later are drawn on top of earlier ones.\n"
    "Write as if you could see the image yourself. Never mention captions, bounding boxes, "
    "coordinates, lists or any other text you were given, and never use the token <image>. "
    "Say only what the image shows for certain; do not guess at anything it does not show."
)
_QA_FORMAT = (
    "Reply in exactly this format, with nothing before the first line:\n"
    "Question:\n<the question>\n"
    "Answer:\n<the answer>\n"
)

SYSTEM_PROMPTS: dict[str, str] = {
    "conversation": _SHARED + "\n\n"
    "Task: write a conversation between a person who asks about the image and you, the assistant "
    "who answers. Ask 3 to 5 questions with varied wording about what can be seen: which shapes "
    "there are, their colours and sizes, how many there are, where they are, which ones overlap, "
    "and any written word. Every question must have a definite answer in the image; answer each "
    "one directly and in a complete sentence.\n\n" + _QA_FORMAT + "and repeat the Question/Answer pair for every turn.",
    "detail": _SHARED + "\n\n"
    "Task: describe the image in rich detail for someone who cannot see it. Start with an overview, "
    "then mention the background, every shape with its size, colour and place in the image, which "
    "shapes overlap and which of them is in front, and any word written in the image.\n\n"
    "Reply with the description only: one or two plain paragraphs, no headings, no lists, "
    'no "Question:" or "Answer:" lines.',
    "reasoning": _SHARED + "\n\n"
    "Task: ask one question about the image that needs reasoning, not just reading off a single "
    "fact: comparing counts, relations between shapes (left of, above, in front of, closest to), "
    "or what would change if some shapes were moved, added or removed. The question must have "
    "one definite answer. Answer it step by step: say what you see that matters, then how it "
    "leads to the answer.\n\n" + _QA_FORMAT + "with exactly one Question and one Answer.",
}

RETRY_MESSAGE = (
    "Your reply could not be used: {reason}. Write a new reply about the same image that follows "
    "the required format exactly."
)

# Phrases that show a reply leaned on the text it was given instead of "seeing" the image.
FORBIDDEN_PHRASES: tuple[str, ...] = ("caption", "bounding box", "coordinates", "<image>")
MIN_TURNS: dict[str, int] = {"conversation": 2, "detail": 1, "reasoning": 1}
MAX_TURNS: dict[str, int] = {"conversation": 8, "detail": 1, "reasoning": 1}


# --- the symbolic context -----------------------------------------------------------------


def build_context(scene: Scene) -> str:
    """The text a teacher gets instead of the image: two captions, then every object and word
    with its box normalized to [0, 1] (LLaVA's representation, in llavakit's world)."""
    first = f"{caption(scene)} on a {scene.background} background."
    lines = [
        "Captions:",
        first[:1].upper() + first[1:],
        describe(scene),
        "",
        "Objects (drawing order, later ones in front):",
    ]
    for i, obj in enumerate(scene.objects):
        lines.append(f"{obj.size} {obj.category}: {normalized_box(scene, i)}")
    if scene.word is not None:
        x, y, w, h = scene.word.box
        box = (x / scene.width, y / scene.height, (x + w) / scene.width, (y + h) / scene.height)
        lines.append(
            f'word "{scene.word.text}" ({scene.word.colour} text): ' + "[" + ", ".join(f"{v:.2f}" for v in box) + "]"
        )
    return "\n".join(lines)


# --- few-shot examples --------------------------------------------------------------------


def _object(kind: str, colour: str, size: str, box: tuple[int, int, int, int], side: int = 64) -> SceneObject:
    x, y, w, h = box
    return SceneObject(kind, colour, size, box, position_name(x + w / 2, y + h / 2, side, side))


# Two hand-made 64x64 scenes (sizes in pixels as the default WorldConfig draws them: 11/15/19).
EXAMPLE_SCENES: tuple[Scene, ...] = (
    Scene(
        64,
        64,
        "light gray",
        (
            _object("circle", "red", "large", (3, 4, 19, 19)),
            _object("triangle", "red", "small", (46, 6, 11, 11)),
            _object("square", "blue", "medium", (42, 42, 15, 15)),
        ),
        SceneWord("SUN", (6, 50, 18, 6), position_name(15, 53, 64, 64), "black"),
    ),
    Scene(
        64,
        64,
        "white",
        (
            _object("diamond", "green", "medium", (14, 18, 15, 15)),
            _object("circle", "purple", "large", (22, 22, 19, 19)),
            _object("square", "yellow", "small", (47, 47, 11, 11)),
            _object("square", "yellow", "small", (47, 6, 11, 11)),
        ),
    ),
)

EXAMPLE_REPLIES: dict[str, tuple[str, ...]] = {
    "conversation": (
        "Question:\nWhat shapes can you see in this picture?\n"
        "Answer:\nThere are three shapes: a large red circle, a small red triangle and a medium-sized blue square.\n"
        "Question:\nWhere is the blue square?\n"
        "Answer:\nThe blue square is in the bottom right corner of the image.\n"
        "Question:\nIs any text written in the image?\n"
        'Answer:\nYes, the word "SUN" is written in black letters near the bottom left.\n'
        "Question:\nHow many red objects are there?\n"
        "Answer:\nThere are two red objects: the big circle at the top left and the small triangle at the top right.",
        "Question:\nHow many squares are in the image?\n"
        "Answer:\nThere are two squares, both small and yellow.\n"
        "Question:\nDo any of the shapes overlap?\n"
        "Answer:\nYes. The large purple circle overlaps the green diamond and covers part of it.\n"
        "Question:\nWhat colour is the background?\n"
        "Answer:\nThe background is plain white.",
    ),
    "detail": (
        "The image shows three flat shapes and a short word on a light gray background. A large red circle "
        "sits in the top left corner, and a small red triangle is in the top right corner, pointing upward. "
        "A medium-sized blue square is in the bottom right corner. None of the shapes touch each other. "
        'Near the bottom left, the word "SUN" is printed in small black capital letters.',
        "This is a simple picture of four shapes on a white background. In the middle of the image a "
        "medium green diamond and a large purple circle overlap: the circle is in front and hides part "
        "of the diamond's lower right side. On the right side there are two small yellow squares of the "
        "same size, one near the top right corner and one near the bottom right corner. There is no text "
        "in the image.",
    ),
    "reasoning": (
        "Question:\nIf the blue square were removed, what would all the remaining shapes have in common?\n"
        "Answer:\nBesides the blue square, the image has a large circle and a small triangle, and both of them "
        'are red. The word "SUN" is text, not a shape. So after removing the blue square, every remaining '
        "shape would be red.",
        "Question:\nWhich shape is partly hidden, and what is hiding it?\n"
        "Answer:\nIn the middle of the image the green diamond and the purple circle overlap. The purple circle "
        "is drawn over the diamond, so part of the diamond cannot be seen. The green diamond is the partly "
        "hidden shape, and the purple circle is hiding it.",
    ),
}


def build_messages(kind: str, scene: Scene) -> list[dict[str, str]]:
    """System prompt, the few-shot examples as user/assistant pairs, then this scene's context."""
    if kind not in SYSTEM_PROMPTS:
        raise ValueError(f"unknown instruction kind {kind!r}; known: {list(LLM_KINDS)}")
    messages = [{"role": "system", "content": SYSTEM_PROMPTS[kind]}]
    for example, reply in zip(EXAMPLE_SCENES, EXAMPLE_REPLIES[kind]):
        messages += [{"role": "user", "content": build_context(example)}, {"role": "assistant", "content": reply}]
    messages.append({"role": "user", "content": build_context(scene)})
    return messages


def retry_messages(messages: list[dict[str, str]], reply: str, reason: str) -> list[dict[str, str]]:
    """The conversation so far plus the unusable reply and a request to fix it (a new request,
    so a cache or a deterministic server does not hand back the same reply)."""
    return messages + [
        {"role": "assistant", "content": reply},
        {"role": "user", "content": RETRY_MESSAGE.format(reason=reason)},
    ]


# --- parsing replies ----------------------------------------------------------------------

# "Question:" / "**Answer:**" at the start of a line; the text may start on the same line.
_MARKER = re.compile(r"^[ \t]*\**[ \t]*(Question|Answer)[ \t]*\**[ \t]*:[ \t]*\**[ \t]*", re.MULTILINE | re.IGNORECASE)


def _check_text(text: str) -> None:
    lowered = text.lower()
    for phrase in FORBIDDEN_PHRASES:
        if phrase in lowered:
            raise ValueError(f"the reply mentions {phrase!r}, which the image itself does not show")


def parse_reply(kind: str, reply: str | None) -> list[tuple[str, str]]:
    """(question, answer) turns from a teacher's reply; ValueError with the reason if unusable.

    `detail` replies are one description (the question is added by the caller); the others
    are Question:/Answer: blocks, strictly alternating, with no text before the first one.
    """
    if kind not in SYSTEM_PROMPTS:
        raise ValueError(f"unknown instruction kind {kind!r}; known: {list(LLM_KINDS)}")
    text = (reply or "").strip()
    if not text:
        raise ValueError("the reply is empty")
    _check_text(text)
    markers = list(_MARKER.finditer(text))
    if kind == "detail":
        if markers:
            raise ValueError("a detailed description must not contain Question:/Answer: lines")
        return [("", text)]
    if not markers:
        raise ValueError("no 'Question:' / 'Answer:' blocks found")
    if text[: markers[0].start()].strip():
        raise ValueError("there is text before the first 'Question:'")
    blocks = []
    for marker, following in zip(markers, markers[1:] + [None]):
        body = text[marker.end() : following.start() if following else len(text)].strip().strip("*").strip()
        if not body:
            raise ValueError(f"an empty {marker.group(1).capitalize()} block")
        blocks.append((marker.group(1).lower(), body))
    roles = [role for role, _ in blocks]
    if roles != ["question", "answer"] * (len(roles) // 2) or len(roles) % 2:
        raise ValueError(
            "Question: and Answer: blocks must alternate, starting with a Question and ending with an Answer"
        )
    turns = [(blocks[k][1], blocks[k + 1][1]) for k in range(0, len(blocks), 2)]
    if not MIN_TURNS[kind] <= len(turns) <= MAX_TURNS[kind]:
        raise ValueError(
            f"{len(turns)} Question/Answer pairs; a {kind} reply needs {MIN_TURNS[kind]} to {MAX_TURNS[kind]}"
        )
    return turns


# --- documentation ------------------------------------------------------------------------


def prompts_markdown() -> str:
    """The system prompts and few-shot examples as Markdown (the block in docs/instruct.md)."""
    fence = "````"
    parts = []
    for kind in LLM_KINDS:
        parts += [f"### {kind}", "", "System prompt:", "", f"{fence}text", SYSTEM_PROMPTS[kind], fence, ""]
        for n, (scene, reply) in enumerate(zip(EXAMPLE_SCENES, EXAMPLE_REPLIES[kind]), 1):
            parts += [
                f"Example {n}, user:",
                "",
                f"{fence}text",
                build_context(scene),
                fence,
                "",
                f"Example {n}, assistant:",
                "",
                f"{fence}text",
                reply,
                fence,
                "",
            ]
    parts += [
        "### Retry after an unusable reply",
        "",
        "User (after the unusable reply as the assistant's turn):",
        "",
        f"{fence}text",
        RETRY_MESSAGE,
        fence,
        "",
    ]
    return "\n".join(parts)


if __name__ == "__main__":
    print(prompts_markdown(), end="")
