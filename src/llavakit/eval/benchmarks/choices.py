"""Reading the chosen option out of a multiple-choice reply, as each benchmark's scorer does.

- ScienceQA (LLaVA's `eval_science_qa.py`): the reply is exactly a letter; or starts "X. ";
  or says "The answer is X." exactly once. The letter must name one of the question's choices.
- MMBench (its rule-based matching, before any LLM help): punctuation `.()[],:;!*#{}` becomes
  spaces; when exactly one option letter stands as a word, and it is among the last four words
  (so a leading article "A" of a long sentence is not taken for option A), that is the choice;
  otherwise, when the reply is at most twice as long as all options together and exactly one
  option's text occurs in it (case ignored), that option.
- SEED-Bench (as LLaVA's `convert_seed_for_submission.py` compares): the reply equals the letter.

Each returns the letter, or None when the reply names no option (scored wrong).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from llavakit.eval.benchmarks.prompts import option_letters

_SCIENCEQA_SENTENCE = re.compile(r"The answer is ([A-Z]).")
_SCIENCEQA_LETTERS = ("A", "B", "C", "D", "E")
_MMBENCH_PUNCTUATION = str.maketrans(dict.fromkeys(".()[],:;!*#{}", " "))


def scienceqa_choice(reply: str, num_choices: int) -> str | None:
    """The letter a ScienceQA reply picks (see the module docstring), or None."""
    if reply in _SCIENCEQA_LETTERS:
        letter = reply
    elif len(reply) >= 3 and reply[0] in _SCIENCEQA_LETTERS and reply[1:3] == ". ":
        letter = reply[0]
    else:
        found = _SCIENCEQA_SENTENCE.findall(reply)
        letter = found[0] if len(found) == 1 else None
    return letter if letter in option_letters(num_choices) else None


def mmbench_choice(reply: str, options: Sequence[str]) -> str | None:
    """The letter an MMBench reply picks by the rule-based matching (see the module docstring), or None."""
    letters = option_letters(len(options))
    words = reply.translate(_MMBENCH_PUNCTUATION).split()
    named = [letter for letter in letters if letter in words]
    if len(named) == 1 and words.index(named[0]) > len(words) - 5:
        return named[0]
    if len(reply) > 2 * sum(len(option) for option in options):
        return None
    lowered = reply.lower()
    contained = [letter for letter, option in zip(letters, options) if option.lower() in lowered]
    return contained[0] if len(contained) == 1 else None


def seed_choice(reply: str) -> str | None:
    """The reply itself when it is one of A-D (SEED-Bench compares the reply with the letter), else None."""
    return reply if reply in ("A", "B", "C", "D") else None
