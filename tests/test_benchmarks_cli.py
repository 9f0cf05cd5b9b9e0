"""`llavakit eval CKPT --task pope --data FOLDER` end to end on a tiny saved checkpoint: answers in LLaVA's
format, resume, scores equal to scoring the answers file, the `eval score` form, and bad input in one line."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from conftest import pope_eval_args
from llavakit.cli import main
from llavakit.eval.answers import read_answers
from llavakit.eval.benchmarks import load_benchmark, score_benchmark

ANSWER_KEYS = ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture
def pope(tmp_path):
    """Two POPE split files of three questions each, and their COCO-named images."""
    folder, images = tmp_path / "pope", tmp_path / "val2014"
    folder.mkdir()
    images.mkdir()
    for index, colour in enumerate([(200, 30, 30), (30, 200, 30)]):
        Image.new("RGB", (20 + 4 * index, 24), colour).save(images / f"COCO_val2014_{index:012d}.jpg")
    for split in ("random", "adversarial"):
        lines = [
            {
                "question_id": i + 1,
                "image": f"COCO_val2014_{i % 2:012d}.jpg",
                "text": f"Is there a {thing} in the image?",
                "label": label,
            }
            for i, (thing, label) in enumerate([("dog", "yes"), ("cat", "no"), ("traffic light", "yes")])
        ]
        (folder / f"coco_pope_{split}.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder, images


def run(checkpoint, pope, out, *extra):
    return main(pope_eval_args(checkpoint, pope, out, *extra))


def answer_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pope_end_to_end_resumes_and_scores_as_the_answers_file(checkpoint, pope, tmp_path, capsys, one_torch_thread):
    out = tmp_path / "eval"
    assert run(checkpoint, pope, out, "--limit", "3") == 0
    first = answer_lines(out / "pope_answers.jsonl")
    assert len(first) == 3 and list(first[0]) == ANSWER_KEYS
    assert first[0]["question_id"] == "random-1" and first[0]["model_id"] == "tiny-llava"
    assert first[0]["prompt"] == "Is there a dog in the image?\nAnswer the question using a single word or phrase."

    assert run(checkpoint, pope, out) == 0  # the full run continues where the limited one stopped
    full = answer_lines(out / "pope_answers.jsonl")
    assert len(full) == 6
    assert full[:3] == first  # same answer ids: the first three were not generated again
    assert sorted(line["question_id"] for line in full) == sorted(
        f"{split}-{i}" for split in ("random", "adversarial") for i in (1, 2, 3)
    )
    printed = capsys.readouterr().out
    assert "3 answers kept from an earlier run, 3 generated" in printed and "POPE (pope)" in printed

    results = json.loads((out / "pope_results.json").read_text())
    data = load_benchmark("pope", [pope[0]], pope[1])
    expected = score_benchmark("pope", data, read_answers(out / "pope_answers.jsonl", data).predictions)
    assert results["metrics"] == pytest.approx(expected.metrics)
    assert results["counts"] == {"questions": 6, "answered": 6, "kept": 3, "generated": 3, "skipped": 0}
    assert set(results["groups"]["split"]) == {"random", "adversarial"}
    assert (out / "pope_results.md").read_text().startswith("## POPE (pope)")
    assert len((out / "pope_scored.jsonl").read_text().splitlines()) == 6

    # the same answers scored by the score form give the same numbers
    code = main(
        [
            "eval",
            "score",
            "--task",
            "pope",
            "--data",
            str(pope[0]),
            "--predictions",
            str(out / "pope_answers.jsonl"),
            "--output",
            str(tmp_path / "scored"),
        ]
    )
    assert code == 0
    rescored = json.loads((tmp_path / "scored" / "pope_results.json").read_text())
    assert rescored["metrics"] == pytest.approx(results["metrics"])

    # a rerun with other settings is refused before the model loads; --overwrite starts again
    assert run(checkpoint, pope, out, "--max-new-tokens", "4") == 2
    assert "holds answers of a run with other settings (max_new_tokens: 3 then, 4 now)" in capsys.readouterr().err
    assert run(checkpoint, pope, out, "--limit", "2", "--overwrite") == 0
    assert len(answer_lines(out / "pope_answers.jsonl")) == 2


def test_missing_images_are_counted_before_the_model_loads(checkpoint, pope, tmp_path, capsys, one_torch_thread):
    (pope[1] / "COCO_val2014_000000000001.jpg").unlink()
    assert run(checkpoint, pope, tmp_path / "eval") == 2
    err = capsys.readouterr().err
    assert "pope: 2 of 6 images are missing" in err and "--skip-bad-images" in err
    assert not (tmp_path / "eval" / "pope_answers.jsonl").exists()

    assert run(checkpoint, pope, tmp_path / "eval", "--skip-bad-images") == 0
    results = json.loads((tmp_path / "eval" / "pope_results.json").read_text())
    assert results["counts"]["skipped"] == 2 and results["counts"]["answered"] == 4
    assert any(note.startswith("2 questions skipped for bad images") for note in results["notes"])
    assert any(note.startswith("2 of 6 questions have no answer") for note in results["notes"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "bleu", "--data", "{pope}"], "unknown benchmark 'bleu'"),
        (["--task", "pope"], "--task pope: give the benchmark's files with --data"),
        (["--task", "pope", "--data", "{bad}"], "POPE file {bad} line 1: not valid JSON"),
        (["--task", "gqa", "--data", "{pope}/coco_pope_random.json"], "GQA questions file"),
        (["--task", "pope", "--data", "{pope}", "--limit", "0"], "--limit must be at least 1"),
        (["--task", "pope", "--data", "{pope}", "--predictions", "x.jsonl"], "--predictions: not for a checkpoint run"),
    ],
)
def test_bad_benchmark_input_is_one_line(checkpoint, pope, tmp_path, capsys, args, message):
    bad = tmp_path / "coco_pope_random.json"
    bad.write_text("{not json\n")
    fill = {"bad": str(bad), "pope": str(pope[0])}
    code = main(["eval", str(checkpoint), *(arg.format(**fill) for arg in args)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("llavakit eval: error: ") and "Traceback" not in err
    assert message.format(**fill) in err


def test_score_form_checks_its_answers_file(pope, tmp_path, capsys):
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"question_id": "random-1", "prompt": "p", "answer_id": "a"}) + "\n")
    code = main(["eval", "score", "--task", "pope", "--data", str(pope[0]), "--predictions", str(answers)])
    assert code == 2 and "answers.jsonl line 1: 'text' (the model's answer) must be a string" in capsys.readouterr().err
    answers.write_text("".join(json.dumps({"question_id": "random-1", "text": t}) + "\n" for t in ("Yes", "No")))
    code = main(["eval", "score", "--task", "pope", "--data", str(pope[0]), "--predictions", str(answers)])
    assert code == 2 and "lines 1 and 2 both answer question 'random-1'" in capsys.readouterr().err
    code = main(["eval", "score", "--task", "pope", "--data", str(pope[0])])
    assert code == 2 and "the score form is" in capsys.readouterr().err
