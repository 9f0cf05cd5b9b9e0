"""The response-format lines LLaVA-1.5 evaluates with, and multiple-choice option blocks.

LLaVA-1.5 appends one instruction to each benchmark question so that short-answer and
multiple-choice replies come in a form the official scorers parse (docs/evaluation.md lists
which task uses which). Open-ended questions (LLaVA-Bench, MM-Vet) are asked as written.
"""

from __future__ import annotations

from collections.abc import Sequence
from string import ascii_uppercase

SHORT_ANSWER = "Answer the question using a single word or phrase."
UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."
OCR_PREFIX = "Reference OCR token: "


def short_answer(question: str) -> str:
    """A short-answer VQA prompt: the question, then the single-word-or-phrase instruction."""
    return f"{question}\n{SHORT_ANSWER}"


def option_letters(count: int) -> list[str]:
    """ "A", "B", ... for `count` options."""
    return list(ascii_uppercase[:count])


def multiple_choice(question: str, options: Sequence[str], context: str | None = None) -> str:
    """A multiple-choice prompt: optional context line(s), the question, "A. ..." per option, the letter instruction."""
    lines = [context] if context else []
    lines.append(question)
    lines += [f"{letter}. {option}" for letter, option in zip(option_letters(len(options)), options)]
    lines.append(OPTION_LETTER)
    return "\n".join(lines)


def question_line(prompt: str) -> str:
    """The question of a prompt written this way (or by LLaVA's tools): its first line that is not an
    image placeholder or OCR reference, lower-cased; how answers made elsewhere are matched by text."""
    lines = [line.strip() for line in prompt.replace("<image>", "").splitlines()]
    lines = [line for line in lines if line and not line.startswith(OCR_PREFIX.strip())]
    return lines[0].lower() if lines else ""
