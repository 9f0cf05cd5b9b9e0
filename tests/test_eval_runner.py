"""The evaluation runner: batching with left padding, files, metrics, baselines, bad images, the command.

A tiny random LLaVA checks that batched generation equals one-by-one generation; a stub
model that answers from each image's colour gives known predictions, so every metric the
runner reports can be compared with hand-computed values.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from conftest import force_next_token
from llavakit.cli import main
from llavakit.errors import OutputPathError
from llavakit.eval.baselines import baselines, chance_accuracy, majority_accuracy
from llavakit.eval.metrics import task_metrics
from llavakit.eval.questions import (
    infer_task,
    load_question_set,
    read_questions,
    set_name,
)
from llavakit.eval.report import result_table, results_markdown, results_table
from llavakit.eval.runner import evaluate, evaluate_files, generate_answers, question_prompt
from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.images import CLIP_MEAN, CLIP_STD
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.synthetic.instruct import write_instruct_files
from llavakit.synthetic.world import write_world
from llavakit.tiny import tiny_llava_config

COLOURS = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 200, 60), "yellow": (230, 220, 40)}


@pytest.fixture(scope="module")
def tiny(tiny_tokenizer):
    config = tiny_llava_config(image_token_id=tiny_tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = LlavaKitForCausalLM(config).eval()
    processor = LlavaKitProcessor.from_model_config(tiny_tokenizer, config, template="vicuna_v1")
    return model, processor


@pytest.fixture
def image_folder(tmp_path):
    """Solid-colour images of different shapes (pad mode centres them), and random-noise ones."""
    folder = tmp_path / "images"
    folder.mkdir()
    for index, (name, rgb) in enumerate(COLOURS.items()):
        Image.new("RGB", (20 + 6 * index, 24), rgb).save(folder / f"{name}.png")
    for seed in range(3):
        pixels = np.random.default_rng(seed).integers(0, 255, (18 + 5 * seed, 26, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"noise{seed}.png")
    return folder


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


class ColourOracle(torch.nn.Module):
    """Replies by the colour of each image's centre pixel; fails unless every prompt ends in the last column."""

    def __init__(self, tokenizer, replies: dict[str, str]):
        super().__init__()
        self.tokenizer, self.replies = tokenizer, replies
        self.batch_sizes: list[int] = []

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def generate(self, input_ids, attention_mask, pixel_values, eos_token_id, pad_token_id, **kwargs):
        assert bool(attention_mask[:, -1].all()), "prompts must be left-padded"
        assert kwargs["do_sample"] is False and kwargs["num_beams"] == 1
        self.batch_sizes.append(input_ids.shape[0])
        mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
        size = pixel_values.shape[-1]
        centre = ((pixel_values * std + mean) * 255)[:, :, size // 2, size // 2]
        rows = []
        for rgb in centre.tolist():
            name = min(COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLOURS[c], rgb)))
            rows.append(self.tokenizer.encode(self.replies[name], add_special_tokens=False) + [eos_token_id[0]])
        width = max(len(row) for row in rows)
        new = torch.tensor([row + [pad_token_id] * (width - len(row)) for row in rows])
        return torch.cat([input_ids, new], dim=1)


REPLIES = {"red": "Yes, there is.", "blue": "No, there is not.", "green": "Two.", "yellow": "There are 3 circles."}


# ---- generation ------------------------------------------------------------------------------


def test_batched_left_padded_generation_equals_one_by_one(tiny, image_folder):
    model, processor = tiny
    questions = [
        {"id": f"q{i}", "image": f"noise{i % 3}.png", "question": text, "answer": "x"}
        for i, text in enumerate(
            [
                "What colour is the circle?",
                "How many red squares are there in the image? Answer the question using a single word or phrase.",
                "Is there a dog?",
                "Describe the picture in detail, please, and say where each shape is.",
                "Where is the triangle?",
            ]
        )
    ]
    lengths = {
        len(processor(question_prompt(processor, q), images=[Image.new("RGB", (8, 8))])["input_ids"][0])
        for q in questions
    }
    assert len(lengths) > 2  # the batch really needs padding
    side = processor.tokenizer.padding_side
    one_by_one = evaluate(model, processor, questions, image_folder, batch_size=1, max_new_tokens=8, progress=False)
    batched = evaluate(model, processor, questions, image_folder, batch_size=5, max_new_tokens=8, progress=False)
    uneven = evaluate(model, processor, questions, image_folder, batch_size=2, max_new_tokens=8, progress=False)
    singles = [r["prediction"] for r in one_by_one.records]
    assert len(set(singles)) > 1 and all(singles)  # different, non-empty answers: a comparison that can fail
    assert [r["prediction"] for r in batched.records] == singles
    assert [r["prediction"] for r in uneven.records] == singles
    assert processor.tokenizer.padding_side == side  # shared tokenizer untouched


