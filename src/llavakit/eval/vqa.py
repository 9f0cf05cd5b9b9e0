"""VQA answer normalisation and accuracy, as the official VQA evaluation computes them.

Source: the VQA challenge's evaluation script (GT-Vision-Lab/VQA,
`PythonEvaluationTools/vqaEvaluation/vqaEval.py`), which VQAv2's server, VizWiz and
TextVQA (via LLaVA's `m4c_evaluator.py`) all follow. A prediction is normalised by

1. newlines and tabs -> spaces, strip;
2. `process_punctuation`: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted
   when the text has it next to a space (or has a digit,digit comma anywhere), else replaced
   by a space; then every period not followed by a digit is deleted ("2.5" keeps its point);
3. `process_digit_article`: lower case, split on whitespace, number words zero..ten and
   "none" -> digits, drop the articles a / an / the, restore apostrophes of common
   contractions ("dont" -> "don't"), join with single spaces.

So "Two." == "2", "a dog" == "dog", "yes." == "yes", "Don't" == "dont".

Accuracy of one prediction against the human answers (10 in VQAv2): for each annotator,
min(#other annotators who gave the prediction / 3, 1); the mean over annotators. That is the
paper's min(#humans / 3, 1) averaged over the 10 subsets of 9 annotators. References are
compared as the annotation files store them (already normalised); like the official
script, they only get `process_punctuation`, and only when the annotators disagree.

Run `python -m pytest tests/test_eval_metrics.py` for the hand-computed cases.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Digits words of the official `manualMap` (note "none" -> "0").
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")

# The official table, entries kept as they are (including "somebody'd" -> "somebodyd"),
# so scores match the evaluation server's.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip

_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# The official pattern is "(?!<=\d)(\.)(?!\d)"; its first group is a mistyped look-behind that
# is really a look-ahead for "<=" + digit, which can never match before a ".", so the
# pattern deletes every period not followed by a digit, as this one does.
_PERIOD = re.compile(r"\.(?!\d)")
# The official call passes re.UNICODE (= 32) where `count` goes, so at most 32 periods go.
_PERIOD_COUNT = 32


def process_punctuation(text: str) -> str:
    """The official `processPunctuation`: delete or space out punctuation, drop sentence periods."""
    has_digit_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        # The test looks at the input text, the replacement acts on the running output.
        if mark + " " in text or " " + mark in text or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """The official `processDigitArticle`: lower case, number words to digits, no articles, contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES]
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """A prediction as the official evaluation compares it (whitespace, punctuation, digits, articles)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy in [0, 1]: mean over annotators i of min(#{j != i : answer_j == prediction} / 3, 1).

    With m of 10 annotators agreeing with the prediction this is 0, 0.3, 0.6, 0.9 for
    m = 0..3 and 1 from m = 4. `answers` are the human answers as the annotation file
    stores them; at least two are needed (with one, no other annotator can ever agree).
    """
    if isinstance(answers, str) or len(answers) < 2:
        raise ValueError(
            f"VQA accuracy needs the list of human answers (10 in VQAv2), got {answers!r}; "
            "for a single reference answer use exact match"
        )
    predicted = normalize_answer(prediction)
    references = list(answers)
    if len(set(references)) > 1:
        references = [process_punctuation(answer) for answer in references]
    scores = []
    for index in range(len(references)):
        agreeing = sum(1 for other, answer in enumerate(references) if other != index and answer == predicted)
        scores.append(min(1.0, agreeing / 3))
    return sum(scores) / len(scores)


def exact_match(prediction: str, answers: str | Sequence[str]) -> bool:
    """Short-answer accuracy: the normalised prediction equals a normalised reference.

    Both sides get the full VQA normalisation (`normalize_answer`), so "Two." matches "2"
    and "The red circle" matches "red circle". Several references: any one may match.
    """
    references = [answers] if isinstance(answers, str) else list(answers)
    if not references:
        raise ValueError("exact match needs at least one reference answer")
    predicted = normalize_answer(prediction)
    return any(predicted == normalize_answer(reference) for reference in references)


# ---- EvalAI's answer processing (TextVQA's evaluator, the VQAv2 / VizWiz submission files) -------------


def evalai_answer(text: str) -> str:
    """An answer as EvalAI's processor (used by TextVQA's evaluation and by LLaVA for submission files) writes it.

    The VQA normalisation (`normalize_answer`), preceded by EvalAI's word step: lower case, commas
    and question marks deleted, "'s" split off as its own word (" 's").
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalize_answer(text)


def textvqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """TextVQA accuracy: VQA accuracy with both the prediction and every human answer EvalAI-processed.

    Mean over annotators i of min(#{j != i : answer_j == prediction} / 3, 1), as TextVQA's
    evaluator (and LLaVA's `m4c_evaluator.py`) computes it.
    """
    if isinstance(answers, str) or len(answers) < 2:
        raise ValueError(f"TextVQA accuracy needs the list of human answers, got {answers!r}")
    predicted = evalai_answer(prediction)
    references = [evalai_answer(answer) for answer in answers]
    scores = []
    for index in range(len(references)):
        agreeing = sum(1 for other, answer in enumerate(references) if other != index and answer == predicted)
        scores.append(min(1.0, agreeing / 3))
    return sum(scores) / len(scores)
