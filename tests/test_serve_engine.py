"""The serving engine without HTTP: batched greedy answers equal `model.generate`, requests join and leave
between steps, streamed text adds up to the answer, sampling is per request.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_serve_engine.py
"""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import DynamicCache

from conftest import randomized
from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.serve.answer_text import AnswerText
from llavakit.serve.engine import BatchingEngine, GenerationEvent, QueueFull, Submission
from llavakit.serve.kv_batch import PaddedKVBatch
from llavakit.serve.metrics import ServerMetrics
from llavakit.serve.sampling import SamplingParams, TokenChooser, top_p_filter
from llavakit.tiny import tiny_llava_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTIONS = (
    ("<image>\nWhat is it?", 1),
    ("Hello there, how are you today?", 0),
    ("<image>\n<image>\nCompare the two images and describe the differences.", 2),
    ("Describe this picture briefly.", 0),
)


@pytest.fixture(scope="module")
def tiny(tiny_tokenizer) -> tuple[LlavaKitForCausalLM, LlavaKitProcessor]:
    config = tiny_llava_config(tiny_tokenizer.convert_tokens_to_ids("<image>"))
    model = randomized(LlavaKitForCausalLM(config), seed=3)
    return model, LlavaKitProcessor.from_model_config(tiny_tokenizer, config, "vicuna_v1")


@pytest.fixture(scope="module")
def prompts(tiny) -> list:
    """Processed prompts of different lengths, with none, one and two images."""
    _, processor = tiny
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 56, 3), dtype=np.uint8)) for i in range(2)]
    encoded = []
    for question, images in QUESTIONS:
        prompt = processor.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
        encoded.append(processor(text=prompt, images=pictures[:images] or None, return_tensors="pt"))
    return encoded


def generate_ids(model, processor, inputs, max_new_tokens: int) -> list[int]:
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=processor.stop_token_ids,
            pad_token_id=processor.tokenizer.pad_token_id,
        )
    return output[0, inputs["input_ids"].shape[1] :].tolist()


def generate_text(model, processor, inputs, max_new_tokens: int) -> str:
    ids = generate_ids(model, processor, inputs, max_new_tokens)
    return processor.tokenizer.decode(ids, skip_special_tokens=True).strip()


# ---- the padded key/value batch ------------------------------------------------------------------


def test_rows_joining_and_leaving_a_padded_batch_decode_as_generate_does(tiny, prompts):
    """Prefill alone, join a batch of other lengths mid-way, lose neighbours: the greedy tokens do not change."""
    model, processor = tiny
    steps = 12
    expected = [generate_ids(model, processor, inputs, steps) for inputs in prompts]
    suppressed = model.generation_config.suppress_tokens
    batch, tokens, last = PaddedKVBatch(), [[] for _ in prompts], []
    rows = []

    def choose(logits):
        logits = logits.float().clone()
        logits[:, suppressed] = float("-inf")
        return logits.argmax(-1).tolist()

    def step():
        nonlocal last
        mask, positions = batch.step_inputs()
        ids = torch.tensor(last)[:, None]
        with torch.inference_mode():
            output = model(
                input_ids=ids, attention_mask=mask, position_ids=positions, cache=batch.cache, use_cache=True
            )
        batch.stepped(mask)
        last = choose(output.logits[:, -1])
        for row, token in zip(rows, last):
            tokens[row].append(token)

    for index, inputs in enumerate(prompts):
        cache = DynamicCache()
        with torch.inference_mode():
            logits = model(**inputs, cache=cache, use_cache=True).logits[:, -1]
        first = choose(logits)[0]
        tokens[index].append(first)
        batch.add(cache)
        rows.append(index)
        last = [*last, first]
        for _ in range(index + 1):
            step()
    width = batch.width
    batch.keep([1, 3])  # the rows of prompts 1 and 3 stay; the padding only prompt 2 needed goes
    rows, last = [1, 3], [last[1], last[3]]
    assert batch.width < width and int(batch.mask[:, 0].max()) == 1
    while min(len(tokens[row]) for row in rows) < steps:
        step()
    for index in range(len(prompts)):
        assert tokens[index][: len(expected[index])] == expected[index][: len(tokens[index])], index
    assert all(len(tokens[index]) >= steps for index in rows)


