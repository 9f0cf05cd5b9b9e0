"""Every high-resolution system trains from its shipped tiny recipe, two stages through `llavakit train`.

LLaVA-1.5-HD, LLaVA-NeXT, OneVision single-image, multi-image and video: each second stage
starts from the first stage's output, its loss falls, exactly the parts its recipe names change
(the vision tower only where the recipe unfreezes it), the run folder reloads, and `llavakit
export` gives a transformers model (LlavaNext / LlavaOnevision) with the same logits within 1e-4,
or, for HD's global-last layout, a clear refusal naming the nearest exportable choice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    LlavaNextForConditionalGeneration,
    LlavaOnevisionForConditionalGeneration,
    set_seed,
)

from conftest import CONFIGS
from llavakit.cli import main
from llavakit.model.checkpoint import load_checkpoint
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.train.config import load_config
from llavakit.train.model_setup import build_model_and_processor
from llavakit.train.recipes import PARTS, part_of

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

TINY = CONFIGS / "tiny"
ATOL = 1e-4
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
# Image sizes (width, height) that make different grids: wide, tall, square, small.
SIZES = [(90, 40), (40, 100), (70, 70), (30, 30)]
STEPS = ["optimization.max_steps=6", "optimization.global_batch_size=4", "optimization.per_device_batch_size=4"]


# ---- data ----------------------------------------------------------------------------------------


def _picture(folder: Path, name: str, colour: str, size: tuple[int, int], seed: int) -> str:
    """A colour picture with noise, so crops differ and a misplaced feature changes the logits."""
    noise = np.random.default_rng(seed).integers(-25, 25, (size[1], size[0], 3))
    pixels = np.clip(np.array(COLOURS[colour]) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(folder / name)
    return name


def _record(index: int, question: str, answer: str, **visuals) -> dict:
    return {
        "id": f"s{index}",
        **visuals,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
    }


def write_images(folder: Path, caption: bool) -> Path:
    """Single-image records: captions (stage 1, `plain`) or colour questions (instructions)."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(16):
        colour = list(COLOURS)[index % 4]
        image = _picture(folder, f"i{index}.png", colour, SIZES[index % len(SIZES)], index)
        if caption:
            records.append(_record(index, "<image>", f"a {colour} picture.", image=image))
        else:
            records.append(_record(index, "<image>\nWhat colour is the picture?", f"It is {colour}.", image=image))
    path = folder / ("captions.json" if caption else "instruct.json")
    path.write_text(json.dumps(records))
    return path


def write_multi_images(folder: Path) -> Path:
    """Two pictures a sample, the answer names which one is red."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(12):
        red_first = index % 2 == 0
        colours = ("red", "blue") if red_first else ("green", "red")
        images = [
            _picture(folder, f"m{index}_{k}.png", colour, SIZES[(index + k) % len(SIZES)], 100 + 2 * index + k)
            for k, colour in enumerate(colours)
        ]
        answer = "The first one." if red_first else "The second one."
        records.append(_record(index, "<image>\n<image>\nWhich picture is red?", answer, image=images))
    path = folder / "multi.json"
    path.write_text(json.dumps(records))
    return path


def write_videos(folder: Path) -> Path:
    """Videos as folders of frames (no decoder needed); one image + video sample among them."""
    records = []
    for index in range(12):
        colour = list(COLOURS)[index % 4]
        clip = folder / "videos" / f"v{index}"
        clip.mkdir(parents=True, exist_ok=True)
        for frame in range(3 + index % 3):
            _picture(clip, f"{frame:03d}.png", colour, (48, 36), 200 + 10 * index + frame)
        if index % 4 == 3:
            image = _picture(folder, f"vi{index}.png", colour, SIZES[index % len(SIZES)], 300 + index)
            question = "<image>\n<video>\nIs the video the colour of the picture?"
            records.append(_record(index, question, "Yes.", image=image, video=f"v{index}"))
        else:
            records.append(_record(index, "<video>\nWhat colour is the video?", f"It is {colour}.", video=f"v{index}"))
    path = folder / "videos.json"
    path.write_text(json.dumps(records))
    return path


# ---- runs ----------------------------------------------------------------------------------------


def train(recipe: str, data: str, out: Path, *overrides: str) -> Path:
    """`llavakit train configs/tiny/RECIPE.yaml` on `data` (a YAML list of datasets) into `out`."""
    arguments = [f"data.datasets={data}", f"output.dir={out}", "output.progress_bar=false", "output.plot=false"]
    assert main(["train", str(TINY / f"{recipe}.yaml"), *arguments, *STEPS, *overrides]) == 0
    return out


def losses(run: Path) -> list[float]:
    return [loss for _, loss in json.loads((run / "losses.json").read_text())]


def changed_parts(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    assert before.keys() == after.keys()
    return {part_of(name) for name in before if not torch.equal(before[name], after[name])}


def weights(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


@dataclass
class Probe:
    """One input that exercises the run's layout: its text and visuals."""

    text: str
    images: list[Image.Image]
    video: np.ndarray | None = None


