"""Video frames for LLaVA-OneVision-style video input: sample, decode, return RGB frames.

A video is a file (decoded with PyAV, `pip install av`, or decord when PyAV is missing) or
a folder of frame images (sorted by name, numbers in names compared as numbers, so
`frame_2.png` precedes `frame_10.png`). Frames are taken at a target `fps` (every
`native_fps / fps`-th frame, as LLaVA-NeXT's video loader does) or, without one, evenly over
the whole video; either way at most `max_frames`, spread evenly when there would be more.
The processor then resizes each frame to the encoder's input (the base resolution,
`video_pixel_values`) and writes `VideoConfig.num_tokens(frames)` `<video>` tokens; the model
pools the frames' features (`llavakit.model.anyres.pool_video_features`) and places newlines
with the same `llavakit.model.anyres` functions, so the two counts agree.

A file that is missing, has no video stream or does not decode raises ValueError naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from llavakit.model import anyres
from llavakit.processing.highres import normalization_table, resize_square
from llavakit.processing.images import ImageProcessingConfig, load_image

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_NUMBER = re.compile(r"(\d+)")


@dataclass(frozen=True)
class FrameSampling:
    """Which frames a video contributes.

    fps: frames per second to keep (None: evenly spaced over the whole video).
    max_frames: cap on the frames kept (OneVision trains with 32).
    folder_fps: the frame rate of a frame folder, needed only to sample it at `fps`.
    backend: `auto` (PyAV, else decord), `av` or `decord`.
    """

    fps: float | None = None
    max_frames: int = 32
    folder_fps: float | None = None
    backend: str = "auto"

    def __post_init__(self):
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.backend not in ("auto", "av", "decord"):
            raise ValueError(f"video backend must be auto, av or decord, got {self.backend!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"fps": self.fps, "max_frames": self.max_frames, "folder_fps": self.folder_fps, "backend": self.backend}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrameSampling:
        return cls(**data)


def sample_frame_indices(
    total_frames: int, max_frames: int, native_fps: float | None = None, fps: float | None = None
) -> list[int]:
    """Indices of the frames to keep from a video of `total_frames` frames.

    With `fps` (and the video's `native_fps`): every round(native_fps / fps)-th frame from
    the first (at least every frame). Without: all frames when they are few enough. When the
    result would exceed `max_frames`: `max_frames` indices spread evenly from the first to
    the last frame (numpy `linspace`, floored).
    """
    if total_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {total_frames}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if fps is not None:
        if not native_fps or native_fps <= 0:
            raise ValueError("sampling at a given fps needs the video's own frame rate")
        step = max(1, round(native_fps / fps))
        indices = list(range(0, total_frames, step))
    else:
        indices = list(range(total_frames))
    if len(indices) > max_frames:
        indices = np.linspace(0, total_frames - 1, max_frames, dtype=int).tolist()
    return indices


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in _NUMBER.split(path.name)]


def read_frame_folder(folder: str | Path, sampling: FrameSampling) -> list[Image.Image]:
    """The sampled frames of a folder of frame images, as RGB PIL images."""
    folder = Path(folder)
    files = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS and p.is_file()), key=_natural_key
    )
    if not files:
        raise ValueError(f"video frame folder {folder} holds no frame images ({', '.join(FRAME_EXTENSIONS)})")
    if sampling.fps is not None and sampling.folder_fps is None:
        raise ValueError(
            f"video frame folder {folder}: sampling at fps={sampling.fps} needs folder_fps (its frame rate)"
        )
    indices = sample_frame_indices(len(files), sampling.max_frames, sampling.folder_fps, sampling.fps)
    return [load_image(files[index]) for index in indices]


def _read_with_av(path: Path, sampling: FrameSampling) -> list[Image.Image]:
    import av

    def open_stream(container):
        if not container.streams.video:
            raise ValueError(f"video file {path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return stream

    def decode(wanted: list[int]) -> tuple[list[Image.Image], int]:
        """The wanted frames (in order) and how many frames the stream really holds up to the last one read."""
        keep, frames, count = set(wanted), {}, 0
        with av.open(str(path)) as container:
            for count, frame in enumerate(container.decode(open_stream(container)), start=1):
                if count - 1 in keep:
                    frames[count - 1] = frame.to_image().convert("RGB")
                    if len(frames) == len(keep):
                        break
        return [frames[i] for i in wanted if i in frames], count

    try:
        with av.open(str(path)) as container:
            stream = open_stream(container)
            total = int(stream.frames or 0)
            native_fps = float(stream.average_rate) if stream.average_rate else None
            if total <= 0:  # containers without a frame count: count by decoding
                total = sum(1 for _ in container.decode(stream))
        if total <= 0:
            raise ValueError(f"video file {path} holds no frames")
        wanted = sample_frame_indices(total, sampling.max_frames, native_fps, sampling.fps)
        frames, seen = decode(wanted)
        if len(frames) < len(wanted) and seen < total:
            # The header over-counted the frames: sample again over the frames that exist.
            wanted = sample_frame_indices(seen, sampling.max_frames, native_fps, sampling.fps)
            frames, _ = decode(wanted)
    except (av.error.FFmpegError, OSError, EOFError) as error:
        raise ValueError(f"video file {path} cannot be decoded: {error}") from error
    if not frames:
        raise ValueError(f"video file {path} cannot be decoded: no frame decoded")
    return frames


def _read_with_decord(path: Path, sampling: FrameSampling) -> list[Image.Image]:
    import decord

    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        wanted = sample_frame_indices(len(reader), sampling.max_frames, reader.get_avg_fps(), sampling.fps)
        batch = reader.get_batch(wanted).asnumpy()
    except (decord.DECORDError, RuntimeError, OSError) as error:
        raise ValueError(f"video file {path} cannot be decoded: {error}") from error
    return [Image.fromarray(frame) for frame in batch]


def _backend(requested: str, path: Path) -> str:
    if requested != "auto":
        return requested
    for name in ("av", "decord"):
        try:
            __import__(name)
        except ImportError:
            continue
        return name
    raise ValueError(
        f"video file {path}: decoding needs PyAV (pip install 'llavakit[video]') or decord; or give a folder of frames"
    )


def load_video(source: str | Path, sampling: FrameSampling | None = None) -> list[Image.Image]:
    """The sampled frames of a video file or frame folder, as RGB PIL images (at least one)."""
    sampling = sampling or FrameSampling()
    path = Path(source)
    if path.is_dir():
        return read_frame_folder(path, sampling)
    if not path.is_file():
        raise ValueError(f"video {path} does not exist")
    backend = _backend(sampling.backend, path)
    try:
        reader = _read_with_av if backend == "av" else _read_with_decord
        return reader(path, sampling)
    except ImportError as error:
        raise ValueError(f"video file {path}: the {backend} backend is not installed ({error})") from error


def video_frames(video: Any, sampling: FrameSampling | None = None, name: str | None = None) -> list[Image.Image]:
    """Frames of any accepted video input: a path (file or folder), a uint8 array (frames, H, W, 3)
    or a list of frames (PIL images or uint8 (H, W, 3) arrays), the last two taken as they are."""
    label = name or "video"
    if isinstance(video, (str, Path)):
        return load_video(video, sampling)
    if isinstance(video, np.ndarray):
        if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] < 1:
            raise ValueError(f"{label}: a video array must be uint8 (frames, H, W, 3), got {video.dtype} {video.shape}")
        return [Image.fromarray(frame) for frame in video]
    if isinstance(video, (list, tuple)) and video:
        frames = []
        for index, frame in enumerate(video):
            if isinstance(frame, np.ndarray):
                frame = Image.fromarray(frame) if frame.dtype == np.uint8 and frame.ndim == 3 else None
            if not isinstance(frame, Image.Image):
                raise ValueError(f"{label}: frame {index} is not a PIL image or uint8 (H, W, 3) array")
            frames.append(load_image(frame, name=f"{label} frame {index}"))
        return frames
    raise ValueError(f"{label}: a video must be a path, a uint8 (frames, H, W, 3) array or a list of frames")


@dataclass(frozen=True)
class VideoConfig:
    """How a video becomes `<video>` tokens; built from the model config (`LlavaKitProcessor.from_model_config`).

    feature_side: side of one frame's feature map before pooling (`LlavaKitConfig.feature_side`).
    pool_mode / pool_stride / newline: as `LlavaKitConfig.video_pool_mode`, `video_pool_stride`, `video_newline`.
    sampling: which frames a video file or folder contributes.
    """

    feature_side: int
    pool_mode: str = "bilinear"
    pool_stride: int = 2
    newline: str = "one_token"
    sampling: FrameSampling = FrameSampling()

    def __post_init__(self):
        if self.feature_side < 1:
            raise ValueError(f"feature_side must be >= 1, got {self.feature_side}")
        anyres.pooled_shape(self.feature_side, self.feature_side, self.pool_mode, self.pool_stride)
        if self.newline not in anyres.VIDEO_NEWLINE_PLACEMENTS:
            raise ValueError(f"video newline must be one of {anyres.VIDEO_NEWLINE_PLACEMENTS}, got {self.newline!r}")

    def num_tokens(self, num_frames: int) -> int:
        """`<video>` tokens of a video of `num_frames` frames (what the model's video features count)."""
        if num_frames < 1:
            raise ValueError(f"a video needs at least one frame, got {num_frames}")
        return anyres.num_video_tokens(
            num_frames, self.feature_side, pool_mode=self.pool_mode, stride=self.pool_stride, newline=self.newline
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_side": self.feature_side,
            "pool_mode": self.pool_mode,
            "pool_stride": self.pool_stride,
            "newline": self.newline,
            "sampling": self.sampling.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoConfig:
        values = dict(data)
        values["sampling"] = FrameSampling.from_dict(values.get("sampling") or {})
        return cls(**values)


def video_pixel_values(frames: list[Image.Image], config: ImageProcessingConfig, backend: str = "pil") -> np.ndarray:
    """`(frames, 3, S, S)` float32: every frame resized (aspect not kept) to the encoder's input and
    normalised, as OneVision's video processor does and as the base image of a grid mode is.
    `backend`: `pil` or `torch` (see `HighResConfig.resize_backend` in `llavakit.processing.highres`)."""
    if not frames:
        raise ValueError("a video needs at least one frame")
    table = normalization_table(config)
    out = np.empty((len(frames), 3, config.size, config.size), dtype=np.float32)
    for index, frame in enumerate(frames):
        out[index] = resize_square(frame, config, table, backend)
    return out