# ---- the engine ----------------------------------------------------------------------------------


def run_engine(model, processor, requests, max_batch_size: int = 8, max_queue: int = 16) -> list[list]:
    """Submit all `requests` (inputs, params) at once; each one's events, in order."""
    engine = BatchingEngine(
        model, processor.tokenizer, processor.stop_token_ids, ServerMetrics(), max_batch_size, max_queue
    )
    inboxes = [queue.Queue() for _ in requests]
    for (inputs, params), inbox in zip(requests, inboxes):
        engine.submit(Submission(inputs, int(inputs["input_ids"].shape[1]), params, inbox.put))
    engine.start()
    events = []
    for inbox in inboxes:
        received = [inbox.get(timeout=60)]
        while received[-1].finish_reason is None and received[-1].error is None:
            received.append(inbox.get(timeout=60))
        events.append(received)
    engine.close()
    return events


def answer(events: list[GenerationEvent]) -> str:
    return "".join(event.text for event in events)


@pytest.mark.parametrize("max_batch_size", [1, 3, 8])
def test_batched_greedy_answers_equal_generate(tiny, prompts, max_batch_size):
    model, processor = tiny
    budgets = [20, 7, 15, 30]  # rows finish at different steps, so others run on in a smaller batch
    requests = [(inputs, SamplingParams(max_tokens=budget)) for inputs, budget in zip(prompts, budgets)]
    results = run_engine(model, processor, requests, max_batch_size=max_batch_size)
    for inputs, budget, events in zip(prompts, budgets, results):
        assert answer(events) == generate_text(model, processor, inputs, budget)
        generated = generate_ids(model, processor, inputs, budget)
        assert events[-1].completion_tokens == len(generated)
        assert events[-1].finish_reason == ("stop" if generated[-1] in processor.stop_token_ids else "length")


def test_the_engine_stops_at_the_end_token_and_counts_it(tiny, prompts):
    """A model whose first choice is the end token answers nothing, with one completion token."""
    model, processor = tiny
    eos = processor.tokenizer.eos_token_id
    head = model.get_output_embeddings().weight
    saved = head[eos].clone()
    with torch.no_grad():
        head[eos] = head[eos] + 1000.0 * model(**prompts[1], output_hidden_states=True).hidden_states[-1][0, -1]
    try:
        [events] = run_engine(model, processor, [(prompts[1], SamplingParams(max_tokens=5))])
    finally:
        with torch.no_grad():
            head[eos] = saved
    assert (answer(events), events[-1].finish_reason, events[-1].completion_tokens) == ("", "stop", 1)


def test_a_seeded_sample_does_not_depend_on_its_batch(tiny, prompts):
    model, processor = tiny
    sampled = (prompts[0], SamplingParams(max_tokens=12, temperature=0.9, top_p=0.9, seed=7))
    alone = run_engine(model, processor, [sampled])[0]
    crowded = run_engine(model, processor, [(p, SamplingParams(max_tokens=9)) for p in prompts[1:]] + [sampled])[-1]
    assert answer(alone) == answer(crowded)
    other_seed = (prompts[0], SamplingParams(max_tokens=12, temperature=0.9, top_p=0.9, seed=8))
    assert answer(run_engine(model, processor, [other_seed])[0]) != answer(alone)


def test_a_full_queue_refuses_and_a_cancelled_request_leaves(tiny, prompts):
    model, processor = tiny
    engine = BatchingEngine(model, processor.tokenizer, processor.stop_token_ids, ServerMetrics(), 1, 2)
    submissions = [Submission(prompts[1], 1, SamplingParams(max_tokens=40), lambda event: None) for _ in range(2)]
    for submission in submissions:
        engine.submit(submission)
    with pytest.raises(QueueFull, match="2 requests are waiting"):
        engine.submit(Submission(prompts[1], 1, SamplingParams(max_tokens=5), lambda event: None))
    done = threading.Event()
    submissions[0].cancelled.set()
    submissions[1].on_event = lambda event: done.set() if event.finish_reason else None
    engine.start()
    assert done.wait(60)
    engine.close()
    assert engine.running == 0 and engine.waiting == 0