def probe_batch(processor: LlavaKitProcessor, probe: Probe):
    images = [probe.images] if len(probe.images) > 1 else (probe.images or None)
    return processor(probe.text, images=images, videos=probe.video)


def transformers_inputs(batch, images: int) -> dict[str, torch.Tensor]:
    """llavakit's processor output in transformers' argument names (one sample)."""
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask") if key in batch}
    if "pixel_values" in batch:
        inputs |= {"pixel_values": batch["pixel_values"], "image_sizes": batch["image_sizes"]}
        inputs["batch_num_images"] = torch.tensor([images])
    if "pixel_values_videos" in batch:
        inputs["pixel_values_videos"] = batch["pixel_values_videos"][None]
    return inputs


def check_second_stage(run: Path, before: dict[str, torch.Tensor], trains: set[str]) -> None:
    """Loss falls, exactly `trains` changed, the folder reloads."""
    curve = losses(run)
    assert curve[-1] < curve[0], curve
    model, _ = load_checkpoint(run, LlavaKitProcessor)
    assert changed_parts(before, weights(model)) == trains


def check_export(run: Path, out: Path, probe: Probe, transformers_class) -> None:
    """`llavakit export` loads in transformers' class and gives llavakit's logits on `probe`."""
    assert main(["export", str(run), str(out)]) == 0
    model, processor = load_checkpoint(run, LlavaKitProcessor)
    exported = transformers_class.from_pretrained(out).eval()
    batch = probe_batch(processor, probe)
    with torch.no_grad():
        ours = model.eval()(**batch).logits
        theirs = exported(**transformers_inputs(batch, len(probe.images))).logits
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0)


def _pil(colour: str, size: tuple[int, int], seed: int) -> Image.Image:
    noise = np.random.default_rng(seed).integers(-25, 25, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.array(COLOURS[colour]) + noise, 0, 255).astype(np.uint8))


# ---- LLaVA-1.5-HD and LLaVA-NeXT -----------------------------------------------------------------


