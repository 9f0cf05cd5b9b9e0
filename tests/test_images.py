"""Image decoding and preprocessing, compared number for number with transformers' image processors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from llavakit.errors import DataError
from llavakit.processing.images import (
    CLIP_MEAN,
    CLIP_STD,
    ImageProcessingConfig,
    expand_to_square,
    load_image,
    preprocess,
)

SIGLIP = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def reference(image: Image.Image, config: ImageProcessingConfig) -> np.ndarray:
    """transformers' output for the same recipe: CLIP for `square`, LLaVA-1.5 (do_pad) for `pad`."""
    kwargs = dict(
        size={"shortest_edge": config.size},
        crop_size={"height": config.size, "width": config.size},
        image_mean=list(config.mean),
        image_std=list(config.std),
    )
    if config.mode == "pad":
        processor = LlavaImageProcessorPil(do_pad=True, **kwargs)
    else:
        processor = CLIPImageProcessorPil(**kwargs)
    return processor(image, return_tensors="np")["pixel_values"][0]


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def smooth_image(height: int, width: int) -> Image.Image:
    """A photo-like image: smooth gradients, where bicubic overshoot and rounding matter."""
    y, x = np.mgrid[0:height, 0:width]
    channels = [128 + 127 * np.sin(x / 7.0 + c) * np.cos(y / 5.0 - c) for c in range(3)]
    return Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8))


# (height, width): square, landscape, portrait, odd sizes, smaller than the target (upsampling), tall strip.
SHAPES = [(32, 32), (37, 53), (53, 37), (33, 32), (7, 9), (120, 45), (5, 80)]


@pytest.mark.parametrize("mode", ["square", "pad"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("size", [24, 32])
def test_preprocess_matches_transformers_on_random_images(mode, shape, size):
    image = random_image(*shape)
    config = ImageProcessingConfig(mode=mode, size=size)
    ours = preprocess(image, config)
    assert ours.shape == (3, size, size) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference(image, config), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["square", "pad"])
@pytest.mark.parametrize("normalization", [(CLIP_MEAN, CLIP_STD), SIGLIP], ids=["clip", "siglip"])
def test_preprocess_matches_transformers_on_smooth_images(mode, normalization):
    image = smooth_image(90, 140)
    config = ImageProcessingConfig(mode=mode, size=48, mean=normalization[0], std=normalization[1])
    np.testing.assert_allclose(preprocess(image, config), reference(image, config), atol=1e-5, rtol=0)


@pytest.mark.parametrize("photo", ["chelsea", "coffee"])
@pytest.mark.parametrize("mode", ["square", "pad"])
def test_preprocess_matches_transformers_on_real_photos(photo, mode):
    data = pytest.importorskip("skimage.data")
    image = Image.fromarray(getattr(data, photo)())
    config = ImageProcessingConfig(mode=mode, size=64)
    np.testing.assert_allclose(preprocess(image, config), reference(image, config), atol=1e-5, rtol=0)


def test_pad_mode_keeps_the_whole_image_and_fills_with_the_mean():
    image = Image.fromarray(np.full((4, 8, 3), 200, dtype=np.uint8))  # landscape: pads above and below
    config = ImageProcessingConfig(mode="pad", size=8, resample="nearest")
    assert config.fill_color == (122, 116, 104)  # int(x * 255) of CLIP's mean, truncated as LLaVA-1.5 does
    pixels = preprocess(image, config)
    mean, std = np.array(CLIP_MEAN, np.float32), np.array(CLIP_STD, np.float32)
    fill = (np.array(config.fill_color) / 255 - mean) / std
    inside = (200 / 255 - mean) / std
    np.testing.assert_allclose(pixels[:, :2, :], np.broadcast_to(fill[:, None, None], (3, 2, 8)), atol=1e-6)
    np.testing.assert_allclose(pixels[:, 2:6, :], np.broadcast_to(inside[:, None, None], (3, 4, 8)), atol=1e-6)
    np.testing.assert_allclose(pixels[:, 6:, :], np.broadcast_to(fill[:, None, None], (3, 2, 8)), atol=1e-6)
    cropped = preprocess(image, ImageProcessingConfig(mode="square", size=8, resample="nearest"))
    np.testing.assert_allclose(cropped, np.broadcast_to(inside[:, None, None], (3, 8, 8)), atol=1e-6)


def test_expand_to_square_centres_the_image():
    portrait = Image.fromarray(np.full((6, 3, 3), 9, dtype=np.uint8))
    square = np.asarray(expand_to_square(portrait, (1, 2, 3)))
    assert square.shape == (6, 6, 3)
    assert (square[:, 1:4] == 9).all()  # left offset (6 - 3) // 2 = 1
    assert (square[:, 0] == (1, 2, 3)).all() and (square[:, 4:] == (1, 2, 3)).all()


def test_preprocess_accepts_uint8_arrays_and_rejects_others():
    array = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    config = ImageProcessingConfig(mode="square", size=16)
    np.testing.assert_array_equal(preprocess(array, config), preprocess(Image.fromarray(array), config))
    with pytest.raises(ValueError, match="uint8"):
        preprocess(array.astype(np.float32), config)


def test_config_validation_and_dict_round_trip():
    config = ImageProcessingConfig(mode="square", size=224, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    assert config.mean == (0.5, 0.5, 0.5)
    assert ImageProcessingConfig.from_dict(config.to_dict()) == config
    for bad in [dict(mode="anyres"), dict(resample="box"), dict(size=0), dict(std=(1.0, 0.0, 1.0)), dict(mean=(0.5,))]:
        with pytest.raises(ValueError):
            ImageProcessingConfig(**bad)


# ---- load_image -------------------------------------------------------------------------------


def png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def test_load_image_from_path_bytes_and_pil_gives_the_same_rgb(tmp_path):
    image = random_image(10, 12)
    path = tmp_path / "photo.png"
    image.save(path)
    for source in (path, str(path), path.read_bytes(), image):
        loaded = load_image(source)
        assert loaded.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(loaded), np.asarray(image))


def test_exif_orientation_is_applied():
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0)  # red in the top-left corner of a 3 wide x 2 high image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    loaded = np.asarray(load_image(png_bytes(Image.fromarray(pixels), exif=exif)))
    assert loaded.shape == (3, 2, 3)  # now 2 wide x 3 high
    assert tuple(loaded[0, 1]) == (255, 0, 0)  # the top-left corner turned to the top-right
    assert loaded[..., 0].sum() == 255


