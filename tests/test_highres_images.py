"""Bad and odd images through the high-resolution path: 1x1, 1x10000, grayscale, RGBA, palette,
CMYK, 16-bit, EXIF rotation come out as the right crops and token counts (pixels equal to
transformers' LlavaNext image processor on the same RGB image); a decompression bomb and a file
that does not decode get a clear error naming the file."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.llava_next.image_processing_pil_llava_next import (
    LlavaNextImageProcessorPil,
)

from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.images import load_image
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.tiny import tiny_llava_config

PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def next_kit(tiny_tokenizer):
    config = tiny_llava_config(
        tiny_tokenizer.convert_tokens_to_ids("<image>"), image_mode="anyres", image_grid_pinpoints=PINPOINTS
    )
    torch.manual_seed(0)
    model = LlavaKitForCausalLM(config).eval()
    processor = LlavaKitProcessor.from_model_config(tiny_tokenizer, config, "vicuna_v1")
    reference = LlavaNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS
    )
    return model, processor, reference


def _rgb_noise(height, width, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _odd_images() -> dict[str, Image.Image]:
    rgb = Image.fromarray(_rgb_noise(40, 70))
    rgba = np.dstack([_rgb_noise(30, 50, 1), np.random.default_rng(2).integers(0, 256, (30, 50), dtype=np.uint8)])
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 3
    return {
        "1x1": Image.fromarray(_rgb_noise(1, 1)),
        "1x10000": Image.fromarray(_rgb_noise(1, 10000)),
        "10000x1": Image.fromarray(_rgb_noise(10000, 1)),
        "grayscale": rgb.convert("L"),
        "rgba": Image.fromarray(rgba, mode="RGBA"),
        "palette": palette,
        "cmyk": rgb.convert("CMYK"),
        "1-bit": rgb.convert("1"),
    }


@pytest.mark.parametrize("name", sorted(_odd_images()))
def test_odd_images_become_the_right_crops(next_kit, name):
    model, processor, reference = next_kit
    image = _odd_images()[name]
    batch = processor("USER: <image>\nwhat? ASSISTANT:", images=image)
    rgb = load_image(image)
    expected = reference(rgb, return_tensors="pt")
    assert batch["image_sizes"].tolist() == [[image.height, image.width]]
    assert torch.equal(batch["pixel_values"], expected["pixel_values"][0])
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == model.config.image_token_count(
        image.size[::-1]
    )
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


def test_transparency_is_composited_on_white_like_transformers(next_kit):
    """transformers' RGB conversion composites alpha on white too: same pixels from the RGBA image itself."""
    _, processor, reference = next_kit
    for name in ("rgba", "palette", "grayscale", "cmyk"):
        image = _odd_images()[name]
        ours = processor("<image>", images=image)["pixel_values"]
        assert torch.equal(ours, reference(image, return_tensors="pt")["pixel_values"][0]), name


def test_sixteen_bit_and_exif_files(next_kit, tmp_path):
    model, processor, _ = next_kit
    deep = np.linspace(0, 65535, 24 * 40).reshape(24, 40).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    rgb = load_image(tmp_path / "deep.png")
    assert np.asarray(rgb)[-1, -1].tolist() == [255, 255, 255]  # scaled to 8 bits, not clipped at 255
    assert abs(int(np.asarray(rgb)[12, 0, 0]) - round(deep[12, 0] / 257)) <= 1

    upright = Image.fromarray(_rgb_noise(30, 80, 3))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: rotate 90 degrees clockwise to view
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    batch = processor("<image> and <image>", images=[tmp_path / "deep.png", tmp_path / "rotated.jpg"])
    assert batch["image_sizes"].tolist() == [[24, 40], [30, 80]]  # the viewer's orientation
    assert batch["image_num_crops"].tolist() == [1 + 2, 1 + 3]  # 24x40 -> 1x2 canvas, 30x80 -> 1x3
    with torch.no_grad():
        model(**batch)


def _png_header_only(path, width, height):
    """A PNG that declares `width` x `height` pixels but holds one empty data chunk: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


def test_bombs_and_broken_files_raise_naming_the_file(next_kit, tmp_path):
    _, processor, _ = next_kit
    bomb = _png_header_only(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises(ValueError, match="bomb.png"):
        processor("<image>", images=bomb)
    Image.fromarray(_rgb_noise(40, 40)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match=r"big.png has 40x40 pixels, more than max_pixels=1000"):
        load_image(tmp_path / "big.png", max_pixels=1000)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(ValueError, match="broken.jpg.*sample 'q7'"):
        processor.encode_conversation(
            [{"from": "human", "value": "<image>\nwhat?"}, {"from": "gpt", "value": "x"}],
            images=[tmp_path / "broken.jpg"],
            sample_id="q7",
        )