def test_model_mode_is_restored(tiny, image_folder):
    model, processor = tiny
    questions = [{"id": "a", "image": "red.png", "question": "Is it red?", "answer": "yes"}]
    model.train()
    try:
        evaluate(model, processor, questions, image_folder, max_new_tokens=2, task="pope", progress=False)
        assert model.training
    finally:
        model.eval()


def test_prompt_is_the_record_prompt_after_the_image(tiny):
    _, processor = tiny
    record = {
        "id": 1,
        "image": "x.png",
        "question": "What?",
        "prompt": "What?\nAnswer the question using a single word or phrase.",
    }
    expected = processor.apply_chat_template(
        [{"role": "user", "content": "<image>\nWhat?\nAnswer the question using a single word or phrase."}],
        add_generation_prompt=True,
    )
    assert question_prompt(processor, record) == expected
    assert "<image>" not in question_prompt(processor, {"id": 2, "question": "Text only?"})


def test_metrics_equal_those_recomputed_from_the_predictions_file(tiny, image_folder, tmp_path):
    model, processor = tiny
    questions = [
        {
            "id": f"p{i}",
            "image": f"noise{i % 3}.png",
            "question": "Is there a red circle in the image?",
            "answer": "yes" if i % 2 else "no",
            "category": "pope",
            "strategy": ("random", "popular")[i % 2 == 0 or i > 4],
            "num_choices": 2,
        }
        for i in range(7)
    ]
    path = tmp_path / "out" / "pope.jsonl"
    result = evaluate(
        model,
        processor,
        questions,
        image_folder,
        batch_size=3,
        max_new_tokens=6,
        task="pope",
        predictions_path=path,
        progress=False,
    )
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [row["id"] for row in rows] == [q["id"] for q in questions]
    recomputed = task_metrics("pope", [row["prediction"] for row in rows], [row["answer"] for row in rows])
    assert {name: result.metrics[name] for name in recomputed} == pytest.approx(recomputed)
    assert result.metrics["accuracy"] == pytest.approx(np.mean([row["correct"] for row in rows]))
    for strategy, metrics in result.groups["strategy"].items():
        members = [row for row in rows if row["strategy"] == strategy]
        expected = task_metrics("pope", [r["prediction"] for r in members], [r["answer"] for r in members])
        assert {name: metrics[name] for name in expected} == pytest.approx(expected)
    assert "category" not in result.groups  # one value: the overall row already says it


# ---- known predictions: every metric, baseline and file ----------------------------------------


