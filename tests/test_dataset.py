"""LLaVA-format datasets: loading, mixtures, downsampling, validation and bad-sample reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from llavakit.data.check import check_data
from llavakit.data.dataset import LlavaDataset, downsample, estimate_length
from llavakit.data.records import (
    LOAD_ERROR_KEY,
    SHORT_ANSWER_PROMPT,
    DatasetSpec,
    add_response_format_prompt,
    load_records,
    validate_record,
)
from llavakit.errors import DataError
from llavakit.processing.images import load_image
from llavakit.processing.processor import IGNORE_INDEX, LlavaKitProcessor
from llavakit.processing.video import FrameSampling
from llavakit.tiny import tiny_llava_config

MAX_LENGTH = 160


@pytest.fixture(scope="module")
def processor(tiny_tokenizer) -> LlavaKitProcessor:
    config = tiny_llava_config(image_token_id=tiny_tokenizer.convert_tokens_to_ids("<image>"))
    return LlavaKitProcessor.from_model_config(tiny_tokenizer, config, "vicuna_v1")


def write_image(path, seed: int, size=(24, 18)) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


GOOD = [
    {"id": "one-image", "image": "red.png", "conversations": chat("<image>\nWhat color is the square?", "Red.")},
    {"id": "text-only", "conversations": chat("What is the capital of France?", "Paris.")},
    {
        "id": "two-images",
        "image": ["red.png", "sub/blue.png"],
        "conversations": chat("<image>\n<image>\nCompare the two images.", "The first is red.")
        + chat("And the second?", "Blue."),
    },
]
# id -> (record, expected reason category)
BAD = {
    "missing-file": ({"image": "nowhere.png", "conversations": chat("<image>\nWhat?", "A cat.")}, "missing image"),
    "corrupt-png": ({"image": "corrupt.png", "conversations": chat("<image>\nWhat?", "A cat.")}, "corrupt image"),
    "too-many-placeholders": (
        {"image": "red.png", "conversations": chat("<image>\n<image>\nWhat?", "A cat.")},
        "<image> count mismatch",
    ),
    "placeholder-without-image": ({"conversations": chat("<image>\nWhat?", "A cat.")}, "<image> count mismatch"),
    "image-without-placeholder": (
        {"image": "red.png", "conversations": chat("What?", "A cat.")},
        "<image> count mismatch",
    ),
    "empty-answer": ({"conversations": chat("What?", "  ")}, "empty turn"),
    "no-conversations": ({"image": "red.png"}, "malformed turns"),
    "empty-conversations": ({"conversations": []}, "malformed turns"),
    "unknown-role": ({"conversations": [{"from": "robot", "value": "hi"}]}, "malformed turns"),
    "two-humans": ({"conversations": [{"from": "human", "value": "a"}] * 2}, "malformed turns"),
    "no-answer": ({"conversations": [{"from": "human", "value": "Hello?"}]}, "malformed turns"),
    "bad-image-field": ({"image": 7, "conversations": chat("<image>\nWhat?", "A cat.")}, "malformed record"),
    "too-long": ({"conversations": chat("What? " * 10, "word " * 200)}, "over max length"),
    "video": ({"video": "clip.mp4", "conversations": chat("<video>\nWhat?", "A cat.")}, "unsupported"),
}


@pytest.fixture()
def data_dir(tmp_path):
    """Images (two good, one corrupt PNG) and a JSONL file with good, bad and malformed lines."""
    (tmp_path / "sub").mkdir()
    write_image(tmp_path / "red.png", 0)
    write_image(tmp_path / "sub" / "blue.png", 1, size=(30, 30))
    good_png = (tmp_path / "red.png").read_bytes()
    (tmp_path / "corrupt.png").write_bytes(good_png[: len(good_png) // 3])  # truncated: header fine, data cut
    lines = [json.dumps(record) for record in GOOD]
    lines += [json.dumps({"id": sample_id, **record}) for sample_id, (record, _) in BAD.items()]
    lines.insert(2, '{"id": "broken", "conversations": [')  # malformed JSON on line 3
    lines.insert(4, "")  # blank lines are not records
    lines.append('["a list, not an object"]')
    (tmp_path / "mix.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def expected_encoding(processor, record, folder, prompt=None):
    images = record.get("image", [])
    images = [images] if isinstance(images, str) else images
    conversation = add_response_format_prompt(record["conversations"], prompt)
    return processor.encode_conversation(conversation, images=[load_image(folder / name) for name in images])


# ---- loading ---------------------------------------------------------------------------------


def test_load_records_keeps_malformed_lines_as_reported_markers(data_dir):
    records = load_records(DatasetSpec(data_dir / "mix.jsonl"))
    assert len(records) == len(GOOD) + len(BAD) + 2  # + the malformed line and the list
    assert [r.get("id") for r in records[:2]] == ["one-image", "text-only"]
    broken = records[2]
    assert broken["id"] == "mix.jsonl:3" and broken[LOAD_ERROR_KEY].startswith("malformed JSON: line 3 of ")
    assert records[-1]["id"] == f"mix.jsonl:{len(GOOD) + len(BAD) + 3}"
    assert records[-1][LOAD_ERROR_KEY].startswith("malformed record:")


def test_load_records_json_list_and_file_errors(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(GOOD + ["oops"]))
    records = load_records(DatasetSpec(path))
    assert records[:3] == GOOD and records[3]["id"] == "data.json[3]"
    report = check_data([DatasetSpec(path)], None, None)
    reason = f"malformed record: item 3 of {path} is a JSON str, not an object"
    assert report.bad_samples[-1] == ("data.json[3]", reason)
    assert "data.json[3]" in report.render(width=300)  # printed as text, not read as rich markup
    (tmp_path / "dict.json").write_text('{"id": 1}')
    with pytest.raises(ValueError, match=r"dict\.json must hold a JSON list"):
        load_records(DatasetSpec(tmp_path / "dict.json"))
    (tmp_path / "cut.json").write_text('[{"id": 1}')
    with pytest.raises(ValueError, match=r"cut\.json is not valid JSON"):
        load_records(DatasetSpec(tmp_path / "cut.json"))
    with pytest.raises(ValueError, match=r"missing\.json does not exist"):
        load_records(DatasetSpec(tmp_path / "missing.json"))
    (tmp_path / "data.csv").write_text("id\n")
    with pytest.raises(ValueError, match=r"\.json .* or \.jsonl"):
        load_records(DatasetSpec(tmp_path / "data.csv"))
    with pytest.raises(ValueError, match="fraction"):
        DatasetSpec(path, fraction=0.0)


# ---- validation and the report ---------------------------------------------------------------


def test_every_bad_sample_is_reported_with_its_id_and_reason(data_dir, processor):
    report = check_data([DatasetSpec(data_dir / "mix.jsonl")], processor, MAX_LENGTH)
    found = dict(report.bad_samples)
    expected = {sample_id: category for sample_id, (_, category) in BAD.items()}
    expected["mix.jsonl:3"] = "malformed JSON"
    expected[f"mix.jsonl:{len(GOOD) + len(BAD) + 3}"] = "malformed record"
    assert {sample_id: reason.split(":")[0] for sample_id, reason in found.items()} == expected
    assert len(report.bad_samples) == len(expected)  # each once
    assert str(data_dir / "nowhere.png") in found["missing-file"]
    assert "corrupt.png" in found["corrupt-png"]
    assert "2 <image> placeholder(s) but 1 image(s)" in found["too-many-placeholders"]
    assert f"> max_length={MAX_LENGTH}" in found["too-long"]
    # Counts: the good samples only, tokens as the processor encodes them.
    encoded = [expected_encoding(processor, record, data_dir) for record in GOOD]
    assert (report.num_samples, report.num_good, report.num_bad) == (len(GOOD) + len(expected), 3, len(expected))
    assert (report.num_images, report.num_text_only) == (3, 1)
    assert report.num_tokens == sum(len(e["input_ids"]) for e in encoded)
    assert report.num_answer_tokens == sum(int((e["labels"] != IGNORE_INDEX).sum()) for e in encoded)
    assert report.datasets[0].longest == max(len(e["input_ids"]) for e in encoded)
    text = report.render(width=200)
    for sample_id, reason in report.bad_samples:
        assert sample_id in text and reason[:40] in text
    assert "missing image: 1" in text and "tokens" in text


def test_validate_record_agrees_with_the_report_and_works_without_a_processor(data_dir, processor):
    for sample_id, (record, category) in BAD.items():
        reason = validate_record(record, data_dir, processor, MAX_LENGTH)
        assert reason is not None and reason.startswith(category + ":"), (sample_id, reason)
    for record in GOOD:
        assert validate_record(record, data_dir, processor, MAX_LENGTH) is None
    chat_form = {
        "image": "red.png",
        "conversations": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
            {"role": "assistant", "content": "Red."},
        ],
    }
    assert validate_record(chat_form, data_dir, processor, MAX_LENGTH) is None
    assert validate_record({**chat_form, "image": []}, data_dir, processor, None).startswith("<image> count mismatch")
    # Without a processor: files and structure are still checked, length is not.
    assert validate_record(BAD["too-long"][0], data_dir, None, MAX_LENGTH) is None
    assert validate_record(BAD["corrupt-png"][0], data_dir, None, None).startswith("corrupt image:")
    report = check_data([DatasetSpec(data_dir / "mix.jsonl")], None, None)
    assert report.num_bad == len(BAD) + 1 and report.num_tokens == 0 and "tokens" not in report.render()


# ---- the training dataset --------------------------------------------------------------------


def test_items_match_the_processor_and_bad_ones_are_skipped_not_raised(data_dir, processor):
    dataset = LlavaDataset([DatasetSpec(data_dir / "mix.jsonl")], processor, MAX_LENGTH)
    report = check_data([DatasetSpec(data_dir / "mix.jsonl")], processor, MAX_LENGTH)
    assert len(dataset) == report.num_samples
    skipped = []
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["sample_id"] == dataset.sample_id(index)
        if "skipped" in item:
            skipped.append((item["sample_id"], item["skipped"]))
    assert skipped == report.bad_samples  # the lazy path finds exactly what the check finds
    two = dataset[3]  # line order: one-image, text-only, broken, two-images
    assert two["sample_id"] == "two-images"
    reference = expected_encoding(processor, GOOD[2], data_dir)
    for key in ("input_ids", "labels", "attention_mask", "pixel_values"):
        assert torch.equal(two[key], reference[key]), key
    assert two["pixel_values"].shape == (2, 3, 32, 32)
    assert dataset[1]["pixel_values"] is None


def test_images_are_read_lazily(tmp_path, processor):
    (tmp_path / "data.json").write_text(json.dumps(GOOD[:1]))
    dataset = LlavaDataset([DatasetSpec(tmp_path / "data.json")], processor, MAX_LENGTH)  # red.png not written yet
    assert dataset[0] == {"skipped": f"missing image: {tmp_path / 'red.png'} does not exist", "sample_id": "one-image"}
    write_image(tmp_path / "red.png", 0)
    assert dataset[0]["input_ids"].shape[0] > processor.num_image_tokens
    (tmp_path / "red.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert dataset[0]["skipped"].startswith("corrupt image:")


def test_image_folder_defaults_to_the_data_files_folder_and_can_be_elsewhere(tmp_path, processor):
    (tmp_path / "images").mkdir()
    write_image(tmp_path / "images" / "red.png", 0)
    (tmp_path / "data.json").write_text(json.dumps(GOOD[:1]))
    assert "skipped" in LlavaDataset([DatasetSpec(tmp_path / "data.json")], processor, None)[0]
    spec = DatasetSpec(tmp_path / "data.json", image_folder=tmp_path / "images")
    assert "skipped" not in LlavaDataset([spec], processor, None)[0]


def test_response_format_prompt_is_appended_to_every_human_turn_once(tmp_path, processor, tiny_tokenizer):
    record = GOOD[2]
    prompted = add_response_format_prompt(record["conversations"], SHORT_ANSWER_PROMPT)
    human = [turn["value"] for turn in prompted if turn["from"] == "human"]
    assert human == [
        "<image>\n<image>\nCompare the two images.\n" + SHORT_ANSWER_PROMPT,
        "And the second?\n" + SHORT_ANSWER_PROMPT,
    ]
    assert [t["value"] for t in prompted if t["from"] == "gpt"] == ["The first is red.", "Blue."]
    assert add_response_format_prompt(prompted, SHORT_ANSWER_PROMPT) == prompted  # not doubled
    assert record["conversations"][0]["value"] == "<image>\n<image>\nCompare the two images."  # input untouched
    chat_form = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
    assert add_response_format_prompt(chat_form, "Short.")[0]["content"][-1] == {"type": "text", "text": "Short."}
    # Through the dataset: the prompt is in the tokens, unlabelled.
    write_image(tmp_path / "red.png", 0)
    (tmp_path / "data.json").write_text(json.dumps(GOOD[:2]))
    spec = DatasetSpec(tmp_path / "data.json", response_format_prompt=SHORT_ANSWER_PROMPT)
    item = LlavaDataset([spec], processor, None)[1]
    assert SHORT_ANSWER_PROMPT in tiny_tokenizer.decode(item["input_ids"])
    # the answer and the space before it (written after "ASSISTANT:") carry the labels
    assert tiny_tokenizer.decode(item["labels"][item["labels"] != IGNORE_INDEX]) == " Paris.</s>"
    reference = expected_encoding(processor, GOOD[1], tmp_path, SHORT_ANSWER_PROMPT)
    assert torch.equal(item["input_ids"], reference["input_ids"])


# ---- mixtures and downsampling ---------------------------------------------------------------


def test_downsampling_is_seeded_and_keeps_file_order(tmp_path, processor):
    records = [{"id": f"s{i}", "conversations": chat(f"Question {i}?", "Yes.")} for i in range(100)]
    (tmp_path / "a.json").write_text(json.dumps(records))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in records[:10]))
    specs = [DatasetSpec(tmp_path / "a.json", fraction=0.3), DatasetSpec(tmp_path / "b.jsonl", name="short")]

    def ids(seed):
        dataset = LlavaDataset(specs, processor, None, seed=seed)
        return [dataset.sample_id(i) for i in range(len(dataset))]

    first = ids(0)
    assert len(first) == 30 + 10 and first == ids(0) and first[:30] != ids(1)[:30]
    picked = [int(sample_id[1:]) for sample_id in first[:30]]
    assert picked == sorted(set(picked)) and min(picked) >= 0 and max(picked) < 100
    assert first[30:] == [f"s{i}" for i in range(10)]  # fraction 1: everything, in order
    dataset = LlavaDataset(specs, processor, None)
    assert dataset.dataset_name(0) == "a" and dataset.dataset_name(39) == "short"
    report = check_data(specs, processor, None)
    counts = [(s.name, s.records, s.samples, s.good) for s in report.datasets]
    assert counts == [("a", 100, 30, 30), ("short", 10, 10, 10)]
    assert "total" in report.render()
    assert downsample(list(range(3)), 0.01, seed=0) != []  # at least one record is kept
    assert len(downsample(list(range(10)), 0.25, seed=0)) == 2  # round(2.5) == 2


def test_modality_lengths_are_cheap_signed_estimates(data_dir, processor):
    dataset = LlavaDataset([DatasetSpec(data_dir / "mix.jsonl")], processor, MAX_LENGTH)
    lengths = dataset.modality_lengths
    tokens = processor.num_image_tokens
    # one-image: "<image>\nWhat color is the square?" (6 words) + "Red." (1) + 1 image
    assert lengths[0] == 7 + tokens
    assert lengths[1] == -(6 + 1)  # text-only, negative
    assert lengths[2] == -1  # the malformed line
    assert lengths[3] == (6 + 4 + 3 + 1) + 2 * tokens  # two images
    assert all(length != 0 for length in lengths) and len(lengths) == len(dataset)
    assert estimate_length({"conversations": []}, tokens) == -1


# ---- video records ---------------------------------------------------------------------------


def video_processor(tokenizer, max_frames: int = 4) -> LlavaKitProcessor:
    config = tiny_llava_config(
        tokenizer.convert_tokens_to_ids("<image>"), video_token_id=tokenizer.convert_tokens_to_ids("<video>")
    )
    return LlavaKitProcessor.from_model_config(
        tokenizer, config, "vicuna_v1", video_sampling=FrameSampling(max_frames=max_frames)
    )


def write_frames(folder, count: int) -> None:
    folder.mkdir(parents=True)
    for index in range(count):
        Image.new("RGB", (20, 16), (index * 30, 10, 0)).save(folder / f"frame_{index}.png")


VIDEO_GOOD = [
    {"id": "clip", "video": "frames", "conversations": chat("<video>\nWhat happens?", "A square fades in.")},
    {
        "id": "clip-and-image",
        "video": ["frames"],
        "image": "red.png",
        "conversations": chat("<image>\n<video>\nDoes the clip show this?", "Yes."),
    },
]
VIDEO_BAD = {
    "missing-video": ({"video": "nowhere", "conversations": chat("<video>\nWhat?", "A cat.")}, "missing video"),
    "no-frames": ({"video": "empty", "conversations": chat("<video>\nWhat?", "A cat.")}, "corrupt video"),
    "no-placeholder": ({"video": "frames", "conversations": chat("What?", "A cat.")}, "<video> count mismatch"),
    "placeholder-only": ({"conversations": chat("<video>\nWhat?", "A cat.")}, "<video> count mismatch"),
    "bad-video-field": (
        {"video": ["frames", 3], "conversations": chat("<video>\nWhat?", "A cat.")},
        "malformed record",
    ),
}


@pytest.fixture()
def video_dir(tmp_path):
    """A frame folder (6 frames), an empty folder, an image, and a file of good and bad video records."""
    write_frames(tmp_path / "videos" / "frames", 6)
    (tmp_path / "videos" / "empty").mkdir()
    write_image(tmp_path / "red.png", 0)
    records = VIDEO_GOOD + [{"id": sample_id, **record} for sample_id, (record, _) in VIDEO_BAD.items()]
    (tmp_path / "videos.json").write_text(json.dumps(records))
    return tmp_path


def test_video_records_are_encoded_as_the_processor_encodes_the_path(video_dir, tiny_tokenizer):
    processor = video_processor(tiny_tokenizer)
    spec = DatasetSpec(video_dir / "videos.json", video_folder=video_dir / "videos")
    dataset = LlavaDataset([spec], processor, None)
    clip = dataset[0]
    reference = processor.encode_conversation(VIDEO_GOOD[0]["conversations"], videos=[video_dir / "videos" / "frames"])
    for key in ("input_ids", "labels", "pixel_values_videos", "video_num_frames"):
        assert torch.equal(clip[key], reference[key]), key
    assert clip["video_num_frames"].tolist() == [4] and clip["pixel_values"] is None
    both = dataset[1]
    assert both["pixel_values"].shape == (1, 3, 32, 32) and both["video_num_frames"].tolist() == [4]
    assert int((both["input_ids"] == processor.video_token_id).sum()) == processor.video.num_tokens(4)
    # Bad videos are counted skips with their reasons, the same in training and in the check.
    skipped = {dataset[i]["sample_id"]: dataset[i]["skipped"] for i in range(2, len(dataset))}
    assert {sample_id: reason.split(":")[0] for sample_id, reason in skipped.items()} == {
        sample_id: category for sample_id, (_, category) in VIDEO_BAD.items()
    }
    assert str(video_dir / "videos" / "nowhere") in skipped["missing-video"]
    assert "holds no frame images" in skipped["no-frames"]
    assert "0 <video> placeholder(s) but 1 video(s)" in skipped["no-placeholder"]
    report = check_data([spec], processor, None)
    assert report.bad_samples == list(skipped.items())
    assert (report.num_good, report.num_videos, report.num_images, report.num_text_only) == (2, 2, 1, 0)
    assert report.num_tokens == len(clip["input_ids"]) + len(both["input_ids"])
    assert "videos" in report.render(width=200)
    # Without a processor the files are still checked; `<video>` in a record without videos is plain
    # text then (as for a model without video input), so "placeholder-only" passes.
    unchecked = [bad for bad in report.bad_samples if bad[0] != "placeholder-only"]
    assert check_data([spec], None, None).bad_samples == unchecked
    # A model without video input cannot take video records.
    fixed = LlavaKitProcessor.from_model_config(
        tiny_tokenizer, tiny_llava_config(tiny_tokenizer.convert_tokens_to_ids("<image>")), "vicuna_v1"
    )
    assert LlavaDataset([spec], fixed, None)[0]["skipped"].startswith("unsupported: video samples need")


def test_video_files_decode_or_are_skipped_as_corrupt(tmp_path, tiny_tokenizer):
    av = pytest.importorskip("av")
    with av.open(str(tmp_path / "clip.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for level in range(0, 200, 20):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), level, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x01 not a video " * 40)
    records = [
        {"id": "file", "video": "clip.mp4", "conversations": chat("<video>\nWhat?", "Grey.")},
        {"id": "broken", "video": "broken.mp4", "conversations": chat("<video>\nWhat?", "Grey.")},
    ]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    processor = video_processor(tiny_tokenizer, max_frames=3)
    dataset = LlavaDataset([DatasetSpec(tmp_path / "data.jsonl")], processor, None)
    reference = processor.encode_conversation(records[0]["conversations"], videos=[tmp_path / "clip.mp4"])
    assert torch.equal(dataset[0]["pixel_values_videos"], reference["pixel_values_videos"])
    assert dataset[0]["video_num_frames"].tolist() == [3]
    assert dataset[1]["skipped"].startswith("corrupt video: video file") and "broken.mp4" in dataset[1]["skipped"]


# ---- length estimates in the grid and video modes --------------------------------------------


def words(record) -> int:
    return sum(len(turn["value"].split()) for turn in record["conversations"])


def visual_tokens(processor, encoded) -> int:
    ids = encoded["input_ids"].tolist()
    return ids.count(processor.image_token_id) + (ids.count(processor.video_token_id) if processor.video else 0)


def test_modality_lengths_use_the_real_grid_and_video_token_counts(tmp_path, tiny_tokenizer):
    config = tiny_llava_config(
        tiny_tokenizer.convert_tokens_to_ids("<image>"),
        image_mode="anyres",
        video_token_id=tiny_tokenizer.convert_tokens_to_ids("<video>"),
    )
    processor = LlavaKitProcessor.from_model_config(
        tiny_tokenizer, config, "vicuna_v1", video_sampling=FrameSampling(max_frames=4)
    )
    write_image(tmp_path / "wide.png", 0, size=(90, 30))
    write_image(tmp_path / "tall.png", 1, size=(20, 70))
    rotated = Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 90, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 90x30, shown 30x90 after rotation
    rotated.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    whole = (tmp_path / "wide.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])  # header intact, pixels cut
    write_frames(tmp_path / "frames", 6)
    records = [
        {"id": "wide", "image": "wide.png", "conversations": chat("<image>\nWhat is this?", "Noise.")},
        {"id": "rotated", "image": "rotated.jpg", "conversations": chat("<image>\nAnd this?", "Noise too.")},
        {"id": "two", "image": ["wide.png", "tall.png"], "conversations": chat("<image> <image> Compare.", "Same.")},
        {"id": "clip", "video": "frames", "conversations": chat("<video>\nWhat happens?", "It gets red.")},
        {"id": "cut", "image": "cut.png", "conversations": chat("<image>\nWhat?", "Noise.")},
        {"id": "gone", "image": "gone.png", "conversations": chat("<image>\nWhat?", "Noise.")},
        {"id": "text", "conversations": chat("Hi there?", "Hello.")},
    ]
    (tmp_path / "data.json").write_text(json.dumps(records))
    dataset = LlavaDataset([DatasetSpec(tmp_path / "data.json")], processor, None)
    lengths = dataset.modality_lengths
    for index in range(4):  # decodable samples: the estimate's visual part is exactly the encoding's
        assert lengths[index] == words(records[index]) + visual_tokens(processor, dataset[index]), records[index]["id"]
    assert lengths[0] > words(records[0]) + processor.image_token_count(base_only=True)  # more than base-only
    assert dataset[4]["skipped"].startswith("corrupt image")
    assert lengths[4] == words(records[4]) + processor.image_token_count((30, 90))  # from the header alone
    assert lengths[5] == words(records[5]) + processor.image_token_count(base_only=True)  # unreadable: base-only
    assert lengths[6] == -words(records[6])
    assert dataset.modality_lengths == lengths


def test_modality_lengths_count_multi_image_samples_at_base_resolution(tmp_path, tiny_tokenizer):
    config = tiny_llava_config(
        tiny_tokenizer.convert_tokens_to_ids("<image>"),
        vision="siglip",
        text="qwen2",
        vision_feature_select_strategy="full",
        image_mode="anyres_max_2",
    )
    processor = LlavaKitProcessor.from_model_config(tiny_tokenizer, config, "chatml")
    write_image(tmp_path / "a.png", 0, size=(90, 30))
    write_image(tmp_path / "b.png", 1, size=(40, 64))
    records = [
        {"id": "one", "image": "a.png", "conversations": chat("<image>\nWhat?", "Noise.")},
        {"id": "two", "image": ["a.png", "b.png"], "conversations": chat("<image>\n<image>\nCompare.", "Same.")},
    ]
    (tmp_path / "data.json").write_text(json.dumps(records))
    dataset = LlavaDataset([DatasetSpec(tmp_path / "data.json")], processor, None)
    base = processor.image_token_count(base_only=True)
    assert dataset.modality_lengths[1] == words(records[1]) + 2 * base
    assert dataset[1]["image_num_crops"].tolist() == [1, 1]
    for index, record in enumerate(records):
        assert dataset.modality_lengths[index] == words(record) + visual_tokens(processor, dataset[index])


# ---- paths, text, duplicates and empty files -------------------------------------------------------


def test_paths_stay_inside_the_image_folder_unless_the_dataset_allows_it(tmp_path, processor):
    (tmp_path / "data").mkdir()
    write_image(tmp_path / "outside.png", 0)
    records = [
        {"id": "up", "image": "../outside.png", "conversations": chat("<image>\nWhat?", "Noise.")},
        {"id": "abs", "image": str(tmp_path / "outside.png"), "conversations": chat("<image>\nWhat?", "Noise.")},
        {"id": "dotted", "image": "./../outside.png", "conversations": chat("<image>\nWhat?", "Noise.")},
    ]
    (tmp_path / "data" / "data.json").write_text(json.dumps(records))
    strict = check_data([DatasetSpec(tmp_path / "data" / "data.json")], processor, None)
    assert [reason.split(":")[0] for _, reason in strict.bad_samples] == ["unsafe path"] * 3
    assert "allow_outside_paths" in strict.bad_samples[0][1]
    spec = DatasetSpec(tmp_path / "data" / "data.json", allow_outside_paths=True)
    assert check_data([spec], processor, None).num_bad == 0
    dataset = LlavaDataset([spec], processor, None)
    assert all("skipped" not in dataset[i] for i in range(3))
    assert LlavaDataset([DatasetSpec(tmp_path / "data" / "data.json")], processor, None)[0]["skipped"].startswith(
        "unsafe path: image path '../outside.png'"
    )


def test_duplicate_ids_are_reported_but_every_sample_is_used(tmp_path, processor):
    records = [{"id": sample_id, "conversations": chat("Hi?", "Hello.")} for sample_id in ("a", "b", "a", "a", 7, "7")]
    (tmp_path / "data.json").write_text(json.dumps(records))
    report = check_data([DatasetSpec(tmp_path / "data.json")], processor, None)
    assert report.num_bad == 0 and report.num_good == 6
    assert "2 sample id(s) repeat within a dataset (data: 'a' x3, data: '7' x2)" in report.render(width=400)
    assert LlavaDataset([DatasetSpec(tmp_path / "data.json")], processor, None).duplicate_ids == [
        ("data", "a", 3),
        ("data", "7", 2),
    ]


def test_text_that_is_not_unicode_and_files_with_a_bom(tmp_path, processor):
    good = json.dumps({"id": "ok", "conversations": chat("Hi?", "Hello.")})
    surrogate = '{"id": "s", "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "\\udfff"}]}'
    (tmp_path / "data.jsonl").write_bytes(b"\xef\xbb\xbf" + f"{good}\n{surrogate}\n".encode())
    report = check_data([DatasetSpec(tmp_path / "data.jsonl")], processor, None)
    assert report.num_good == 1
    assert report.bad_samples == [
        ("s", "malformed text: conversations[1].value holds \\udfff, a lone surrogate, not a character")
    ]
    (tmp_path / "data.json").write_bytes(b"\xef\xbb\xbf" + f"[{good}]".encode())
    assert len(load_records(DatasetSpec(tmp_path / "data.json"))) == 1


def test_files_without_records_and_unreadable_files_are_data_errors(tmp_path):
    for name, text, message in [
        ("blank.jsonl", "\n \n", "holds no records"),
        ("empty.json", "[]", "holds no records"),
        ("latin1.json", None, "not UTF-8"),
    ]:
        path = tmp_path / name
        path.write_bytes(b'[{"id": "caf\xe9"}]') if text is None else path.write_text(text)
        with pytest.raises(DataError, match=message):
            load_records(DatasetSpec(path))
    with pytest.raises(DataError, match="is not a folder"):
        load_records(DatasetSpec(tmp_path / "empty.json", image_folder=tmp_path / "nowhere"))
