"""`llavakit data convert`: JSON + folder to shards or parquet and back, records and image bytes unchanged."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from llavakit.cli import main


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def image_bytes(seed: int, fmt: str) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


RECORDS = [
    {"id": "1", "image": "coco/one.jpg", "conversations": chat("<image>\nWhat?", "A thing.")},
    {"id": "2", "image": ["two.png", "coco/three.jpg"], "conversations": chat("<image><image>", "Two."), "src": "x"},
    {"id": "3", "conversations": chat("Text only?", "Yes.")},
    {"id": 4, "image": "one_more.png", "conversations": chat("<image>\nCount?", "3."), "meta": {"k": [1, 2]}},
]
FILES = {
    "coco/one.jpg": image_bytes(1, "JPEG"),
    "two.png": image_bytes(2, "PNG"),
    "coco/three.jpg": image_bytes(3, "JPEG"),
    "one_more.png": image_bytes(4, "PNG"),
}


@pytest.fixture
def llava_data(tmp_path):
    folder = tmp_path / "src"
    for name, data in FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    (folder / "data.json").write_text(json.dumps(RECORDS))
    return folder / "data.json"


def assert_same_llava(folder) -> None:
    assert json.loads((folder / "data.json").read_text()) == RECORDS
    for name, data in FILES.items():
        assert (folder / "images" / name).read_bytes() == data, name


@pytest.mark.parametrize("middle", ["shards", "parquet"])
def test_json_and_folder_round_trip(llava_data, tmp_path, middle, capsys):
    assert (
        main(["data", "convert", str(llava_data), str(tmp_path / middle), "--format", middle, "--per-file", "3"]) == 0
    )
    written = sorted(path.name for path in (tmp_path / middle).iterdir())
    assert len(written) == 2  # 3 samples, then 1
    assert "wrote 4 record(s) and 4 image(s)" in capsys.readouterr().out
    assert main(["data", "convert", str(tmp_path / middle), str(tmp_path / "back"), "--format", "llava"]) == 0
    assert_same_llava(tmp_path / "back")
    # What was converted checks clean, as the source does.
    assert main(["data", "check", str(tmp_path / middle)]) == 0
    assert (
        main(
            ["data", "check", str(tmp_path / "back" / "data.json"), "--image-folder", str(tmp_path / "back" / "images")]
        )
        == 0
    )


def test_shards_to_parquet_and_back(llava_data, tmp_path):
    main(["data", "convert", str(llava_data), str(tmp_path / "shards"), "--format", "shards"])
    main(["data", "convert", str(tmp_path / "shards"), str(tmp_path / "parquet"), "--format", "parquet"])
    main(["data", "convert", str(tmp_path / "parquet"), str(tmp_path / "back"), "--format", "llava"])
    assert_same_llava(tmp_path / "back")


def test_a_non_empty_output_is_refused_without_overwrite(llava_data, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("work")
    assert main(["data", "convert", str(llava_data), str(out), "--format", "shards"]) != 0
    assert "already holds 1 entry of earlier work; pass --overwrite" in capsys.readouterr().err
    assert (out / "earlier.txt").exists()
    assert main(["data", "convert", str(llava_data), str(out), "--format", "shards", "--overwrite"]) == 0
    assert not (out / "earlier.txt").exists()


def test_missing_images_and_broken_records_are_reported_not_lost(tmp_path, capsys):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "data.jsonl").write_text(
        json.dumps({"id": "a", "image": "gone.png", "conversations": chat("<image>", "?")}) + "\n{broken\n"
    )
    assert main(["data", "convert", str(folder / "data.jsonl"), str(tmp_path / "out"), "--format", "shards"]) == 1
    out = capsys.readouterr().out
    assert "missing image (name kept, no bytes): gone.png" in out
    assert "not converted: data.jsonl:2: malformed JSON" in out
    assert main(["data", "check", str(tmp_path / "out")]) == 1  # the missing image stays a bad sample
    assert "missing image" in capsys.readouterr().out