def test_a_model_failure_is_an_error_event_and_the_engine_goes_on(tiny, prompts):
    model, processor = tiny
    broken = {key: value for key, value in prompts[0].items() if key != "pixel_values"}  # <image> without pixels
    results = run_engine(model, processor, [(broken, SamplingParams(max_tokens=3)), (prompts[1], SamplingParams(3))])
    assert results[0][-1].error == "the model failed on this request"
    assert answer(results[1]) == generate_text(model, processor, prompts[1], 3)


def test_an_unexpected_failure_ends_its_requests_and_the_engine_goes_on(tiny, prompts, caplog):
    model, processor = tiny
    engine = BatchingEngine(model, processor.tokenizer, processor.stop_token_ids, ServerMetrics())
    engine.start()
    try:
        inbox = queue.Queue()
        broken = SamplingParams(max_tokens=3, stop=(None,))  # fails while the text is decoded, after the model ran
        engine.submit(Submission(prompts[1], 1, broken, inbox.put))
        assert inbox.get(timeout=60).error == "the server failed while generating"
        engine.submit(Submission(prompts[1], 1, SamplingParams(max_tokens=3), inbox.put))
        events = [inbox.get(timeout=60)]
        while events[-1].finish_reason is None:
            events.append(inbox.get(timeout=60))
    finally:
        engine.close()
    assert answer(events) == generate_text(model, processor, prompts[1], 3)
    assert "the generation thread failed" in caplog.text


# ---- streamed text -------------------------------------------------------------------------------


def stream(tokenizer, text: str, stop=()) -> tuple[list[str], str]:
    answer_text = AnswerText(tokenizer, stop)
    pieces = []
    for token in tokenizer.encode(text, add_special_tokens=False):
        pieces.append(answer_text.add(token))
        if answer_text.stopped:
            break
    pieces.append(answer_text.finish())
    return pieces, answer_text.text


@pytest.mark.parametrize(
    ("text", "stop", "final"),
    [
        ("  The square is blue.  ", (), "The square is blue."),
        ("A red circle. USER: more", ("USER:",), "A red circle."),
        ("A red circle. USE", ("USER:",), "A red circle. USE"),
        ("caf\u00e9 \u2014 \U0001f600 done", (), "caf\u00e9 \u2014 \U0001f600 done"),
        ("one two three", ("two", "one"), ""),
    ],
)
def test_streamed_pieces_add_up_to_the_answer(tiny_tokenizer, text, stop, final):
    pieces, whole = stream(tiny_tokenizer, text, stop)
    assert whole == final and "".join(pieces) == final
    assert all("\ufffd" not in piece for piece in pieces)


def test_text_that_may_begin_a_stop_sequence_waits(tiny_tokenizer):
    answer_text = AnswerText(tiny_tokenizer, ("USER:",))
    sent = "".join(answer_text.add(token) for token in tiny_tokenizer.encode("Yes. US", add_special_tokens=False))
    assert sent == "Yes." and not answer_text.stopped


# ---- sampling ------------------------------------------------------------------------------------


def test_top_p_keeps_the_smallest_set_that_reaches_p():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    kept = top_p_filter(logits, 0.7).isfinite().tolist()
    assert kept == [True, True, False, False]
    assert top_p_filter(logits, 0.1).isfinite().tolist() == [True, False, False, False]
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_suppressed_tokens_are_never_chosen():
    chooser = TokenChooser([1])
    logits = torch.tensor([[0.0, 9.0, 1.0], [0.0, 9.0, -1.0]])
    generator = torch.Generator().manual_seed(0)
    params = [SamplingParams(max_tokens=1), SamplingParams(max_tokens=1, temperature=5.0, seed=0)]
    for _ in range(20):
        chosen = chooser.choose(logits.clone(), params, [None, generator])
        assert chosen[0] == 2 and chosen[1] != 1
