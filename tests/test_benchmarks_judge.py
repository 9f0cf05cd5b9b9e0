"""LLaVA-Bench and MM-Vet judged by an LLM through a stub OpenAI-compatible server on loopback.

The stub answers /v1/chat/completions in the OpenAI format; it fails some requests with HTTP 500
(the client retries), gives a reply that never parses for one question (reported with its id,
left out of the metrics), and records every request so the judge's prompt can be checked. The
second run is served from the cache: nothing is sent again.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from llavakit.cli import main
from llavakit.eval.benchmarks import load_benchmark
from llavakit.eval.benchmarks.llava_bench import judge_messages, parse_scores
from llavakit.eval.benchmarks.mm_vet import parse_correctness


class StubJudge:
    """A chat-completions server: `reply(content) -> text`; requests whose content holds `fail_once` get one 500."""

    def __init__(self, reply, fail_once: str | None = None):
        self.reply, self.fail_once = reply, fail_once
        self.requests: list[dict] = []
        self.failed = False
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(body)
                content = "\n".join(message["content"] for message in body["messages"])
                if stub.fail_once and stub.fail_once in content and not stub.failed:
                    stub.failed = True
                    return self._send(500, {"error": {"message": "overloaded", "type": "server_error"}})
                completion = {
                    "id": "c1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": stub.reply(content)},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105},
                }
                self._send(200, completion)

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def judge_args(url: str, *extra: str) -> list[str]:
    return [
        "--judge-model",
        "judge-1",
        "--judge-base-url",
        url,
        "--judge-base-delay",
        "0",
        "--judge-max-concurrency",
        "1",
        "--judge-prompt-price",
        "1",
        "--judge-completion-price",
        "2",
        *extra,
    ]


def write_lines(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_parse_two_scores_and_a_correctness():
    assert parse_scores("8 6\nAssistant 1 is more detailed.") == (8.0, 6.0)
    assert parse_scores("\n7, 7.5\nboth fine") == (7.0, 7.5)
    with pytest.raises(ValueError, match="two scores"):
        parse_scores("Assistant 1: 8, Assistant 2: 6")
    with pytest.raises(ValueError, match="two scores"):
        parse_scores("8 16")
    assert parse_correctness("0.5") == 0.5 and parse_correctness("Score: 1.0") == 1.0
    with pytest.raises(ValueError, match="correctness"):
        parse_correctness("partly right")


@pytest.fixture
def llava_bench(tmp_path):
    folder = tmp_path / "llava-bench-in-the-wild"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(folder / "images" / "001.jpg")
    write_lines(
        folder / "questions.jsonl",
        [
            {"question_id": 0, "image": "001.jpg", "text": "What dish is this?", "category": "conv"},
            {"question_id": 1, "image": "001.jpg", "text": "Describe the photo in detail.", "category": "detail"},
            {
                "question_id": 2,
                "image": "001.jpg",
                "text": "Why might the cook have chosen this bowl?",
                "category": "complex",
            },
        ],
    )
    write_lines(folder / "context.jsonl", [{"id": "001", "image": "001.jpg", "caption": "A bowl of ramen on a table."}])
    write_lines(
        folder / "answers_gpt4.jsonl",
        [
            {
                "question_id": i,
                "text": f"Reference answer {i}.",
                "answer_id": f"r{i}",
                "model_id": "gpt-4",
                "metadata": {},
            }
            for i in range(3)
        ],
    )
    predictions = write_lines(
        tmp_path / "answers.jsonl",
        [
            {
                "question_id": i,
                "prompt": p,
                "text": f"Model answer {i}.",
                "answer_id": f"m{i}",
                "model_id": "m",
                "metadata": {},
            }
            for i, p in enumerate(["What dish is this?", "Describe", "Why?"])
        ],
    )
    return folder, predictions


def llava_bench_reply(content: str) -> str:
    if "Model answer 0." in content:
        return "8 6\nThe reference is more precise."
    if "Model answer 1." in content:
        return "7, 7\nBoth are equally good."
    return "I cannot decide between them."  # never parses


def test_llava_bench_judged_through_an_endpoint(llava_bench, tmp_path, capsys):
    folder, predictions = llava_bench
    out = tmp_path / "out"
    args = [
        "eval",
        "score",
        "--task",
        "llava_bench",
        "--data",
        str(folder),
        "--predictions",
        str(predictions),
        "--output",
        str(out),
    ]
    with StubJudge(llava_bench_reply, fail_once="Model answer 0.") as stub:
        assert main([*args, *judge_args(stub.url)]) == 0
        first = list(stub.requests)
        assert main([*args, *judge_args(stub.url)]) == 0  # again: every request answered from the cache
        assert len(stub.requests) == len(first)

    # prompt content: the image description, the question, the reference as Assistant 1, the model as Assistant 2
    user = first[0]["messages"][-1]["content"]
    assert "A bowl of ramen on a table." in user and "What dish is this?" in user
    assert "[Assistant 1]\nReference answer 0.\n[End of Assistant 1]" in user
    assert "[Assistant 2]\nModel answer 0.\n[End of Assistant 2]" in user
    assert "two scores" in user and first[0]["model"] == "judge-1" and first[0]["temperature"] == 0.2
    # 1 failed + 1 retried request for question 0, 1 for question 1, 2 for question 2 (its reply asked again)
    assert len(first) == 5
    retry = first[-1]["messages"]
    assert retry[-2] == {"role": "assistant", "content": "I cannot decide between them."}

    results = json.loads((out / "llava_bench_results.json").read_text())
    # judged: question 0 (reference 8, model 6), question 1 (7, 7); question 2 failed
    assert results["metrics"]["relative"] == pytest.approx((6 + 7) / (8 + 7))
    assert results["metrics"]["model_score"] == 6.5 and results["metrics"]["reference_score"] == 7.5
    assert results["groups"]["category"]["conv"]["relative"] == pytest.approx(0.75)
    assert results["groups"]["category"]["detail"]["relative"] == 1.0
    assert "complex" not in results["groups"]["category"]
    assert [item["question_id"] for item in results["judge"]["failed"]] == ["2"]
    assert any(note.startswith("judge failed on 2: the judge's reply does not parse") for note in results["notes"])
    assert results["judge"]["cache_hits"] == 4 and results["judge"]["requests"] == 0  # the second run: 4 replies
    printed = capsys.readouterr().out
    assert "judge judge-1: 3 judgements" in printed and "1 failed" in printed
    assert "cost 0.0000" in printed  # prices given; nothing paid on the cached run


def test_first_run_costs_and_retries_are_reported(llava_bench, tmp_path):
    folder, predictions = llava_bench
    with StubJudge(llava_bench_reply, fail_once="Model answer 0.") as stub:
        code = main(
            [
                "eval",
                "score",
                "--task",
                "llava_bench",
                "--data",
                str(folder),
                "--predictions",
                str(predictions),
                "--output",
                str(tmp_path / "o"),
                *judge_args(stub.url),
            ]
        )
    assert code == 0
    judge = json.loads((tmp_path / "o" / "llava_bench_results.json").read_text())["judge"]
    assert (judge["requests"], judge["retries"], judge["cache_hits"]) == (5, 1, 0)
    # four replies of 100 + 5 tokens (the 500 has no usage) at 1 and 2 per million tokens
    assert judge["prompt_tokens"] == 400 and judge["cost"] == pytest.approx((400 * 1 + 20 * 2) / 1e6)


def test_mm_vet_judged_by_capability(tmp_path):
    folder = tmp_path / "mm-vet"
    (folder / "images").mkdir(parents=True)
    samples = {
        "v1_0": {
            "imagename": "v1_0.png",
            "question": "What is x?",
            "answer": "-1 <AND> -5",
            "capability": ["ocr", "math"],
        },
        "v1_1": {
            "imagename": "v1_1.png",
            "question": "Who is it?",
            "answer": "Einstein",
            "capability": ["rec", "know"],
        },
        "v1_2": {"imagename": "v1_2.png", "question": "What brand?", "answer": "Sony", "capability": ["ocr"]},
    }
    (folder / "mm-vet.json").write_text(json.dumps(samples))
    predictions = write_lines(
        tmp_path / "answers.jsonl",
        [  # numbered as LLaVA numbers MM-Vet answers
            {
                "question_id": 0,
                "prompt": "What is x?",
                "text": "x is -1",
                "answer_id": "a",
                "model_id": "m",
                "metadata": {},
            },
            {
                "question_id": 1,
                "prompt": "Who is it?",
                "text": "Albert Einstein",
                "answer_id": "b",
                "model_id": "m",
                "metadata": {},
            },
            {
                "question_id": 2,
                "prompt": "What brand?",
                "text": "Panasonic",
                "answer_id": "c",
                "model_id": "m",
                "metadata": {},
            },
        ],
    )
    replies = {"x is -1": "0.5", "Albert Einstein": "1.0", "Panasonic": "0.0"}

    def reply(content):
        row = content.rsplit("Question:", 1)[1]
        return next(score for answer, score in replies.items() if f"Answer: {answer} |" in row)

    with StubJudge(reply) as stub:
        code = main(
            [
                "eval",
                "score",
                "--task",
                "mm_vet",
                "--data",
                str(folder),
                "--predictions",
                str(predictions),
                "--output",
                str(tmp_path / "out"),
                *judge_args(stub.url),
            ]
        )
        prompt = stub.requests[0]["messages"][0]["content"]
    assert code == 0
    assert "<AND>" in prompt and "Ground truth: -1 <AND> -5 | Answer: x is -1 | Score:" in prompt
    results = json.loads((tmp_path / "out" / "mm_vet_results.json").read_text())
    assert results["metrics"] == {"score": pytest.approx(0.5), "n": 3.0}
    capability = results["groups"]["capability"]
    assert capability["ocr"]["score"] == pytest.approx(0.25) and capability["math"]["score"] == 0.5
    assert capability["rec"]["score"] == 1.0 and capability["know"]["score"] == 1.0
    assert results["groups"]["capabilities"]["ocr,math"]["score"] == 0.5


def test_judged_task_without_a_judge_is_refused(llava_bench, capsys):
    folder, predictions = llava_bench
    code = main(["eval", "score", "--task", "llava_bench", "--data", str(folder), "--predictions", str(predictions)])
    assert code == 2
    assert "scored by an LLM judge: give --judge-model" in capsys.readouterr().err
    code = main(
        [
            "eval",
            "score",
            "--task",
            "pope",
            "--data",
            str(folder),
            "--predictions",
            str(predictions),
            "--judge-model",
            "x",
        ]
    )
    assert code == 2 and "scored without a judge" in capsys.readouterr().err


def test_llava_bench_coco_layout_describes_captions_and_boxes(tmp_path):
    folder, images = tmp_path / "coco_qa", tmp_path / "val2014"
    folder.mkdir()
    images.mkdir()
    Image.new("RGB", (4, 4)).save(images / "COCO_val2014_000000441147.jpg")
    write_lines(
        folder / "qa90_questions.jsonl",
        [{"question_id": 0, "image": "000000441147.jpg", "text": "What colour are the suitcases?", "category": "conv"}],
    )
    write_lines(folder / "qa90_gpt4_answer.jsonl", [{"question_id": 0, "text": "Black and brown.", "category": "conv"}])
    write_lines(
        folder / "caps_boxes_coco2014_val_80.jsonl",
        [
            {
                "id": "000000441147",
                "image": "000000441147.jpg",
                "captions": ["Two suitcases.", "Old luggage."],
                "instances": [{"category": "suitcase", "bbox": [0.1, 0.2, 0.5, 0.9]}],
            }
        ],
    )
    data = load_benchmark("llava_bench", [folder], image_folder=images)
    question = data.questions[0]
    assert question.image == images / "COCO_val2014_000000441147.jpg"
    assert question.prompt == "What colour are the suitcases?"  # asked as written
    assert question.reference["context"] == "Two suitcases.\nOld luggage.\n\nsuitcase: [0.1, 0.2, 0.5, 0.9]"
    user = judge_messages(question, "Brown.")[-1]["content"]
    assert "[Assistant 1]\nBlack and brown.\n" in user and "suitcase: [0.1, 0.2, 0.5, 0.9]" in user
