"""Bad input to `llavakit data check / synth / instruct` and to the data API: a clear outcome, never a traceback.

Each row runs through `tests/misuse.py`: exit status, a message naming the culprit, no traceback,
no earlier file changed. `data check` reports bad samples (status 1, the reason in the report)
rather than stopping; a file it cannot read at all, or flags that cannot work together, stop it
(status 2, one line). Duplicate sample ids are a warning (status 0). The API rows check that the
library raises the typed error (`DataError`, `ConfigError`) with the same message.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import conversation
from llavakit.cli import main
from llavakit.data.check import check_data
from llavakit.data.dataset import LlavaDataset
from llavakit.data.records import DatasetSpec, load_records
from llavakit.errors import ConfigError, DataError, LlavaKitError
from llavakit.processing.images import ImageProcessingConfig, load_image, preprocess
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.synthetic.teacher import LLMConfig
from llavakit.synthetic.world import write_world
from llavakit.tiny import build_tiny_tokenizer, tiny_llava_config
from misuse import CliCase, file_hashes, run_cli_case

DEEP = 200_000  # nesting depth of the "deep" inputs: far beyond what Python's JSON reader can parse
OUTSIDE = ("../outside.png", "/tmp/llavakit-absolute.png")


# ---- builders ------------------------------------------------------------------------------------


def record(sample_id: str, question: str = "What is it?", image: str | None = None) -> dict:
    data = {"id": sample_id, "conversations": conversation(question, "A shape.")}
    return data if image is None else {**data, "image": image}


def write_jsonl(folder: Path, records: list[dict], name: str = "data.jsonl") -> None:
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def outside_image(folder: Path) -> None:
    """Setup: `data/data.jsonl` naming `../outside.png`, which exists next to the data folder."""
    (folder / "data").mkdir()
    data_with(record("up", "<image>\nWhat?", image=OUTSIDE[0]))(folder / "data")
    write_png(folder / "outside.png")


def write_png(path: Path, size: tuple[int, int] = (24, 18)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path)


def write_text(name: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text(text, encoding="utf-8")


def data_with(*records: dict, images: tuple[str, ...] = ()) -> Callable[[Path], None]:
    """Setup: `data.jsonl` holding `records`, and the PNG files `images` (relative to the folder)."""

    def setup(folder: Path) -> None:
        write_jsonl(folder, list(records))
        for image in images:
            write_png(folder / image)

    return setup


def surrogate_line(key: str) -> Callable[[Path], None]:
    """Setup: a JSONL record whose `key` ("id" or "question") holds the JSON escape of a lone surrogate."""
    sample_id = '"s\\ud800"' if key == "id" else '"s1"'
    question = '"hi \\ud800"' if key == "question" else '"hi"'
    turns = f'[{{"from": "human", "value": {question}}}, {{"from": "gpt", "value": "ok"}}]'
    return write_text("data.jsonl", f'{{"id": {sample_id}, "conversations": {turns}}}\n')


def write_files(files: dict[str, str | bytes]) -> Callable[[Path], None]:
    """Setup: files by relative path, text or bytes."""

    def setup(folder: Path) -> None:
        for name, content in files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content, encoding="utf-8")

    return setup


def corrupt_image_data(folder: Path) -> None:
    data_with(record("c", "<image>\nWhat?", image="broken.png"))(folder)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")


def world_with_pretrain_in_out(folder: Path) -> None:
    world(folder)
    write_files({"out/pretrain.json": "[]"})(folder)


def check(*extra: str, data: str = "data.jsonl") -> Callable[[Path], list[str]]:
    return lambda folder: ["data", "check", str(folder / data), *extra]


def processor_folder(folder: Path) -> Path:
    """A saved tiny processor (pad mode, 32-pixel images)."""
    tokenizer = build_tiny_tokenizer()
    config = tiny_llava_config(image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    LlavaKitProcessor.from_model_config(tokenizer, config, "vicuna_v1").save_pretrained(folder / "processor")
    return folder / "processor"


def thin_image_data(folder: Path) -> None:
    data_with(record("thin", "<image>\nWhat is it?", image="thin.png"))(folder)
    write_png(folder / "thin.png", size=(3000, 1))
    processor_folder(folder)


def world(folder: Path) -> None:
    write_world(folder / "world", n=4, seed=0, test_fraction=0.5)


def synth(*extra: str) -> Callable[[Path], list[str]]:
    return lambda folder: ["data", "synth", str(folder / "out"), *extra]


def instruct(*extra: str, world_name: str = "world") -> Callable[[Path], list[str]]:
    return lambda folder: ["data", "instruct", str(folder / world_name), *extra]


def openai(*extra: str) -> Callable[[Path], list[str]]:
    base = ["--backend", "openai", "--model", "teacher", "--base-url", "http://127.0.0.1:9/v1"]
    return lambda folder: ["data", "instruct", str(folder / "world"), *base, *extra]


# ---- the command ---------------------------------------------------------------------------------

CHECK_CASES = [
    CliCase("check: missing file", check(data="nope.jsonl"), "nope.jsonl does not exist"),
    CliCase(
        "check: unknown extension", check(data="data.csv"), "data.csv must end in .json", write_text("data.csv", "id\n")
    ),
    CliCase("check: empty JSONL", check(), "data.jsonl holds no records", write_text("data.jsonl", "\n\n")),
    CliCase(
        "check: empty JSON list", check(data="data.json"), "data.json holds no records", write_text("data.json", "[]")
    ),
    CliCase(
        "check: malformed whole-file JSON",
        check(data="data.json"),
        "data.json is not valid JSON",
        write_text("data.json", '[{"id": 1}'),
    ),
    CliCase(
        "check: JSON file nested 200,000 deep",
        check(data="data.json"),
        "data.json is not valid JSON: nested too deeply",
        write_text("data.json", "[" * DEEP + "]" * DEEP),
    ),
    CliCase(
        "check: JSONL line nested 200,000 deep",
        check(),
        "line 1 of",
        write_text("data.jsonl", '{"id": "deep", "x": ' + "[" * DEEP + "]" * DEEP + "}\n"),
        status=1,
    ),
    CliCase(
        "check: lone surrogate in a turn",
        check(),
        "malformed text: conversations[0].value",
        surrogate_line("question"),
        status=1,
    ),
    CliCase(
        "check: lone surrogate in the id", check(), "malformed text: id holds \\ud800", surrogate_line("id"), status=1
    ),
    CliCase(
        "check: bytes that are not UTF-8",
        check(),
        "not UTF-8",
        write_files({"data.jsonl": json.dumps(record("a")).encode() + b"\n\xff\xfe{}\n"}),
        status=1,
    ),
    CliCase(
        "check: duplicate ids (a warning)",
        check(),
        "(data: 'twice' x2)",
        data_with(record("twice"), record("twice", "Again?")),
        status=0,
    ),
    CliCase(
        "check: ../ image path",
        check(data="data/data.jsonl"),
        "unsafe path: image path '../outside.png'",
        outside_image,
        status=1,
    ),
    CliCase(
        "check: absolute image path",
        check(),
        f"unsafe path: image path '{OUTSIDE[1]}'",
        data_with(record("abs", "<image>\nWhat?", image=OUTSIDE[1])),
        status=1,
    ),
    CliCase(
        "check: ../ video path",
        check(),
        "unsafe path: video path '../clip'",
        data_with({**record("clip", "<video>\nWhat?"), "video": "../clip"}),
        status=1,
    ),
    CliCase(
        "check: ../ path allowed by --allow-outside-paths",
        check("--allow-outside-paths", data="data/data.jsonl"),
        "no bad samples",
        outside_image,
        status=0,
    ),
    CliCase(
        "check: --max-length without --processor",
        check("--max-length", "5"),
        "--max-length needs --processor",
        data_with(record("a")),
    ),
    CliCase(
        "check: --processor is a file",
        lambda folder: ["data", "check", str(folder / "data.jsonl"), "--processor", str(folder / "data.jsonl")],
        "data.jsonl is not a folder",
        data_with(record("a")),
    ),
    CliCase(
        "check: --processor folder without a processor",
        lambda folder: ["data", "check", str(folder / "data.jsonl"), "--processor", str(folder)],
        "holds no usable llavakit processor",
        data_with(record("a")),
    ),
    CliCase(
        "check: --image-folder that does not exist",
        check("--image-folder", "/nonexistent/images"),
        "/nonexistent/images of dataset",
        data_with(record("a")),
    ),
    CliCase(
        "check: corrupt image",
        check(),
        "corrupt image: image",
        corrupt_image_data,
        status=1,
    ),
    CliCase(
        "check: missing image",
        check(),
        "missing image:",
        data_with(record("m", "<image>\nWhat?", image="gone.png")),
        status=1,
    ),
    CliCase(
        "check: 3000x1 image with a processor (bounded, counted)",
        lambda folder: [
            "data",
            "check",
            str(folder / "data.jsonl"),
            "--processor",
            str(folder / "processor"),
            "--max-length",
            "400",
        ],
        "no bad samples, max_length=400",
        thin_image_data,
        status=0,
    ),
]

SYNTH_CASES = [
    CliCase("synth: --test-fraction 1.0", synth("--n", "10", "--test-fraction", "1.0"), "test_fraction=1.0"),
    CliCase("synth: --test-fraction 0", synth("--n", "10", "--test-fraction", "0"), "test_fraction=0.0"),
    CliCase("synth: --test-fraction -1", synth("--n", "10", "--test-fraction", "-1"), "test_fraction=-1.0"),
    CliCase("synth: --test-fraction nan", synth("--n", "10", "--test-fraction", "nan"), "test_fraction=nan"),
    CliCase("synth: --n 0", synth("--n", "0"), "n=0: a world needs at least 2 scenes"),
    CliCase("synth: --n 1", synth("--n", "1"), "n=1: a world needs at least 2 scenes"),
    CliCase(
        "synth: --n 3 --test-fraction 0.1 (no test scene)",
        synth("--n", "3", "--test-fraction", "0.1"),
        "leaves no test scene",
    ),
    CliCase(
        "synth: non-empty output without --overwrite",
        synth("--n", "4"),
        "already holds 1 entry",
        write_files({"out/notes.txt": "keep me"}),
    ),
    CliCase("synth: output is a file", synth("--n", "4"), "is a file, not a folder", write_text("out", "a file")),
]

INSTRUCT_CASES = [
    CliCase("instruct: folder that is not a world", instruct(world_name="."), "has no scenes_train.jsonl"),
    CliCase("instruct: world that does not exist", instruct(world_name="nowhere"), "nowhere does not exist"),
    CliCase(
        "instruct: corrupt scenes file",
        instruct(),
        "scenes_train.jsonl:1",
        write_files({"world/scenes_train.jsonl": "{oops\n"}),
    ),
    CliCase(
        "instruct: teacher flags with the offline backend",
        instruct("--model", "m", "--limit", "1"),
        "--model, --limit: only for --backend openai",
        world,
    ),
    CliCase(
        "instruct: --overwrite with the openai backend",
        openai("--overwrite"),
        "--overwrite: only for --backend offline",
        world,
    ),
    CliCase(
        "instruct: offline output would replace files",
        instruct("--output", "out"),
        "already holds pretrain.json",
        world_with_pretrain_in_out,
    ),
    CliCase("instruct: openai --limit 0", openai("--limit", "0"), "limit must be >= 1, got 0", world),
    CliCase("instruct: openai --timeout 0", openai("--timeout", "0"), "(--timeout) must be a finite number", world),
    CliCase(
        "instruct: openai --max-attempts 0",
        openai("--max-attempts", "0"),
        "(--max-attempts) must be a whole number >= 1",
        world,
    ),
    CliCase("instruct: openai unknown --kinds", openai("--kinds", "pope"), "unknown instruction kinds ['pope']", world),
]


@pytest.mark.parametrize("case", CHECK_CASES + SYNTH_CASES + INSTRUCT_CASES, ids=str)
def test_data_command_misuse(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `instruct --output out` and friends resolve inside the case's folder
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    run_cli_case(case, tmp_path, capsys)


def test_refused_synth_leaves_no_folder_behind(tmp_path, capsys):
    case = CliCase("synth: --test-fraction 1.0", synth("--n", "10", "--test-fraction", "1.0"), "test_fraction=1.0")
    run_cli_case(case, tmp_path, capsys)
    assert not (tmp_path / "out").exists()


def test_synth_overwrite_replaces_the_earlier_world(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("old")
    assert main(["data", "synth", str(out), "--n", "4", "--overwrite"]) == 0
    assert not (out / "notes.txt").exists() and (out / "scenes_train.jsonl").is_file()
    assert main(["data", "instruct", str(out), "--seed", "1", "--overwrite"]) == 0
    capsys.readouterr()


# ---- the library -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiCase:
    """A library call on bad input: the typed error it must raise and what its message must name."""

    name: str
    call: Callable[[Path], object]
    error: type[LlavaKitError]
    culprit: str
    setup: Callable[[Path], None] | None = None

    def __str__(self) -> str:
        return self.name


def _dataset(folder: Path, name: str = "data.jsonl") -> LlavaDataset:
    tokenizer = build_tiny_tokenizer()
    config = tiny_llava_config(image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    processor = LlavaKitProcessor.from_model_config(tokenizer, config, "vicuna_v1")
    return LlavaDataset([DatasetSpec(folder / name)], processor, None)


API_CASES = [
    ApiCase(
        "load_records: missing file",
        lambda d: load_records(DatasetSpec(d / "no.json")),
        DataError,
        "no.json does not exist",
    ),
    ApiCase(
        "load_records: empty file",
        lambda d: load_records(DatasetSpec(d / "data.jsonl")),
        DataError,
        "holds no records",
        write_text("data.jsonl", ""),
    ),
    ApiCase(
        "LlavaDataset: deep JSON file",
        lambda d: _dataset(d, "data.json"),
        DataError,
        "nested too deeply",
        write_text("data.json", "[" * DEEP + "]" * DEEP),
    ),
    ApiCase(
        "DatasetSpec: fraction 0",
        lambda d: DatasetSpec(d / "x.json", fraction=0.0),
        ConfigError,
        "fraction must be in (0, 1]",
    ),
    ApiCase(
        "check_data: max_length without a processor",
        lambda d: check_data([DatasetSpec(d / "data.jsonl")], None, 5),
        ConfigError,
        "max_length needs a processor",
        data_with(record("a")),
    ),
    ApiCase(
        "load_image: corrupt file",
        lambda d: load_image(d / "bad.png"),
        DataError,
        "bad.png cannot be decoded",
        write_text("bad.png", "text"),
    ),
    ApiCase("load_image: missing file", lambda d: load_image(d / "gone.png"), DataError, "gone.png does not exist"),
    ApiCase(
        "write_world: test_fraction 1.0",
        lambda d: write_world(d / "w", n=5, test_fraction=1.0),
        ConfigError,
        "test_fraction=1.0",
    ),
    ApiCase(
        "LLMConfig: infinite timeout",
        lambda d: LLMConfig("m", timeout=float("inf")),
        ConfigError,
        "(--timeout) must be a finite number",
    ),
]


@pytest.mark.parametrize("case", API_CASES, ids=str)
def test_data_api_misuse_raises_typed_errors(case, tmp_path):
    if case.setup is not None:
        case.setup(tmp_path)
    before = file_hashes(tmp_path)
    with pytest.raises(case.error) as raised:
        case.call(tmp_path)
    assert case.culprit in str(raised.value), (case.name, str(raised.value))
    assert isinstance(raised.value, ValueError)  # existing `except ValueError` code keeps working
    assert file_hashes(tmp_path) == before


def test_training_skips_the_bad_samples_by_reason(tmp_path):
    """In training the same records are counted skips, never crashes: surrogate, unsafe path, deep line."""
    lines = [
        json.dumps(record("good")),
        '{"id": "sur", "conversations": [{"from": "human", "value": "hi \\ud800"}, {"from": "gpt", "value": "ok"}]}',
        json.dumps(record("up", "<image>\nWhat?", image="../outside.png")),
        '{"id": "deep", "x": ' + "[" * DEEP + "]" * DEEP + "}",
        json.dumps(record("good")),
    ]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_png(tmp_path / "outside.png")
    dataset = _dataset(tmp_path / "data")
    reasons = [dataset[i].get("skipped", "").split(":")[0] for i in range(len(dataset))]
    assert reasons == ["", "malformed text", "unsafe path", "malformed JSON", ""]
    assert dataset.duplicate_ids == [("data", "good", 2)]


def test_preprocessing_an_extreme_image_gives_the_usual_shape():
    image = Image.fromarray(np.full((1, 3000, 3), 90, dtype=np.uint8))
    for mode in ("square", "pad"):
        assert preprocess(image, ImageProcessingConfig(mode=mode, size=336)).shape == (3, 336, 336)
