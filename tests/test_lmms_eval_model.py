"""llavakit's lmms-eval model through lmms-eval's own model API, offline, on a tiny checkpoint: greedy answers
equal `llavakit eval`'s for the same prompts, stop strings cut, log-likelihoods equal the model's own loss.

lmms-eval is an optional extra (`pip install 'llavakit[lmms-eval]'`); without it this module is skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("lmms_eval")

from lmms_eval.api.instance import Instance
from lmms_eval.models import get_model, list_available_models

from llavakit.errors import ConfigError, DataError
from llavakit.eval.benchmark_run import answer_questions
from llavakit.eval.benchmarks.base import Question
from llavakit.eval.lmms_eval_model import (
    Decoding,
    LlavaKitLmms,
    cut_at_stops,
    default_device,
    manifest,
    register,
)
from llavakit.model.checkpoint import load_checkpoint
from llavakit.processing.processor import LlavaKitProcessor

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASK, SPLIT = "synthetic", "test"
QUESTIONS = [
    ("What colour is the shape?", 0),
    ("Is there a red square in the image?\nAnswer the question using a single word or phrase.", 1),
    ("Describe the picture.", 2),
    ("What is two plus two?", None),  # text only
    ("Which side is the circle on?", 0),
]


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for index, colour in enumerate([(220, 30, 30), (30, 200, 30), (30, 30, 220)]):
        Image.new("RGB", (24 + 8 * index, 20 + 4 * index), colour).save(folder / f"{index}.png")
        paths.append(folder / f"{index}.png")
    return paths


@pytest.fixture(scope="module")
def lmm(checkpoint):
    """The model as lmms-eval makes it: by name from its registry, with `--model_args` and `--batch_size`."""
    if "llavakit" not in list_available_models():  # an install without the entry point
        register()
    model_class = get_model("llavakit")
    assert model_class is LlavaKitLmms and model_class.is_simple
    return model_class.create_from_arg_string(f"pretrained={checkpoint},device=cpu", {"batch_size": "2"})


def doc_to_visual(doc: dict) -> list:
    return [Image.open(doc["image"])] if doc["image"] is not None else []


def request(context: str, doc_id: int, kind: str = "generate_until", target: object = None, **generation) -> Instance:
    """A request as lmms-eval's simple-model tasks build them."""
    second = {"max_new_tokens": 4, "temperature": 0, **generation} if kind == "generate_until" else target
    return Instance(
        request_type=kind,
        arguments=(context, second, doc_to_visual, doc_id, TASK, SPLIT),
        idx=0,
        metadata={"task": TASK, "doc_id": doc_id, "repeats": 1},
    )


def with_docs(lmm, images: list[Path]):
    lmm.task_dict = {TASK: {SPLIT: [{"image": images[i] if i is not None else None} for _, i in QUESTIONS]}}
    return lmm


def test_greedy_answers_equal_llavakit_evals(lmm, checkpoint, images):
    lmm = with_docs(lmm, images)
    answers = lmm.generate_until([request(text, doc_id) for doc_id, (text, _) in enumerate(QUESTIONS)])

    model, processor = load_checkpoint(checkpoint, LlavaKitProcessor, "cpu", torch.float32)
    questions = [
        Question(str(doc_id), doc_id, text, images[image] if image is not None else None)
        for doc_id, (text, image) in enumerate(QUESTIONS)
    ]
    own = answer_questions(model, processor, questions, batch_size=1, max_new_tokens=4, progress=False)
    assert answers == [own.predictions[str(doc_id)] for doc_id in range(len(QUESTIONS))]
    assert any(answers)  # the tiny random model says something

    # a task's stop strings cut the answer; other settings group into their own batches
    first = answers[0]
    stop = first.strip()[-1:] or "x"
    cut = lmm.generate_until([request(QUESTIONS[0][0], 0, until=[stop]), request(QUESTIONS[1][0], 1, until="\n\n")])
    assert cut == [cut_at_stops(first, [stop]), answers[1]]


def test_loglikelihood_equals_the_models_loss(lmm, checkpoint, images):
    lmm = with_docs(lmm, images)
    context = QUESTIONS[1][0]
    scores = lmm.loglikelihood([request(context, 1, "loglikelihood", target) for target in ("yes", "no")])
    assert all(isinstance(greedy, bool) for _, greedy in scores)

    model, processor = load_checkpoint(checkpoint, LlavaKitProcessor, "cpu", torch.float32)
    prompt = processor.apply_chat_template([{"role": "user", "content": f"<image>\n{context}"}])
    for (logprob, _), answer in zip(scores, (" yes", " no")):  # the template writes "ASSISTANT: yes</s>"
        count = len(processor.tokenizer(prompt + answer)["input_ids"]) - len(processor.tokenizer(prompt)["input_ids"])
        inputs = processor(text=[prompt + answer], images=[[Image.open(images[1])]], return_tensors="pt")
        labels = torch.full_like(inputs["input_ids"], -100)
        labels[:, -count:] = inputs["input_ids"][:, -count:]
        with torch.no_grad():
            loss = model(**inputs, labels=labels).loss
        assert logprob == pytest.approx(-loss.item() * count, rel=1e-4)


def test_settings_registration_and_refusals(lmm, checkpoint, images):
    assert manifest().simple_class_path == "llavakit.eval.lmms_eval_model.LlavaKitLmms"
    assert default_device(None, None, None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert default_device("cpu", None, None) == "cpu" and default_device(None, "auto", None) is None
    task = {"max_new_tokens": 16, "temperature": 0.2, "top_p": 0.9, "until": "\n\n", "do_sample": True}
    assert Decoding.from_task(task, 1024) == Decoding(16, 0.2, 0.9, 1, ("\n\n",))
    assert Decoding.from_task({}, 1024).greedy and not Decoding.from_task(task, 1024).greedy
    with pytest.raises(ConfigError, match="batch_size must be a whole number for llavakit, got 'auto'"):
        get_model("llavakit").create_from_arg_string(f"pretrained={checkpoint}", {"batch_size": "auto"})

    lmm = with_docs(lmm, images)
    lmm.task_dict[TASK][SPLIT][0] = {"image": "clip.mp4"}
    video = Instance(
        request_type="generate_until",
        arguments=("What happens?", {}, lambda doc: [doc["image"]], 0, TASK, SPLIT),
        idx=0,
        metadata={"task": TASK, "doc_id": 0, "repeats": 1},
    )
    with pytest.raises(DataError, match="document 0 gives a str visual; the llavakit model takes images only"):
        lmm.generate_until([video])
    with pytest.raises(NotImplementedError, match="multi-round tasks are not supported"):
        lmm.generate_until_multi_round([video])