@pytest.fixture(scope="module")
def image_data(tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("images")
    captions, instruct = write_images(folder, caption=True), write_images(folder, caption=False)
    return f"[{{path: {captions}}}]", f"[{{path: {instruct}}}]"


@pytest.mark.parametrize("system", ["hd", "next"])
def test_two_stages_of_the_tiny_recipe(system, image_data, tmp_path, capsys):
    captions, instruct = image_data
    first = train(f"{system}-pretrain", captions, tmp_path / "stage1")
    assert losses(first)[-1] < losses(first)[0]
    connector = load_file(first / "trainable.safetensors")
    assert connector and all(part_of(name) == "connector" for name in connector)
    second_overrides = [f"model.connector_weights={first}"]
    second = tmp_path / "stage2"
    before = weights(start_model_from(f"{system}-finetune", instruct, second, *second_overrides))
    # the stage-1 connector is what stage 2 starts from
    assert all(torch.equal(before[name], tensor) for name, tensor in connector.items())
    train(f"{system}-finetune", instruct, second, *second_overrides)
    trains = {"connector", "llm"} | ({"vision"} if system == "next" else set())
    check_second_stage(second, before, trains)
    probe = Probe("<image>\nWhat colour is the picture?", [_pil("green", (100, 45), 7)])
    if system == "next":
        check_export(second, tmp_path / "exported", probe, LlavaNextForConditionalGeneration)
        return
    # HD puts the whole image after the crops; transformers' LlavaNext puts it first.
    capsys.readouterr()
    assert main(["export", str(second), str(tmp_path / "exported")]) == 2
    error = capsys.readouterr().err
    assert "cannot export" in error and "image_base_first" in error, error


def start_model_from(recipe: str, data: str, out: Path, *overrides: str):
    """The model a run of `recipe` would start from (built as training builds it, same seed)."""
    arguments = [f"data.datasets={data}", f"output.dir={out}", *STEPS, *overrides]
    config = load_config(TINY / f"{recipe}.yaml", arguments)
    set_seed(config.optimization.seed)
    model, _ = build_model_and_processor(config)
    return model


# ---- OneVision: stage 1, stage 1.5 (single image), OneVision stage (multi-image, video) -----------


@pytest.fixture(scope="module")
def onevision_runs(image_data, tmp_path_factory):
    """Stage 1, then stage 1.5 on single images, shared by the three OneVision tests."""
    captions, instruct = image_data
    root = tmp_path_factory.mktemp("onevision")
    first = train("onevision-stage1", captions, root / "stage1")
    overrides = [f"model.connector_weights={first}"]
    before = weights(start_model_from("onevision-stage1.5", instruct, root / "stage1.5", *overrides))
    second = train("onevision-stage1.5", instruct, root / "stage1.5", *overrides)
    return first, second, before


def test_onevision_single_image_stages(onevision_runs, tmp_path):
    first, second, before = onevision_runs
    assert losses(first)[-1] < losses(first)[0]
    check_second_stage(second, before, set(PARTS))  # stage 1.5 trains the whole model
    probe = Probe("<image>\nWhat colour is the picture?", [_pil("yellow", (110, 50), 8)])
    check_export(second, tmp_path / "exported", probe, LlavaOnevisionForConditionalGeneration)


@pytest.mark.parametrize("kind", ["multi_image", "video"])
def test_onevision_stage_on_multi_image_and_video(kind, onevision_runs, tmp_path):
    _, single, _ = onevision_runs
    data_folder = tmp_path / "data"
    data_folder.mkdir()
    data = write_multi_images(data_folder) if kind == "multi_image" else write_videos(data_folder)
    before = weights(load_checkpoint(single, LlavaKitProcessor)[0])
    run = train(
        "onevision-ov", f"[{{path: {data}, video_folder: {data_folder / 'videos'}}}]"
        if kind == "video" else f"[{{path: {data}}}]",
        tmp_path / "ov", f"model.checkpoint={single}", "data.video.frames_upbound=4",
    )  # fmt: skip
    check_second_stage(run, before, set(PARTS))
    if kind == "multi_image":
        probe = Probe("<image>\n<image>\nWhich picture is red?", [_pil("red", (90, 40), 9), _pil("blue", (40, 90), 10)])
    else:
        frames = np.stack([np.asarray(_pil("blue", (48, 36), 11 + k)) for k in range(4)])
        probe = Probe("<image>\n<video>\nIs the video the colour of the picture?", [_pil("blue", (60, 30), 12)], frames)
    check_export(run, tmp_path / "exported", probe, LlavaOnevisionForConditionalGeneration)


def write_mixed(folder: Path) -> Path:
    """One sample of each mode: text only, one image, two images, a video."""
    write_videos(folder)  # frames under folder/videos
    single = _picture(folder, "one.png", "green", (90, 40), 400)
    pair = [_picture(folder, f"two{k}.png", colour, SIZES[k], 401 + k) for k, colour in enumerate(("red", "blue"))]
    records = [
        _record(0, "What colour is grass?", "Green."),
        _record(1, "<image>\nWhat colour is the picture?", "It is green.", image=single),
        _record(2, "<image>\n<image>\nWhich picture is red?", "The first one.", image=pair),
        _record(3, "<video>\nWhat colour is the video?", "It is red.", video="v0"),
    ]
    path = folder / "mixed.json"
    path.write_text(json.dumps(records))
    return path


def test_one_batch_of_every_mode_packed_or_padded_gives_the_same_loss(onevision_runs, tmp_path):
    """Text only, single image, two images and a video in one batch: packing equals padding."""
    _, single, _ = onevision_runs
    data = write_mixed(tmp_path / "data")
    mixed = f"[{{path: {data}, video_folder: {tmp_path / 'data' / 'videos'}}}]"
    common = [
        f"model.checkpoint={single}",
        "data.group_by_modality=false",
        "optimization.max_steps=1",
        "optimization.warmup_ratio=0",
    ]
    first_loss = {}
    for layout in ("packing", "padding"):
        run = train("onevision-ov", mixed, tmp_path / layout, *common, f"data.packing={layout == 'packing'}")
        first_loss[layout] = losses(run)[0]
        skipped = json.loads((run / "skipped_samples.json").read_text())
        assert skipped["seen"] == 4 and not skipped["skipped"], skipped  # all four modes in the one batch
    assert first_loss["packing"] == pytest.approx(first_loss["padding"], abs=1e-4)