def test_runner_metrics_with_known_predictions(tiny_tokenizer, tiny, image_folder, tmp_path):
    _, processor = tiny
    pope = [
        ("p1", "red", "yes", "random"),  # TP
        ("p2", "red", "no", "random"),  # FP
        ("p3", "blue", "no", "popular"),  # TN
        ("p4", "blue", "yes", "popular"),  # FN
        ("p5", "red", "yes", "adversarial"),  # TP
    ]
    pope_file = write_jsonl(
        tmp_path / "eval_pope.jsonl",
        [
            {
                "id": qid,
                "image": f"{colour}.png",
                "question": "Is there a " + "very " * i + "big circle?",
                "answer": answer,
                "category": "pope",
                "strategy": strategy,
                "num_choices": 2,
            }
            for i, (qid, colour, answer, strategy) in enumerate(pope)
        ],
    )  # prompts of different lengths, so the oracle's left-padding check bites
    counting_file = write_jsonl(
        tmp_path / "eval_counting.jsonl",
        [
            {
                "id": "c1",
                "image": "green.png",
                "question": "How many?",
                "answer": "2",
                "category": "kind",
                "num_choices": 5,
            },
            {
                "id": "c2",
                "image": "yellow.png",
                "question": "How many?",
                "answer": "3",
                "category": "kind",
                "num_choices": 5,
            },
            {
                "id": "c3",
                "image": "yellow.png",
                "question": "How many?",
                "answer": "4",
                "category": "colour",
                "num_choices": 4,
            },
            {
                "id": "c4",
                "image": "red.png",
                "question": "How many?",
                "answer": "1",
                "category": "colour",
                "num_choices": 4,
            },
        ],
    )
    vqa_file = write_jsonl(
        tmp_path / "my_vqa.jsonl",
        [  # human answers: VQA accuracy with partial credit
            {
                "id": "v1",
                "image": "green.png",
                "question": "How many?",
                "answer": ["2", "2", "3", "3", "3", "3", "3", "3", "3", "3"],
            },
            {"id": "v2", "image": "blue.png", "question": "Is it?", "answer": ["no"] * 10},
        ],
    )
    oracle = ColourOracle(tiny_tokenizer, REPLIES)
    results = evaluate_files(
        oracle,
        processor,
        [pope_file, counting_file, vqa_file],
        image_folder=tmp_path / "images",
        batch_size=3,
        output_dir=tmp_path / "out",
        progress=False,
    )
    assert list(results) == ["pope", "counting", "my_vqa"]
    assert oracle.batch_sizes == [3, 2, 3, 1, 2]

    p = results["pope"]
    assert p.task == "pope"
    assert {k: p.metrics[k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio", "chance", "majority")} == (
        pytest.approx(
            {
                "accuracy": 0.6,
                "precision": 2 / 3,
                "recall": 2 / 3,
                "f1": 2 / 3,
                "yes_ratio": 0.6,
                "chance": 0.5,
                "majority": 0.6,
            }
        )
    )
    by_strategy = p.groups["strategy"]
    assert by_strategy["random"]["accuracy"] == 0.5 and by_strategy["random"]["precision"] == 0.5
    assert by_strategy["random"]["recall"] == 1.0 and by_strategy["random"]["yes_ratio"] == 1.0
    assert by_strategy["popular"]["accuracy"] == 0.5 and by_strategy["popular"]["f1"] == 0.0
    assert by_strategy["adversarial"]["accuracy"] == 1.0 and by_strategy["adversarial"]["n"] == 1
    assert [r["parsed"] for r in p.records] == ["yes", "yes", "no", "no", "yes"]

    c = results["counting"]
    assert c.task == "counting"
    assert c.metrics["accuracy"] == 0.5 and c.metrics["no_number"] == 0.25
    assert c.metrics["chance"] == pytest.approx((1 / 5 + 1 / 5 + 1 / 4 + 1 / 4) / 4)
    assert c.metrics["majority"] == pytest.approx(0.5)  # each category has two different answers
    assert c.groups["category"]["kind"]["accuracy"] == 1.0 and c.groups["category"]["colour"]["accuracy"] == 0.0
    assert [r["parsed"] for r in c.records] == [2, 3, 3, None]

    v = results["my_vqa"]
    assert v.task == "vqa"
    assert [r["score"] for r in v.records] == pytest.approx([0.6, 0.0])
    assert [r["correct"] for r in v.records] == [False, False]
    assert v.metrics["accuracy"] == pytest.approx(0.3)
    assert "chance" not in v.metrics and "majority" not in v.metrics  # no num_choices, list answers

    out = tmp_path / "out"
    summary = json.loads((out / "results.json").read_text())
    assert summary["pope"]["metrics"]["f1"] == pytest.approx(2 / 3)
    rows = [json.loads(line) for line in (out / "predictions_counting.jsonl").read_text().splitlines()]
    assert rows[0] == {
        "id": "c1",
        "image": "green.png",
        "question": "How many?",
        "prediction": "Two.",
        "parsed": 2,
        "answer": "2",
        "score": 1.0,
        "correct": True,
        "category": "kind",
    }
    markdown = (out / "results.md").read_text()
    assert "| pope | all | 5 | 60.0 | 50.0 | 60.0 | precision 66.7, recall 66.7, f1 66.7, yes_ratio 60.0 |" in markdown
    assert (
        "|  | strategy: popular | 2 | 50.0 | 50.0 | 50.0 | precision 0.0, recall 0.0, f1 0.0, yes_ratio 0.0 |"
        in markdown
    )
    assert "| counting | all | 4 | 50.0 | 22.5 | 50.0 | no_number 25.0 |" in markdown
    assert markdown == results_markdown(results)

    console = Console(width=200, record=True)
    console.print(results_table(results))
    console.print(result_table(results["pope"]))
    text = console.export_text()
    assert "strategy: adversarial" in text and "66.7" in text and "yes_ratio" in text


# ---- bad images ------------------------------------------------------------------------------


class NoGeneration(torch.nn.Module):
    device = torch.device("cpu")

    def generate(self, **kwargs):
        raise AssertionError("generation must not start when an image is missing")


def test_missing_image_stops_before_generation_naming_the_question(tiny, image_folder):
    _, processor = tiny
    questions = [
        {"id": "fine", "image": "red.png", "question": "Q?", "answer": "yes"},
        {"id": "lost-42", "image": "nowhere.png", "question": "Q?", "answer": "yes"},
    ]
    with pytest.raises(ValueError, match=r"question 'lost-42'.*nowhere\.png"):
        evaluate(NoGeneration(), processor, questions, image_folder, task="pope", progress=False)


def test_undecodable_image_error_names_the_question(tiny, image_folder):
    model, processor = tiny
    (image_folder / "broken.png").write_bytes(b"not a png at all")
    questions = [{"id": "bad-7", "image": "broken.png", "question": "Q?", "answer": "no"}]
    with pytest.raises(ValueError, match=r"question 'bad-7'.*broken\.png.*cannot be decoded"):
        evaluate(model, processor, questions, image_folder, task="pope", progress=False)


def test_bad_images_are_counted_and_reported_when_skipping(tiny_tokenizer, tiny, image_folder):
    _, processor = tiny
    (image_folder / "broken.png").write_bytes(b"not a png at all")
    questions = [
        {"id": "ok1", "image": "red.png", "question": "Q?", "answer": "yes"},
        {"id": "lost-42", "image": "nowhere.png", "question": "Q?", "answer": "yes"},
        {"id": "bad-7", "image": "broken.png", "question": "Q?", "answer": "no"},
        {"id": "ok2", "image": "blue.png", "question": "Q?", "answer": "yes"},
    ]
    result = evaluate(
        ColourOracle(tiny_tokenizer, REPLIES),
        processor,
        questions,
        image_folder,
        task="pope",
        name="pope",
        on_bad_image="skip",
        progress=False,
    )
    assert [item["id"] for item in result.skipped] == ["lost-42", "bad-7"]
    assert "nowhere.png" in result.skipped[0]["reason"] and "cannot be decoded" in result.skipped[1]["reason"]
    assert [r["id"] for r in result.records] == ["ok1", "ok2"]
    assert result.metrics["n"] == 2 and result.metrics["accuracy"] == 0.5
    assert result.to_dict()["num_skipped"] == 2
    assert "pope: 2 question(s) skipped (lost-42:" in results_markdown({"pope": result})


def test_bad_questions_fail_before_the_model_runs(tiny, image_folder):
    _, processor = tiny
    with pytest.raises(ValueError, match="question id 'a' appears twice"):
        evaluate(NoGeneration(), processor, [{"id": "a", "question": "Q", "answer": "x"}] * 2, image_folder)
    with pytest.raises(ValueError, match="'b'.*POPE answer"):
        evaluate(
            NoGeneration(), processor, [{"id": "b", "question": "Q", "answer": "maybe"}], image_folder, task="pope"
        )
    with pytest.raises(ValueError, match="on_bad_image"):
        evaluate(
            NoGeneration(),
            processor,
            [{"id": "c", "question": "Q", "answer": "x"}],
            image_folder,
            on_bad_image="ignore",
        )


# ---- question files --------------------------------------------------------------------------


def test_question_files_task_inference_and_baselines(tmp_path):
    manifest = write_world(tmp_path / "world", n=6, seed=0, test_fraction=0.5)
    files = write_instruct_files(manifest.root)
    tasks = {}
    for key in ("eval_vqa", "eval_counting", "eval_ocr", "eval_region", "eval_pope"):
        question_set = load_question_set(files[key])
        tasks[question_set.name] = question_set.task
        expected = {
            "chance": chance_accuracy(question_set.questions),
            "majority": majority_accuracy(question_set.questions),
        }
        assert baselines(question_set.questions) == pytest.approx(expected)
    assert tasks == {"vqa": "exact", "counting": "counting", "ocr": "exact", "region": "exact", "pope": "pope"}
    assert infer_task("answers.jsonl", [{"answer": ["a", "b"]}]) == "vqa"
    assert infer_task("answers.jsonl", [{"answer": "a"}]) == "exact"
    assert set_name("runs/eval_pope.jsonl") == "pope"

    bad = tmp_path / "eval_bad.jsonl"
    bad.write_text('{"id": 1, "question": "q", "answer": "a"}\nnot json\n')
    with pytest.raises(ValueError, match=r"eval_bad\.jsonl line 2"):
        read_questions(bad)


def test_eval_command_on_a_synthetic_world(tiny, tmp_path, capsys):
    model, processor = tiny
    checkpoint = tmp_path / "ckpt"
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    manifest = write_world(tmp_path / "world", n=4, seed=1, test_fraction=0.5)
    files = write_instruct_files(manifest.root)
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            str(checkpoint),
            str(files["eval_counting"]),
            str(files["eval_pope"]),
            "--output",
            str(out),
            "--batch-size",
            "4",
            "--max-new-tokens",
            "3",
        ]
    )
    assert code == 0
    summary = json.loads((out / "results.json").read_text())
    assert list(summary) == ["counting", "pope"]
    for name, task in (("counting", "counting"), ("pope", "pope")):
        rows = [json.loads(line) for line in (out / f"predictions_{name}.jsonl").read_text().splitlines()]
        recomputed = task_metrics(task, [r["prediction"] for r in rows], [r["answer"] for r in rows])
        assert {k: summary[name]["metrics"][k] for k in recomputed} == pytest.approx(recomputed)
    assert "Evaluation of" in capsys.readouterr().out

    assert main(["eval", str(checkpoint), str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl does not exist" in capsys.readouterr().err


def test_output_folder_is_checked_before_generation(tiny, image_folder, tmp_path):
    _, processor = tiny
    questions = write_jsonl(
        image_folder / "eval_pope.jsonl", [{"id": "a", "image": "red.png", "question": "Q?", "answer": "yes"}]
    )
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    for output in (blocker, blocker / "eval"):
        with pytest.raises(OutputPathError, match="a_file"):
            evaluate_files(NoGeneration(), processor, [questions], output_dir=output, progress=False)
    assert blocker.read_text() == "mine"


def test_a_model_that_prefers_its_image_token_still_answers(tiny, image_folder):
    """Default suppression: the answer is the best non-placeholder continuation, and the run completes."""
    model, processor = tiny
    model = copy.deepcopy(model)
    prompt = question_prompt(processor, {"question": "What colour?", "image": "red.png"})
    inputs = processor(text=prompt, images=[Image.open(image_folder / "red.png")], return_tensors="pt")
    force_next_token(model, model.config.image_token_id, **inputs)
    output = model.generate(**inputs, max_new_tokens=3, do_sample=False, suppress_tokens=[])
    assert int(output[0, inputs["input_ids"].shape[1]]) == model.config.image_token_id
    answers = generate_answers(model, processor, [prompt], [[Image.open(image_folder / "red.png")]], max_new_tokens=3)
    expected = model.generate(**inputs, max_new_tokens=3, do_sample=False, eos_token_id=processor.stop_token_ids)
    assert model.config.image_token_id not in expected[0].tolist()[inputs["input_ids"].shape[1] :]
    new = expected[0, inputs["input_ids"].shape[1] :]
    assert answers == [processor.tokenizer.decode(new, skip_special_tokens=True).strip()]
