"""Video input: frame sampling (fps / even, capped), files through PyAV, frame folders, clear errors
for videos that do not decode, and `<video>` expansion equal to the model's pooled features for
every pooling mode and newline placement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.processing.video import (
    FrameSampling,
    VideoConfig,
    load_video,
    sample_frame_indices,
    video_frames,
)
from llavakit.tiny import tiny_llava_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write_video(path, levels, fps=10, size=32):
    """A tiny MPEG-4 file whose frame i is a flat grey of `levels[i]`."""
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for level in levels:
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), level, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _levels(frames) -> list[float]:
    return [float(np.asarray(frame).mean()) for frame in frames]


# ---------------------------------------------------------------- sampling


def test_sample_frame_indices_hand_computed():
    assert sample_frame_indices(10, 32) == list(range(10))  # few frames: all of them
    assert sample_frame_indices(100, 4) == [0, 33, 66, 99]  # evenly, first to last
    assert sample_frame_indices(100, 32, native_fps=30, fps=1) == [0, 30, 60, 90]  # every 30th
    assert sample_frame_indices(100, 3, native_fps=30, fps=1) == [0, 49, 99]  # over the cap: evenly
    assert sample_frame_indices(5, 8, native_fps=10, fps=25) == [0, 1, 2, 3, 4]  # faster than the video: all
    with pytest.raises(ValueError, match="frame rate"):
        sample_frame_indices(10, 4, fps=2)
    with pytest.raises(ValueError, match="at least one frame"):
        sample_frame_indices(0, 4)


def test_video_file_even_and_fps_sampling(tmp_path):
    path = _write_video(tmp_path / "clip.mp4", [20 * i for i in range(12)])
    even = load_video(path, FrameSampling(max_frames=4))  # frames 0, 3, 7, 11
    assert np.allclose(_levels(even), [0, 60, 140, 220], atol=4)
    at_fps = load_video(path, FrameSampling(fps=2.5))  # 10 fps video: every 4th frame
    assert np.allclose(_levels(at_fps), [0, 80, 160], atol=4)
    assert all(frame.mode == "RGB" and frame.size == (32, 32) for frame in even)


def test_frame_folder_is_sorted_naturally_and_sampled(tmp_path):
    for index in range(12):
        Image.new("RGB", (8, 6), (index * 20,) * 3).save(tmp_path / f"frame_{index}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    assert _levels(load_video(tmp_path, FrameSampling(max_frames=32))) == [20.0 * i for i in range(12)]
    assert _levels(load_video(tmp_path, FrameSampling(max_frames=3))) == [0.0, 100.0, 220.0]
    assert _levels(load_video(tmp_path, FrameSampling(fps=1, folder_fps=4))) == [0.0, 80.0, 160.0]
    with pytest.raises(ValueError, match="folder_fps"):
        load_video(tmp_path, FrameSampling(fps=1))


def test_videos_that_do_not_decode_raise_naming_the_file(tmp_path):
    pytest.importorskip("av")
    garbage = tmp_path / "broken.mp4"
    garbage.write_bytes(b"\x00\x01 this is not a video " * 50)
    with pytest.raises(ValueError, match="broken.mp4.*cannot be decoded"):
        load_video(garbage)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(_write_video(tmp_path / "whole.mp4", [0, 50, 100]).read_bytes()[:60])
    with pytest.raises(ValueError, match="truncated.mp4"):
        load_video(truncated)
    with pytest.raises(ValueError, match="missing.mp4 does not exist"):
        load_video(tmp_path / "missing.mp4")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no frame images"):
        load_video(empty)
    with pytest.raises(ValueError, match="clip 3.*uint8"):
        video_frames(np.zeros((2, 8, 8), dtype=np.uint8), name="clip 3")


# ---------------------------------------------------------------- processor and model agree


PLACEMENTS = ("grid", "frame", "one_token", "none")


@pytest.mark.parametrize("pool_mode", ["bilinear", "average", "max"])
def test_video_tokens_equal_model_features(tiny_tokenizer, pool_mode):
    frames = np.random.default_rng(0).integers(0, 256, (3, 40, 56, 3), dtype=np.uint8)
    for placement in PLACEMENTS:
        config = tiny_llava_config(
            tiny_tokenizer.convert_tokens_to_ids("<image>"),
            video_token_id=tiny_tokenizer.convert_tokens_to_ids("<video>"),
            video_pool_mode=pool_mode,
            video_newline=placement,
        )
        torch.manual_seed(0)
        model = LlavaKitForCausalLM(config).eval()
        processor = LlavaKitProcessor.from_model_config(tiny_tokenizer, config, "vicuna_v1")
        batch = processor("USER: <video>\nWhat happens? ASSISTANT:", videos=frames)
        with torch.no_grad():
            (features,) = model.get_video_features(batch["pixel_values_videos"], batch["video_num_frames"])
            model(**batch)  # checks the placeholder count itself
            encoded = model.multi_modal_projector(model.vision_tower(batch["pixel_values_videos"]))
        count = int((batch["input_ids"] == config.video_token_id).sum())
        assert count == features.shape[0] == config.video_token_count(3) == processor.video.num_tokens(3)
        # Hand-pooled 4x4 maps -> 2x2: the mean / max of each 2x2 block (bilinear at exactly half
        # size with align_corners=False averages the block too).
        blocks = encoded.reshape(3, 2, 2, 2, 2, -1).permute(0, 1, 3, 2, 4, 5).reshape(3, 2, 2, 4, -1)
        pooled = blocks.amax(dim=3) if pool_mode == "max" else blocks.mean(dim=3)
        newline = getattr(model, "image_newline", None)
        if placement == "none":
            expected = pooled.reshape(-1, pooled.shape[-1])
        elif placement == "one_token":
            expected = torch.cat((pooled.reshape(-1, pooled.shape[-1]), newline[None]))
        elif placement == "frame":
            expected = torch.cat([torch.cat((frame.reshape(4, -1), newline[None])) for frame in pooled])
        else:
            expected = torch.cat([torch.cat((row, newline[None])) for frame in pooled for row in frame])
        torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)


def _video_processor(tokenizer, max_frames=4):
    config = tiny_llava_config(
        tokenizer.convert_tokens_to_ids("<image>"), video_token_id=tokenizer.convert_tokens_to_ids("<video>")
    )
    sampling = FrameSampling(max_frames=max_frames)
    return config, LlavaKitProcessor.from_model_config(tokenizer, config, "vicuna_v1", video_sampling=sampling)


def _frame_folder(folder, count=6):
    folder.mkdir()
    for index in range(count):
        Image.new("RGB", (40, 30), (index * 40, 0, 0)).save(folder / f"{index:03d}.png")
    return folder


def test_video_from_a_frame_folder_through_the_processor(tiny_tokenizer, tmp_path):
    config, processor = _video_processor(tiny_tokenizer)
    folder = _frame_folder(tmp_path / "frames")
    batch = processor("<video> then <image>", videos=folder, images=Image.new("RGB", (30, 30)))
    assert batch["video_num_frames"].tolist() == [4] and batch["pixel_values_videos"].shape == (4, 3, 32, 32)
    assert int((batch["input_ids"] == config.video_token_id).sum()) == config.video_token_count(4)
    # Frames 0, 1, 3, 5 (evenly over 6): red levels 0, 40, 120, 200, squashed to 32x32 and normalised.
    red = batch["pixel_values_videos"][:, 0, 0, 0] * processor.image_config.std[0] + processor.image_config.mean[0]
    assert torch.allclose(red * 255, torch.tensor([0.0, 40.0, 120.0, 200.0]), atol=0.5)


def test_video_files_through_the_processor(tiny_tokenizer, tmp_path):
    pytest.importorskip("av")
    config, processor = _video_processor(tiny_tokenizer)
    clip = _write_video(tmp_path / "clip.mp4", [10 * i for i in range(9)])
    two = processor("<video><video>", videos=[clip, _frame_folder(tmp_path / "frames")])
    assert two["video_num_frames"].tolist() == [4, 4]
    assert int((two["input_ids"] == config.video_token_id).sum()) == 2 * config.video_token_count(4)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"nope")
    with pytest.raises(ValueError, match="broken.mp4"):
        processor.encode_conversation(
            [{"from": "human", "value": "<video>\nwhat?"}, {"from": "gpt", "value": "x"}], videos=[broken], sample_id=7
        )


def test_video_config_round_trip_and_checks():
    config = VideoConfig(feature_side=27, sampling=FrameSampling(fps=1, max_frames=16))
    assert VideoConfig.from_dict(config.to_dict()) == config
    assert config.num_tokens(32) == 32 * 14 * 14 + 1  # OneVision: 27x27 pooled to 14x14, one newline
    with pytest.raises(ValueError, match="newline"):
        VideoConfig(feature_side=4, newline="row")
    with pytest.raises(ValueError, match="pool mode"):
        VideoConfig(feature_side=4, pool_mode="median")