def sixteen_bit(values, dtype):
    return Image.fromarray(np.array([values], dtype=dtype))


MODES = {
    # name: (image, expected RGB of its pixels)
    "RGBA transparent -> white": (Image.new("RGBA", (2, 1), (10, 20, 30, 0)), [(255, 255, 255)] * 2),
    "RGBA opaque": (Image.new("RGBA", (2, 1), (10, 20, 30, 255)), [(10, 20, 30)] * 2),
    "LA half transparent": (Image.new("LA", (1, 1), (0, 128)), [(127, 127, 127)]),
    "L": (Image.new("L", (1, 1), 77), [(77, 77, 77)]),
    "1": (Image.new("1", (1, 1), 1), [(255, 255, 255)]),
    "CMYK cyan": (Image.new("CMYK", (1, 1), (255, 0, 0, 0)), [(0, 255, 255)]),
    "I;16": (sixteen_bit([0, 257 * 100, 65535], np.uint16), [(0, 0, 0), (100, 100, 100), (255, 255, 255)]),
    "I;16B": (sixteen_bit([0, 257 * 100, 65535], ">u2"), [(0, 0, 0), (100, 100, 100), (255, 255, 255)]),
    "I 16-bit range": (sixteen_bit([0, 257 * 100, 65535], np.int32), [(0, 0, 0), (100, 100, 100), (255, 255, 255)]),
    "F in [0, 1]": (sixteen_bit([0.0, 0.5, 1.0], np.float32), [(0, 0, 0), (128, 128, 128), (255, 255, 255)]),
}


@pytest.mark.parametrize("case", sorted(MODES))
def test_every_mode_becomes_rgb(case):
    image, expected = MODES[case]
    loaded = load_image(image)
    assert loaded.mode == "RGB"
    assert [tuple(int(v) for v in p) for p in np.asarray(loaded).reshape(-1, 3)] == expected


def test_palette_with_transparency_is_composited_on_white():
    image = Image.new("P", (2, 1), 0)
    image.putpalette([10, 20, 30] + [200, 100, 50] * 255)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    assert [tuple(p) for p in np.asarray(load_image(image)).reshape(-1, 3)] == [(255, 255, 255), (200, 100, 50)]


def test_sixteen_bit_png_file_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "depth.png"
    sixteen_bit([0, 257 * 100, 65535], np.uint16).save(path)
    assert np.asarray(load_image(path))[0, :, 0].tolist() == [0, 100, 255]


def test_corrupt_file_raises_value_error_naming_it(tmp_path):
    path = tmp_path / "broken_image_123.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(ValueError, match="broken_image_123.jpg"):
        load_image(path)


def test_truncated_file_raises_value_error_naming_it(tmp_path):
    path = tmp_path / "cut_short.png"
    path.write_bytes(png_bytes(random_image(64, 64))[:300])
    with pytest.raises(ValueError, match="cut_short.png"):
        load_image(path)


