"""LLaVA's instruction generation on COCO annotations, against a stub OpenAI-compatible server on loopback."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

pytest.importorskip("openai")

from llavakit.cli import main
from llavakit.data.check import check_data
from llavakit.data.records import DatasetSpec
from llavakit.synthetic.coco import COCO_SYSTEM_PROMPTS, coco_context, coco_prompts_markdown, load_coco

IMAGES = [
    {"id": 42, "file_name": "000000000042.jpg", "width": 640, "height": 480},
    {"id": 7, "file_name": "000000000007.jpg", "width": 200, "height": 100},
]
CAPTIONS = {
    42: [f"A dog chases a ball in the park, take {n}." for n in range(5)],
    7: [f"Two cats sleep on a sofa, view {n}." for n in range(5)],
}
CATEGORIES = [{"id": 18, "name": "dog"}, {"id": 37, "name": "sports ball"}, {"id": 17, "name": "cat"}]
BOXES = [  # image id, category id, COCO bbox [x, y, w, h] in pixels
    (42, 18, [64.0, 48.0, 320.0, 240.0]),
    (42, 37, [400.0, 300.0, 32.0, 32.0]),
    (7, 17, [10.0, 20.0, 50.0, 60.0]),
    (7, 17, [150.0, 10.0, 80.0, 40.0]),  # runs past the right edge: clipped to 1.0
]
REPLIES = {
    "conversation": "Question:\nWhat is happening?\nAnswer:\nAn animal is playing.\n"
    "Question:\nIs it outdoors?\nAnswer:\nIt looks like it.",
    "detail": "A calm scene with animals, seen in daylight.",
    "reasoning": "Question:\nWhy might the animal be tired later?\nAnswer:\nIt is running around a lot.",
}


@pytest.fixture
def coco_files(tmp_path):
    captions = {
        "images": IMAGES,
        "annotations": [
            {"id": 100 * i + n, "image_id": i, "caption": text}
            for i, texts in CAPTIONS.items()
            for n, text in enumerate(texts)
        ],
    }
    instances = {
        "images": IMAGES,
        "categories": CATEGORIES,
        "annotations": [
            {"id": n, "image_id": i, "category_id": c, "bbox": bbox, "iscrowd": 0}
            for n, (i, c, bbox) in enumerate(BOXES)
        ]
        + [{"id": 99, "image_id": 42, "category_id": 18, "bbox": [0, 0, 640, 480], "iscrowd": 1}],
    }
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    images = tmp_path / "images" / "coco" / "train2017"
    images.mkdir(parents=True)
    for image in IMAGES:
        Image.new("RGB", (image["width"], image["height"]), (90, 120, 30)).save(images / image["file_name"])
    return tmp_path


class Stub:
    """Answers every request with a good reply for its kind (found from the system prompt) and keeps the requests."""

    def __init__(self):
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.requests.append(body)
                kind = next(k for k, prompt in COCO_SYSTEM_PROMPTS.items() if body["messages"][0]["content"] == prompt)
                payload = {
                    "id": "cmpl",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": REPLIES[kind]},
                        }
                    ],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
                }
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler


@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    stub = Stub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), stub.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stub.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield stub
    server.shutdown()
    server.server_close()


def test_the_context_holds_the_five_captions_and_normalised_boxes(coco_files):
    images = load_coco(coco_files / "captions.json", coco_files / "instances.json", "coco/train2017/")
    assert [image.id for image in images] == ["coco-7", "coco-42"]
    dog = images[1]
    assert dog.image == "coco/train2017/000000000042.jpg"
    assert dog.captions == tuple(CAPTIONS[42])
    assert dog.objects == (("dog", (0.1, 0.1, 0.6, 0.6)), ("sports ball", (0.625, 0.625, 0.675, 0.692)))  # no crowd
    assert images[0].objects[1] == ("cat", (0.75, 0.1, 1.0, 0.5))
    context = coco_context(dog)
    assert all(caption in context for caption in CAPTIONS[42])
    assert "dog: [0.100, 0.100, 0.600, 0.600]" in context and "sports ball: [0.625, 0.625, 0.675, 0.692]" in context


def generate(coco_files, stub, *extra):
    return main(
        [
            "data",
            "instruct",
            "--source",
            "coco",
            "--captions",
            str(coco_files / "captions.json"),
            "--instances",
            str(coco_files / "instances.json"),
            "--image-prefix",
            "coco/train2017/",
            "--output",
            str(coco_files / "out"),
            "--backend",
            "openai",
            "--base-url",
            stub.url,
            "--model",
            "teacher",
            "--base-delay",
            "0.01",
            *extra,
        ]
    )


def test_coco_samples_come_from_the_stub_and_pass_data_check(coco_files, stub, capsys):
    assert generate(coco_files, stub) == 0
    assert len(stub.requests) == 6  # 2 images x 3 kinds
    sent = [request["messages"][-1]["content"] for request in stub.requests]
    for texts in CAPTIONS.values():
        mine = [content for content in sent if texts[0] in content]
        assert len(mine) == 3 and all(all(text in content for text in texts) for content in mine)
    assert any("dog: [0.100, 0.100, 0.600, 0.600]" in content for content in sent)
    output = coco_files / "out" / "instruct_coco.jsonl"
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(record["id"] for record in records) == sorted(
        f"coco-{i}-{kind}" for i in (7, 42) for kind in ("conversation", "detail", "reasoning")
    )
    assert all(record["image"].startswith("coco/train2017/") for record in records)
    report = check_data([DatasetSpec(output, image_folder=coco_files / "images")], None, None)
    assert report.num_bad == 0 and report.num_good == 6
    # Resumed: nothing is asked again, and `llavakit data check` agrees.
    assert generate(coco_files, stub) == 0
    assert len(stub.requests) == 6
    assert main(["data", "check", str(output), "--image-folder", str(coco_files / "images")]) == 0


def test_coco_needs_its_files_and_the_openai_backend(coco_files, capsys):
    assert main(["data", "instruct", "--source", "coco", "--captions", str(coco_files / "captions.json")]) != 0
    assert "--backend openai" in capsys.readouterr().err
    missing = ["data", "instruct", "--source", "coco", "--captions", "nope.json", "--backend", "openai", "--model", "m"]
    assert main(missing) != 0
    assert "COCO captions file nope.json does not exist" in capsys.readouterr().err


def test_the_coco_prompts_are_in_the_docs():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "instruct.md").read_text()
    assert coco_prompts_markdown() in doc
