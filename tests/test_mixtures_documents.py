"""MM1-style data: weighted mixtures, interleaved image-text documents and text-only corpora.

Mixtures draw each dataset's share of an epoch (upsampling small sources by even repetition),
the draws are a pure function of the seed and a resumed run sees the samples an uninterrupted
one sees; documents carry loss on exactly their text with every image in its place; text records
on every token; both pack with image-text pairs at the padded loss, and a 4:4:1 mixture of
captions, documents and text trains through `llavakit train`'s code path.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.data_loader import SeedableRandomSampler
from PIL import Image

from conftest import COLOURS, Sample, StopAfter, tiny_recipe, write_llava_data
from llavakit import LlavaKitForCausalLM
from llavakit.data.batching import ModalityLengthGroupedSampler, PackingCollator, PaddingCollator
from llavakit.data.check import check_data
from llavakit.data.dataset import LlavaDataset, apportion
from llavakit.data.formats import record_format
from llavakit.data.records import DatasetSpec
from llavakit.errors import ConfigError
from llavakit.processing.images import load_image
from llavakit.processing.processor import IGNORE_INDEX, LlavaKitProcessor
from llavakit.tiny import tiny_llava_config
from llavakit.train.run import make_dataset, run_training

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CAPTION_TEXT = "The colour of this picture is {}."


@pytest.fixture(scope="module")
def processor(tiny_tokenizer) -> LlavaKitProcessor:
    config = tiny_llava_config(image_token_id=tiny_tokenizer.convert_tokens_to_ids("<image>"))
    return LlavaKitProcessor.from_model_config(tiny_tokenizer, config, "plain")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def text_records(n: int, prefix: str = "t") -> list[dict]:
    return [{"id": f"{prefix}{i}", "text": f"Line {i}: one two three four five."} for i in range(n)]


def draw_counts(dataset: LlavaDataset) -> Counter:
    return Counter(dataset.dataset_name(i) for i in range(len(dataset)))


# ---- weighted mixtures -----------------------------------------------------------------------------


def test_measured_shares_over_10000_draws_match_the_weights(tmp_path, processor):
    sizes = {"captions": 120, "documents": 700, "text": 40}
    specs = [
        DatasetSpec(write_jsonl(tmp_path / f"{name}.jsonl", text_records(size, name)), weight=weight)
        for (name, size), weight in zip(sizes.items(), (45, 45, 10))
    ]
    dataset = LlavaDataset(specs, processor, None, seed=3, mixture_size=10_000)
    assert len(dataset) == 10_000
    # through the sampler the Trainer uses: the shares of the drawn order
    order = list(SeedableRandomSampler(range(len(dataset)), data_seed=7))
    shares = Counter(dataset.dataset_name(i) for i in order)
    for name, weight in zip(sizes, (0.45, 0.45, 0.10)):
        assert abs(shares[name] / 10_000 - weight) < 0.01, (name, shares)
    # weights are normalised: 45:45:10 and 0.45:0.45:0.1 draw the very same samples
    scaled = [DatasetSpec(spec.path, weight=weight) for spec, weight in zip(specs, (0.45, 0.45, 0.1))]
    again = LlavaDataset(scaled, processor, None, seed=3, mixture_size=10_000)
    assert [again.sample_id(i) for i in range(10_000)] == [dataset.sample_id(i) for i in range(10_000)]
    # a larger source than its share is drawn without repetition; a smaller one evenly
    documents = Counter(dataset.sample_id(i) for i in range(10_000) if dataset.dataset_name(i) == "documents")
    assert set(documents.values()) <= {6, 7}  # 4500 draws of 700 records
    assert apportion([4, 4, 1], 9) == [4, 4, 1] and apportion([1, 1, 1], 10) == [4, 3, 3]


def test_a_small_source_is_upsampled_evenly_and_a_large_one_downsampled(tmp_path, processor):
    small = DatasetSpec(write_jsonl(tmp_path / "small.jsonl", text_records(3, "s")), weight=0.5)
    large = DatasetSpec(write_jsonl(tmp_path / "large.jsonl", text_records(200, "l")), weight=0.5)
    dataset = LlavaDataset([small, large], processor, None, mixture_size=100)
    ids = Counter(dataset.sample_id(i) for i in range(len(dataset)))
    assert draw_counts(dataset) == {"small": 50, "large": 50}
    assert sorted(ids[f"s{i}"] for i in range(3)) == [16, 17, 17]
    assert all(ids[sample_id] == 1 for sample_id in ids if sample_id.startswith("l"))  # 50 distinct of 200
    # mixture_size defaults to the records of all sources: 203 draws, half each (101.5 -> 102 and 101)
    default = LlavaDataset([small, large], processor, None)
    assert len(default) == 203 and draw_counts(default) == {"small": 102, "large": 101}
    # the data check shows each dataset's draws per epoch
    report = check_data([small, large], processor, None, mixture_size=100)
    assert [stats.draws for stats in report.datasets] == [50, 50] and "draws" in report.render(width=200)


def test_without_weights_every_record_is_drawn_once_and_fraction_still_downsamples(tmp_path, processor):
    a = write_jsonl(tmp_path / "a.jsonl", text_records(20, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", text_records(5, "b"))
    plain = LlavaDataset([DatasetSpec(a), DatasetSpec(b)], processor, None)
    assert [plain.sample_id(i) for i in range(len(plain))] == [f"a{i}" for i in range(20)] + [f"b{i}" for i in range(5)]
    # fraction keeps its meaning (the kept records); a weight then draws its share from those records only
    halved = LlavaDataset([DatasetSpec(a, fraction=0.5), DatasetSpec(b)], processor, None)
    kept = {halved.sample_id(i) for i in range(len(halved)) if halved.dataset_name(i) == "a"}
    assert len(halved) == 15 and len(kept) == 10
    weighted = LlavaDataset([DatasetSpec(a, fraction=0.5, weight=3), DatasetSpec(b, weight=1)], processor, None)
    drawn = Counter(weighted.sample_id(i) for i in range(len(weighted)) if weighted.dataset_name(i) == "a")
    assert set(drawn) == kept and sum(drawn.values()) == 11  # 3/4 of the 15 kept records' epoch, rounded
    # mixture_size without weights scales every dataset alike
    assert draw_counts(LlavaDataset([DatasetSpec(a), DatasetSpec(b)], processor, None, mixture_size=50)) == {
        "a": 40,
        "b": 10,
    }


def test_draws_and_order_are_a_pure_function_of_seed_and_epoch(tmp_path, processor):
    caption_folder = tmp_path / "captions"
    captions = write_llava_data(
        caption_folder,
        [Sample(f"c{i}", "<image>", "red", f"{i}.png", COLOURS["red"]) for i in range(6)],
    )
    texts = write_jsonl(tmp_path / "text.jsonl", text_records(30))
    specs = [DatasetSpec(captions, weight=4), DatasetSpec(texts, weight=1)]

    def order(seed: int, epoch: int, grouped: bool) -> list[str]:
        dataset = LlavaDataset(specs, processor, None, seed=seed, mixture_size=40)
        if grouped:
            sampler = ModalityLengthGroupedSampler(dataset.modality_lengths, batch_size=4, seed=seed)
        else:
            sampler = SeedableRandomSampler(range(len(dataset)), data_seed=seed)
        sampler.set_epoch(epoch)
        return [dataset.sample_id(i) for i in sampler]

    for grouped in (False, True):
        assert order(0, 1, grouped) == order(0, 1, grouped)  # computed twice: the same sequence
        assert order(0, 1, grouped) != order(0, 2, grouped) and order(0, 1, grouped) != order(1, 1, grouped)
        assert Counter(order(0, 1, grouped)) == Counter(order(0, 2, grouped))  # one draw, reshuffled per epoch
    grouped_lengths = LlavaDataset(specs, processor, None, mixture_size=40).modality_lengths
    assert len(grouped_lengths) == 40 and sum(length > 0 for length in grouped_lengths) == 32  # 4/5 captions


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.datasets.0.weight=-1"], "'data.datasets.0.weight' must be a finite number >= 0"),
        (["data.datasets.0.weight=.inf"], "'data.datasets.0.weight' must be a finite number >= 0"),
        (["data.datasets.0.weight=0", "data.datasets.1.weight=0"], r"weight are all 0"),
        (["data.datasets.0.weight=4"], r"data\.datasets\.1\.weight null while other datasets have a weight"),
        (["data.datasets.1.format=document"], "'data.datasets.1.format' must be one of conversation, interleaved"),
        (["data.mixture_size=0"], "'data.mixture_size' must be a whole number >= 1"),
    ],
)
def test_bad_mixture_settings_name_their_key(tmp_path, overrides, message):
    two = [f"data.datasets=[{{path: {tmp_path / 'a.json'}}}, {{path: {tmp_path / 'b.jsonl'}}}]"]
    with pytest.raises(ConfigError, match=message):
        tiny_recipe("pretrain", tmp_path / "a.json", tmp_path / "out", *two, *overrides)


def test_bad_weights_in_code_are_config_errors(tmp_path, processor):
    path = write_jsonl(tmp_path / "a.jsonl", text_records(3))
    with pytest.raises(ConfigError, match="weight must be a finite number >= 0"):
        DatasetSpec(path, weight=-0.5)
    with pytest.raises(ConfigError, match="format must be one of"):
        DatasetSpec(path, format="obelics")
    with pytest.raises(ConfigError, match="every data.datasets.N.weight is 0"):
        LlavaDataset([DatasetSpec(path, weight=0), DatasetSpec(path, weight=0)], processor, None)
    with pytest.raises(ConfigError, match=r"a \(data\.datasets\.1\.weight\) has none"):
        LlavaDataset([DatasetSpec(path, weight=1), DatasetSpec(path)], processor, None)
    with pytest.raises(ConfigError, match="mixture_size must be a whole number"):
        LlavaDataset([DatasetSpec(path)], processor, None, mixture_size=0)
    # a zero weight switches one dataset off
    off = LlavaDataset([DatasetSpec(path, weight=0, name="off"), DatasetSpec(path, weight=1)], processor, None)
    assert draw_counts(off) == {"a": 6}


# ---- interleaved documents -------------------------------------------------------------------------

PALETTE = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 30), (200, 30, 200), (30, 200, 200)]


def draw_images(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        Image.new("RGB", (24 + 4 * index, 20), PALETTE[index % len(PALETTE)]).save(folder / f"img{index}.png")
        names.append(f"img{index}.png")
    return names


def obelics(texts_and_images: list[tuple[str | None, str | None]], sample_id: str) -> dict:
    return {
        "id": sample_id,
        "texts": [text for text, _ in texts_and_images],
        "images": [image for _, image in texts_and_images],
        "metadata": "[]",
    }


def document_segments(images: list[str]) -> list[tuple[str | None, str | None]]:
    """Text, then each image followed by a sentence about it."""
    segments: list[tuple[str | None, str | None]] = [("A page about colours.", None)]
    for index, name in enumerate(images):
        segments += [(None, name), (f"Picture {index} shows a colour.", None)]
    return segments


@pytest.mark.parametrize("count", [0, 1, 5])
def test_document_labels_cover_exactly_the_text_with_images_in_place(tmp_path, processor, tiny_tokenizer, count):
    names = draw_images(tmp_path, count)
    segments = document_segments(names)
    path = write_jsonl(tmp_path / "docs.jsonl", [obelics(segments, "doc")])
    item = LlavaDataset([DatasetSpec(path, format="interleaved")], processor, None)[0]
    ids, labels = item["input_ids"], item["labels"]
    image = ids == processor.image_token_id
    assert int(image.sum()) == count * processor.num_image_tokens
    assert torch.equal(labels[~image], ids[~image]) and bool((labels[image] == IGNORE_INDEX).all())
    assert ids[0] == tiny_tokenizer.bos_token_id and ids[-1] == tiny_tokenizer.eos_token_id
    # between the images, the text of the segments in order: each image sits at its place
    pieces = tiny_tokenizer.decode(ids, skip_special_tokens=False).removeprefix("<s>").removesuffix("</s>")
    texts = [chunk for chunk in pieces.split("<image>") if chunk]
    expected = [text for text, _ in segments if text is not None]
    assert [text.strip() for text in texts] == expected
    # the pixels are the images, in document order
    if count:
        reference = processor.encode_document([None] * count, [load_image(tmp_path / n) for n in names])
        assert torch.equal(item["pixel_values"], reference["pixel_values"])
    else:
        assert item["pixel_values"] is None
    assert record_format(obelics(segments, "doc")) == "interleaved"


def test_mmc4_documents_put_each_image_before_its_matched_sentence(tmp_path, processor, tiny_tokenizer):
    names = draw_images(tmp_path, 2)
    record = {
        "text_list": ["First sentence.", "Second sentence.", "Third one."],
        "image_info": [
            {"image_name": names[1], "matched_text_index": 2, "matched_sim": 0.3},
            {"image_name": names[0], "matched_text_index": 0, "matched_sim": 0.3},
        ],
    }
    path = write_jsonl(tmp_path / "mmc4.jsonl", [record])
    item = LlavaDataset([DatasetSpec(path)], processor, None)[0]
    text = tiny_tokenizer.decode(item["input_ids"]).replace("<image>" * processor.num_image_tokens, "[I]")
    assert text == "<s>[I]First sentence. Second sentence.[I]Third one.</s>"
    reference = processor.encode_document([None, None], [load_image(tmp_path / name) for name in names])
    assert torch.equal(item["pixel_values"], reference["pixel_values"])


BAD_DOCUMENTS = {
    "missing-image": ({"texts": ["Text.", None], "images": [None, "nowhere.png"]}, "missing image"),
    "both": ({"texts": ["Text.", "x"], "images": [None, "img0.png"]}, "malformed record"),
    "neither": ({"texts": ["Text.", None], "images": [None, None]}, "malformed record"),
    "text-not-a-string": ({"texts": [7], "images": [None]}, "malformed record"),
    "image-not-a-path": ({"texts": ["Text.", None], "images": [None, 3]}, "malformed record"),
    "lengths-differ": ({"texts": ["Text."], "images": [None, "img0.png"]}, "malformed record"),
    "empty": ({"texts": [], "images": []}, "empty document"),
    "images-only": ({"texts": [None, "  "], "images": ["img0.png", None]}, "empty document"),
    "placeholder-in-text": ({"texts": ["See <image> here."], "images": [None]}, "<image> count mismatch"),
    "unsafe": ({"texts": ["Text.", None], "images": [None, "../img0.png"]}, "unsafe path"),
    "mmc4-bad-index": (
        {"text_list": ["One."], "image_info": [{"image_name": "img0.png", "matched_text_index": 4}]},
        "malformed record",
    ),
    "mmc4-no-name": ({"text_list": ["One."], "image_info": [{"matched_text_index": 0}]}, "malformed record"),
    "image-first-too-long": ({"texts": [None, "Then text."], "images": ["img0.png", None]}, "over max length"),
    "empty-text": ({"text": "   "}, "empty document"),
    "text-not-string": ({"text": ["a"]}, "malformed record"),
    "text-with-image": ({"text": "A caption.", "image": "img0.png"}, "malformed record"),
}


def test_bad_documents_and_text_records_are_counted_and_reported(tmp_path, processor):
    draw_images(tmp_path / "images", 1)
    good = obelics([("A good document.", None), (None, "img0.png"), ("It ends.", None)], "good")
    records = [good] + [{"id": sample_id, **record} for sample_id, (record, _) in BAD_DOCUMENTS.items()]
    path = write_jsonl(tmp_path / "docs.jsonl", records)
    spec = DatasetSpec(path, image_folder=tmp_path / "images")
    max_length = processor.num_image_tokens  # the image-first document cannot keep any text
    report = check_data([spec], processor, max_length)
    found = {sample_id: reason.split(":")[0] for sample_id, reason in report.bad_samples}
    assert found == {sample_id: category for sample_id, (_, category) in BAD_DOCUMENTS.items()}
    dataset = LlavaDataset([spec], processor, max_length)
    skipped = [(dataset[i]["sample_id"], dataset[i]["skipped"]) for i in range(1, len(dataset))]
    assert skipped == report.bad_samples  # the lazy path finds exactly what the check finds
    reasons = dict(report.bad_samples)
    assert "segment 1 holds both a text and an image" in reasons["both"]
    assert "matched_text_index must be a sentence index in [0, 1), got 4" in reasons["mmc4-bad-index"]
    assert str(tmp_path / "images" / "nowhere.png") in reasons["missing-image"]
    assert "a text record has no images, but this one has 'image'" in reasons["text-with-image"]
    # a declared format refuses records of another
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [good])
    assert LlavaDataset([DatasetSpec(wrong, format="text")], processor, None)[0]["skipped"].startswith(
        "malformed record: a text record needs a 'text' string"
    )
    assert LlavaDataset([DatasetSpec(wrong, format="conversation")], processor, None)[0]["skipped"].startswith(
        "malformed turns"
    )


def test_long_documents_are_cut_at_max_length_never_inside_an_image(tmp_path, processor):
    names = draw_images(tmp_path, 3)
    segments = document_segments(names)
    path = write_jsonl(tmp_path / "docs.jsonl", [obelics(segments, "long")])
    spec = DatasetSpec(path)
    whole = LlavaDataset([spec], processor, None)[0]
    image = (whole["input_ids"] == processor.image_token_id).nonzero().flatten().tolist()
    tokens = processor.num_image_tokens
    second = image[tokens]  # where the second image starts
    cut = LlavaDataset([spec], processor, second + tokens // 2)[0]  # the limit falls inside the second image
    assert len(cut["input_ids"]) == second and cut["pixel_values"].shape[0] == 1
    assert torch.equal(cut["input_ids"], whole["input_ids"][:second])
    assert torch.equal(cut["pixel_values"], whole["pixel_values"][:1])
    after = LlavaDataset([spec], processor, second + tokens + 2)[0]  # inside the text after it: cut there
    assert len(after["input_ids"]) == second + tokens + 2 and after["pixel_values"].shape[0] == 2
    report = check_data([spec], processor, second + tokens // 2)
    assert report.num_bad == 0 and report.datasets[0].truncated == len(whole["input_ids"]) - second
    assert "truncated" in report.render(width=200)
    # packing and padding keep a cut document whole (it fits)
    batch = PackingCollator(max_length=second + tokens // 2)([{**cut, "sample_id": "long"}])
    assert batch["skipped_samples"] == [] and batch["input_ids"].shape == (1, second)


@pytest.mark.parametrize("mode", ["anyres", "anyres_max_2"])
def test_documents_in_a_grid_mode_count_and_cut_each_image_by_its_own_tokens(tmp_path, tiny_tokenizer, mode):
    """Each image expands to its own grid's tokens (base-only for the images of a multi-image document
    where the layout says so); a cut keeps the crops, sizes and counts of the images before it."""
    extra = {"vision": "siglip", "text": "qwen2", "vision_feature_select_strategy": "full"} if mode != "anyres" else {}
    config = tiny_llava_config(tiny_tokenizer.convert_tokens_to_ids("<image>"), image_mode=mode, **extra)
    processor = LlavaKitProcessor.from_model_config(tiny_tokenizer, config, "plain")
    sizes = [(90, 30), (40, 64)]  # width, height
    for index, size in enumerate(sizes):
        Image.new("RGB", size, PALETTE[index]).save(tmp_path / f"img{index}.png")
    segments = document_segments(["img0.png", "img1.png"])
    path = write_jsonl(tmp_path / "docs.jsonl", [obelics(segments, "grid")])
    dataset = LlavaDataset([DatasetSpec(path)], processor, None)
    whole = dataset[0]
    base_only = processor.highres.multi_image_base_only
    per_image = [processor.image_token_count((h, w), base_only=base_only) for w, h in sizes]
    assert int((whole["input_ids"] == processor.image_token_id).sum()) == sum(per_image)
    if base_only:  # OneVision: the images of a multi-image sample at base resolution
        assert whole["image_num_crops"].tolist() == [1, 1]
    else:
        assert all(count > 1 for count in whole["image_num_crops"].tolist())
    words = sum(len(text.split()) for text, _ in segments if text is not None)
    assert dataset.modality_lengths == [words + sum(per_image)]  # the estimate counts the real tokens
    second = (whole["input_ids"] == processor.image_token_id).nonzero().flatten()[per_image[0]].item()
    cut = LlavaDataset([DatasetSpec(path)], processor, second + 1)[0]
    assert len(cut["input_ids"]) == second and cut["image_sizes"].tolist() == whole["image_sizes"][:1].tolist()
    crops = int(whole["image_num_crops"][0])
    assert cut["image_num_crops"].tolist() == [crops]
    assert torch.equal(cut["pixel_values"], whole["pixel_values"][:crops])
    torch.manual_seed(0)
    model = LlavaKitForCausalLM(config).eval()
    with torch.no_grad():  # the model reads the cut sample's layout: its token count check passes
        batch = PaddingCollator(tiny_tokenizer.pad_token_id)([cut, whole])
        assert torch.isfinite(model(**{k: v for k, v in batch.items() if k != "skipped_samples"}).loss)


# ---- text-only corpora -----------------------------------------------------------------------------


def test_text_records_carry_loss_on_every_token(tmp_path, processor, tiny_tokenizer):
    records = [{"id": "short", "text": "One two three."}, {"id": "long", "text": "A longer line of plain text " * 3}]
    path = write_jsonl(tmp_path / "text.jsonl", records)
    dataset = LlavaDataset([DatasetSpec(path)], processor, None)
    items = [dataset[i] for i in range(len(dataset))]
    for item, record in zip(items, records):
        assert torch.equal(item["labels"], item["input_ids"]) and item["pixel_values"] is None
        assert tiny_tokenizer.decode(item["input_ids"]) == f"<s>{record['text']}</s>"
    batch = PaddingCollator(tiny_tokenizer.pad_token_id)(items)
    padding = batch["attention_mask"] == 0
    assert bool(padding.any())
    assert torch.equal(batch["labels"][~padding], batch["input_ids"][~padding])
    assert bool((batch["labels"][padding] == IGNORE_INDEX).all())
    assert dataset.modality_lengths[0] < 0  # text-only for modality grouping


# ---- packing = padding -----------------------------------------------------------------------------


def test_packing_documents_with_pairs_gives_the_padded_loss(tmp_path, tiny_tokenizer, processor):
    folder = tmp_path / "data"
    names = draw_images(folder, 5)
    captions = write_llava_data(
        folder,
        [Sample("c0", "<image>", "A red square.", names[0]), Sample("c1", "<image>", "A green one.", names[1])],
        "captions.json",
    )
    documents = write_jsonl(
        folder / "docs.jsonl",
        [
            obelics(document_segments([names[2], names[3]]), "d2"),
            obelics(document_segments([]), "d0"),
            obelics(document_segments([names[4]]), "d1"),
        ],
    )
    texts = write_jsonl(folder / "text.jsonl", text_records(2))
    dataset = LlavaDataset([DatasetSpec(captions), DatasetSpec(documents), DatasetSpec(texts)], processor, None)
    items = [dataset[i] for i in range(len(dataset))]
    assert all("skipped" not in item for item in items)
    config = tiny_llava_config(image_token_id=tiny_tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = LlavaKitForCausalLM(config).eval()
    lengths = [len(item["input_ids"]) for item in items]
    packed = PackingCollator(max_length=max(lengths) + min(lengths) + 4, pad_token_id=tiny_tokenizer.pad_token_id)(
        items
    )
    padded = PaddingCollator(tiny_tokenizer.pad_token_id)(items)
    assert 1 < packed["input_ids"].shape[0] < len(items)  # really packed
    with torch.no_grad():
        packed_loss = model(**{k: v for k, v in packed.items() if k != "skipped_samples"}).loss
        padded_loss = model(**{k: v for k, v in padded.items() if k != "skipped_samples"}).loss
    assert torch.isfinite(padded_loss)
    assert abs(packed_loss.item() - padded_loss.item()) < 1e-5


# ---- training through the recipe -------------------------------------------------------------------


def mm1_world(folder: Path, n: int) -> list[Path]:
    """Colour captions (plain template), documents about colour pictures, and a text corpus (4:4:1)."""
    colours = list(COLOURS)
    captions = [
        Sample(f"cap{i}", "<image>", colours[i % 4], f"c{i}.png", COLOURS[colours[i % 4]], (32, 32)) for i in range(n)
    ]
    caption_file = write_llava_data(folder, captions, "captions.json")
    documents = []
    for i in range(n):
        first, second = colours[i % 4], colours[(i + 1) % 4]
        Image.new("RGB", (32, 32), COLOURS[first]).save(folder / f"d{i}a.png")
        Image.new("RGB", (32, 32), COLOURS[second]).save(folder / f"d{i}b.png")
        documents.append(
            obelics(
                [
                    ("Two pictures.", None),
                    (None, f"d{i}a.png"),
                    (CAPTION_TEXT.format(first), None),
                    (None, f"d{i}b.png"),
                    (CAPTION_TEXT.format(second), None),
                ],
                f"doc{i}",
            )
        )
    text = [{"id": f"txt{i}", "text": "one two three four five six seven eight nine ten"} for i in range(n // 2)]
    return [caption_file, write_jsonl(folder / "documents.jsonl", documents), write_jsonl(folder / "text.jsonl", text)]


def mixture_recipe(files: list[Path], out: Path, *overrides: str):
    datasets = ", ".join(
        f"{{path: {path}, weight: {weight}, format: {fmt}}}"
        for path, weight, fmt in zip(files, (4, 4, 1), ("conversation", "interleaved", "text"))
    )
    return tiny_recipe(
        "pretrain",
        files[0],
        out,
        f"data.datasets=[{datasets}]",
        "stage.train_llm=true",  # MM1 pretrains the whole decoder on all three kinds
        "optimization.lr=3e-3",
        "optimization.global_batch_size=8",
        "optimization.per_device_batch_size=4",
        "output.plot=false",
        *overrides,
    )


@pytest.fixture()
def seen_ids(monkeypatch) -> list[str]:
    """The sample ids the training data loader asks the dataset for, in order."""
    seen: list[str] = []
    original = LlavaDataset.__getitem__

    def recording(self, index):
        item = original(self, index)
        seen.append(item["sample_id"])
        return item

    monkeypatch.setattr(LlavaDataset, "__getitem__", recording)
    return seen


def test_a_4_4_1_mixture_trains_and_a_resumed_run_draws_the_same_samples(tmp_path, seen_ids):
    files = mm1_world(tmp_path / "world", 16)  # 16 + 16 + 8 records: 40 draws per epoch, 5 steps of 8
    common = ["optimization.max_steps=12", "output.save_steps=6", "data.packing=true"]
    whole = run_training(mixture_recipe(files, tmp_path / "whole", *common))
    uninterrupted = list(seen_ids)
    losses = [loss for _, loss in whole.losses]
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5, losses
    assert whole.skipped.num_skipped == 0 and whole.skipped.seen == 12 * 8
    drawn = Counter(sample_id.rstrip("0123456789") for sample_id in uninterrupted[:40])  # the first epoch
    assert drawn == {"cap": 18, "doc": 18, "txt": 4}  # 4:4:1 of 40, from 16, 16 and 8 records

    seen_ids.clear()
    run_training(mixture_recipe(files, tmp_path / "resumed", *common), callbacks=[StopAfter(6)])
    first_part = list(seen_ids)
    assert first_part[: 6 * 8] == uninterrupted[: 6 * 8]
    seen_ids.clear()
    resumed = run_training(mixture_recipe(files, tmp_path / "resumed", *common, "output.resume=true"))
    assert resumed.global_step == 12
    assert seen_ids == uninterrupted[6 * 8 :]  # steps 7-12 (epoch 2 onwards) draw what the whole run drew
    for (_, a), (_, b) in zip(whole.losses, resumed.losses):
        assert a == pytest.approx(b, rel=1e-4)


def test_mixture_size_reaches_the_training_dataset(tmp_path, processor):
    files = mm1_world(tmp_path / "world", 4)
    config = mixture_recipe(files, tmp_path / "out", "data.mixture_size=90")
    dataset = make_dataset(config.data, processor)
    assert len(dataset) == 90 and draw_counts(dataset) == {"captions": 40, "documents": 40, "text": 10}


def test_text_only_batches_in_a_connector_only_stage_train_without_error(tmp_path):
    """Text batches reach no trainable parameter while only the connector trains; the step still runs."""
    files = mm1_world(tmp_path / "world", 8)
    datasets = f"[{{path: {files[0]}}}, {{path: {files[2]}, format: text}}]"
    config = tiny_recipe(
        "pretrain",
        files[0],
        tmp_path / "out",
        f"data.datasets={datasets}",
        "data.group_by_modality=true",  # text-only samples come in batches of their own
        "optimization.global_batch_size=4",
        "optimization.per_device_batch_size=4",
        "optimization.max_steps=3",
        "output.plot=false",
    )
    result = run_training(config)
    assert result.global_step == 3 and all(np.isfinite(loss) for _, loss in result.losses)