def test_missing_file_and_bad_bytes_name_the_source(tmp_path):
    with pytest.raises(ValueError, match="nowhere.png does not exist"):
        load_image(tmp_path / "nowhere.png")
    with pytest.raises(ValueError, match="shard-3/0007.jpg"):
        load_image(b"garbage", name="shard-3/0007.jpg")
    with pytest.raises(ValueError, match="cannot load a int"):
        load_image(42)


def test_max_pixels_is_enforced_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    random_image(40, 50).save(path)
    with pytest.raises(ValueError, match=r"huge.png has 50x40 pixels, more than max_pixels=1999"):
        load_image(path, max_pixels=1999)
    assert load_image(path, max_pixels=2000).size == (50, 40)
    assert load_image(path, max_pixels=None).size == (50, 40)


# ---- extreme aspect ratios: same pixels, bounded memory ----------------------------------------


@pytest.mark.parametrize("mode", ["square", "pad"])
@pytest.mark.parametrize(
    "shape", [(20, 1200), (1200, 20), (1, 700), (700, 1), (3, 1400), (1400, 3), (2, 2000), (2000, 2)], ids=str
)
def test_extreme_aspect_ratios_stay_within_one_level_of_transformers(mode, shape):
    """Equal pixels up to MAX_SIDE_RATIO (64): a square crop of at least 1/64 of the image, a pad side of
    at most 64 x 24 pixels; beyond, within one 8-bit level (one level is 1 / 255 / std after normalising)."""
    image = random_image(*shape, seed=3)
    config = ImageProcessingConfig(mode=mode, size=24)
    exact = max(shape) / min(shape) <= 64 if mode == "square" else max(shape) <= 64 * 24
    atol = 1e-5 if exact else 1 / 255 / min(CLIP_STD) + 1e-5
    np.testing.assert_allclose(preprocess(image, config), reference(image, config), atol=atol, rtol=0)


# The peak resident memory of preprocessing a thin PNG, per mode and image, in a fresh interpreter:
# Linux's peak (VmHWM, reset through /proc/self/clear_refs before each call) minus the resident
# memory just before. The address space is capped 1 GiB above what the process has mapped, so a
# regression (square mode once took 3.2 GB for 3000x1 and 21 GB for 20000x1) fails here quickly.
MEMORY_PROBE = r"""
import io, json, resource, sys
import numpy as np
from PIL import Image
from llavakit.model import anyres
from llavakit.processing.highres import HighResConfig, preprocess_highres
from llavakit.processing.images import ImageProcessingConfig, load_image, preprocess

def status(key):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(key + ":"))

def runner(mode):
    if mode in ("square", "pad"):
        config = ImageProcessingConfig(mode=mode, size=336)
        return lambda image: preprocess(image, config)
    grids = {"hd": (224, anyres.hd_pinpoints(224, 6)), "anyres_max_9": (384, anyres.grid_pinpoints(384))}
    size, pinpoints = grids[mode]
    highres = HighResConfig(mode, size, 14, tuple(map(tuple, pinpoints)))
    config = ImageProcessingConfig(mode="pad", size=size)
    return lambda image: preprocess_highres(image, highres, config).pixel_values

warm = Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
runners = {mode: runner(mode) for mode in sys.argv[2:]}
for run in runners.values():
    run(warm)
resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + (1 << 30), resource.RLIM_INFINITY))
peaks = {}
for side in (3000, 20000):
    for width, height in ((side, 1), (1, side)):
        buffer = io.BytesIO()
        Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
        image = load_image(buffer.getvalue())
        for mode, run in runners.items():
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # resets VmHWM to the resident memory now
            before = status("VmRSS")
            run(image)
            peaks[f"{mode} {width}x{height}"] = (status("VmHWM") - before) / 2**20
print(json.dumps(peaks))
"""


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's resettable peak RSS")
def test_preprocessing_memory_is_bounded_for_extreme_aspect_ratios():
    """Peak memory above the process before the call: at most 32 MB for a 3000x1 / 1x3000 image and
    64 MB for 20000x1 / 1x20000, in every mode (outputs are 1-4 MB; measured: at most 9 MB and 34 MB,
    see benchmarks/preprocess_memory.py). Before the fix square took 3.2 GB and 21 GB, pad 36 MB and 1.5 GB."""
    modes = ["square", "pad", "hd", "anyres_max_9"]
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, "probe", *modes], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(peaks) == 4 * len(modes)
    too_big = {case: mb for case, mb in peaks.items() if mb > (32 if "3000" in case else 64)}
    assert not too_big, peaks


def test_load_image_raises_data_error_naming_the_file(tmp_path):
    path = tmp_path / "not_an_image.png"
    path.write_bytes(b"plain text")
    with pytest.raises(DataError, match="not_an_image.png"):
        load_image(path)
    with pytest.raises(DataError, match="gone.png does not exist"):
        load_image(tmp_path / "gone.png")
