"""High-resolution geometry of LLaVA-1.5-HD, LLaVA-NeXT AnyRes and LLaVA-OneVision.

Pure functions shared by the processor (which crops images and writes one `<image>` token
per visual feature) and the model (which merges crop features and must produce exactly
that many): keeping both on the same arithmetic is what stops them from drifting.

The pipeline for one image:

1. pick a canvas among the candidate resolutions (`select_best_resolution`; for
   LLaVA-1.5-HD the canvases are grids of at most 6 encoder-sized cells, `select_hd_grid`);
2. resize the image into the canvas keeping its aspect ratio, pad it centred
   (`resize_and_pad_size`) and cut it into encoder-sized crops (`crop_boxes`);
3. encode every crop and a downscaled copy of the whole image (the base / global image);
4. merge the crops' feature maps into one (`merge_crop_features`), drop the features of
   the padding (`unpad_features`), shrink maps that are too large (OneVision's
   `anyres_max_N`, `reduce_features`), end every row with a newline feature
   (`append_row_newlines`) and put the base image's features beside them
   (`pack_anyres_features`). `num_image_tokens` counts the result without computing it.

Videos (OneVision) encode each frame at the base resolution, pool its feature map
(`pool_video_features`) and place newline features per row, frame or video
(`add_video_newlines`, `num_video_tokens`).

Conventions: sizes are `(height, width)` in pixels; `crop_size` is the side of the encoder's
input (224, 336, 384); `patch_size` the ViT patch (14); a crop becomes a square map of
`crop_size // patch_size` features a side, unless the connector shrinks it (`side`: the
connector's output side, `LlavaKitConfig.feature_side`; crops are merged after the connector).
The integer arithmetic (truncation of the effective resolution, ceil in the resize, rounding
to 7 decimals when unpadding, float floor division in the `anyres_max_N` reduction) follows
transformers' LLaVA-NeXT and OneVision code exactly, so token counts agree with checkpoints
served by transformers, vLLM and SGLang.
"""

from __future__ import annotations

import ast
import math
import re
from typing import NamedTuple

import torch
from torch import nn

Size = tuple[int, int]
VIDEO_POOL_MODES = ("bilinear", "average", "max")
VIDEO_NEWLINE_PLACEMENTS = ("grid", "frame", "one_token", "none")
IMAGE_TOKEN_MODES = ("fixed", "anyres", "anyres_max_N", "hd")
_GRID_SPEC = re.compile(r"\((\d+)x(\d+)\)")
_ANYRES_MAX = re.compile(r"anyres_max_(\d+)")


def _size(value, what: str) -> Size:
    """`(height, width)` as two positive ints; accepts tuples, lists, tensors and arrays."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    try:
        height, width = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (height, width), got {value!r}") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"{what} must be positive, got {(height, width)}")
    return height, width


def _candidates(pinpoints) -> list[Size]:
    sizes = [_size(p, "grid pinpoint") for p in pinpoints]
    if not sizes:
        raise ValueError("grid pinpoints are empty: give at least one (height, width) canvas")
    return sizes


def tokens_per_side(crop_size: int, patch_size: int) -> int:
    """Side of one crop's feature map (384 // 14 = 27 for SigLIP, as its conv stem floors)."""
    if crop_size <= 0 or patch_size <= 0 or patch_size > crop_size:
        raise ValueError(f"need 0 < patch_size <= crop_size, got patch {patch_size}, crop {crop_size}")
    return crop_size // patch_size


# --------------------------------------------------------------------------- candidates


def grid_pinpoints(crop_size: int, grid_range: tuple[Size, Size] = ((1, 6), (1, 6))) -> list[Size]:
    """OneVision-style canvases: every `rows x cols` grid of crops in the given inclusive ranges.

    `grid_pinpoints(384)` is OneVision's `anyres_max_9` list, `(1x1),...,(6x6)`, rows outer.
    """
    (row_lo, row_hi), (col_lo, col_hi) = grid_range
    if not (0 < row_lo <= row_hi and 0 < col_lo <= col_hi):
        raise ValueError(f"grid_range must be ((first_row, last_row), (first_col, last_col)), got {grid_range}")
    return [
        (rows * crop_size, cols * crop_size) for rows in range(row_lo, row_hi + 1) for cols in range(col_lo, col_hi + 1)
    ]


def parse_grid_pinpoints(spec, crop_size: int) -> list[Size]:
    """Canvases from a config value: a list of `(h, w)`, its string form, or `"(1x1),...,(6x6)"`.

    The grid form names the first and last grid, as the original LLaVA-NeXT configs do.
    """
    if isinstance(spec, str):
        grids = _GRID_SPEC.findall(spec)
        if grids:
            (row_lo, col_lo), (row_hi, col_hi) = grids[0], grids[-1]
            return grid_pinpoints(crop_size, ((int(row_lo), int(row_hi)), (int(col_lo), int(col_hi))))
        try:
            spec = ast.literal_eval(spec)
        except (ValueError, SyntaxError):
            raise ValueError(f"cannot parse grid pinpoints {spec!r}: use '(1x1),...,(6x6)' or [[h, w], ...]") from None
    return _candidates(spec)


def select_best_resolution(image_size, candidates) -> Size:
    """The canvas that keeps the most of the image's pixels, then wastes the least area.

    The image is fitted inside each canvas keeping its aspect ratio; its effective
    resolution is the fitted area (truncated to whole pixels) capped at the original area,
    since upscaling adds no detail. Ties go to the smaller waste, then to the earlier candidate.
    """
    height, width = _size(image_size, "image_size")
    best, best_effective, best_waste = None, 0, math.inf
    for cand_h, cand_w in _candidates(candidates):
        scale = min(cand_w / width, cand_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = cand_h * cand_w - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (cand_h, cand_w), effective, waste
    return best


# --------------------------------------------------------------------------- LLaVA-1.5-HD


def hd_grids(max_cells: int = 6) -> list[Size]:
    """LLaVA-1.5-HD's grids `(rows, cols)` of at most `max_cells` cells, rows outer.

    For 6: 1x1...1x6, 2x1, 2x2, 2x3, 3x1, 3x2, 4x1, 5x1, 6x1; the largest canvases hold
    6 cells, 672x448 (or its transpose) in area for 224-pixel cells.
    """
    if max_cells < 1:
        raise ValueError(f"max_cells must be >= 1, got {max_cells}")
    return [(r, c) for r in range(1, max_cells + 1) for c in range(1, max_cells + 1) if r * c <= max_cells]


def hd_pinpoints(cell: int = 224, max_cells: int = 6) -> list[Size]:
    """The canvases `(rows * cell, cols * cell)` of `hd_grids(max_cells)`."""
    return [(rows * cell, cols * cell) for rows, cols in hd_grids(max_cells)]


def select_hd_grid(image_size, cell: int = 224, max_cells: int = 6) -> Size:
    """LLaVA-1.5-HD's grid `(rows, cols)` for an image.

    Detail preservation first (the largest effective resolution once the image is fitted
    inside the grid, capped at the original), then resource efficiency (the least wasted
    canvas area): the same rule as `select_best_resolution`, over the HD grids.
    """
    height, width = select_best_resolution(image_size, hd_pinpoints(cell, max_cells))
    return height // cell, width // cell


# --------------------------------------------------------------------------- pixels


class ResizePad(NamedTuple):
    """Where an image lands in its canvas: the resized size and the padding on each side."""

    height: int
    width: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int


def resize_and_pad_size(image_size, target) -> ResizePad:
    """Resize keeping the aspect ratio so the image touches the canvas on one axis, then pad centred.

    The other axis is rounded up (never past the canvas); an odd remainder of padding goes
    to the bottom / right.
    """
    height, width = _size(image_size, "image_size")
    target_h, target_w = _size(target, "target")
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        new_h, new_w = min(math.ceil(height * scale_w), target_h), target_w
    else:
        new_h, new_w = target_h, min(math.ceil(width * scale_h), target_w)
    top, extra_h = divmod(target_h - new_h, 2)
    left, extra_w = divmod(target_w - new_w, 2)
    return ResizePad(new_h, new_w, top, top + extra_h, left, left + extra_w)


def crop_boxes(target, crop_size: int) -> list[tuple[int, int, int, int]]:
    """Crops of a padded canvas, row-major, as PIL boxes `(left, top, right, bottom)`."""
    target_h, target_w = _size(target, "target")
    if target_h % crop_size or target_w % crop_size:
        raise ValueError(f"canvas {(target_h, target_w)} is not a whole number of {crop_size}-pixel crops")
    return [
        (left, top, left + crop_size, top + crop_size)
        for top in range(0, target_h, crop_size)
        for left in range(0, target_w, crop_size)
    ]


def anyres_grid_shape(image_size, pinpoints, crop_size: int) -> Size:
    """`(rows, cols)` of crops for an image: its best canvas divided into crops."""
    candidates = _candidates(pinpoints)
    for cand in candidates:
        if cand[0] % crop_size or cand[1] % crop_size:
            raise ValueError(f"grid pinpoint {cand} is not a whole number of {crop_size}-pixel crops")
    height, width = select_best_resolution(image_size, candidates)
    return height // crop_size, width // crop_size


def num_grid_cells(image_size, pinpoints, crop_size: int) -> int:
    """Crops cut from the canvas, without the base image (the encoder sees this + 1 images)."""
    rows, cols = anyres_grid_shape(image_size, pinpoints, crop_size)
    return rows * cols


# --------------------------------------------------------------------------- feature maps


def _unpad_margins(original_size, current: Size) -> Size:
    """Padding rows and columns to drop on each side of a merged map of shape `current`."""
    orig_h, orig_w = _size(original_size, "original_size")
    cur_h, cur_w = current
    if orig_w / orig_h > cur_w / cur_h:
        new_h = int(round(orig_h * (cur_w / orig_w), 7))
        return (cur_h - new_h) // 2, 0
    new_w = int(round(orig_w * (cur_h / orig_h), 7))
    return 0, (cur_w - new_w) // 2


def unpadded_shape(original_size, current_hw) -> Size:
    """Shape of a merged feature map `current_hw` once the padding's features are dropped."""
    cur_h, cur_w = _size(current_hw, "current_hw")
    top, left = _unpad_margins(original_size, (cur_h, cur_w))
    return cur_h - 2 * top, cur_w - 2 * left


def unpad_features(features: torch.Tensor, original_size) -> torch.Tensor:
    """Drop the features of the canvas padding from a merged map `(C, H, W)`."""
    if features.dim() != 3:
        raise ValueError(f"features must be (channels, height, width), got shape {tuple(features.shape)}")
    cur_h, cur_w = features.shape[1:]
    top, left = _unpad_margins(original_size, (cur_h, cur_w))
    return features[:, top : cur_h - top, left : cur_w - left]


def parse_anyres_max(mode: str) -> int:
    """N of OneVision's `anyres_max_N`: the crop budget of the reduced map."""
    match = _ANYRES_MAX.fullmatch(mode)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"expected 'anyres_max_N' with N >= 1, got {mode!r}")
    return int(match.group(1))


def reduced_shape(height: int, width: int, max_crops: int, side: int, threshold: float = 1.1) -> Size:
    """OneVision's `anyres_max_N` size: a map above ~N crops of `side`^2 features is shrunk.

    ratio = sqrt(h * w / (N * side^2)); above `threshold` the map becomes
    (h // ratio, w // ratio), so it holds about N crops' worth of features.
    """
    ratio = math.sqrt(height * width / (max_crops * side**2))
    if ratio > threshold:
        return int(height // ratio), int(width // ratio)
    return height, width


def reduce_features(features: torch.Tensor, max_crops: int, side: int, threshold: float = 1.1) -> torch.Tensor:
    """Bilinearly resize an unpadded map `(C, H, W)` to `reduced_shape` (unchanged below the threshold)."""
    height, width = features.shape[1:]
    new_size = reduced_shape(height, width, max_crops, side, threshold)
    if new_size == (height, width):
        return features
    return nn.functional.interpolate(features[None], size=list(new_size), mode="bilinear")[0]


def merge_crop_features(crop_features: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Stitch per-crop features `(rows*cols, side*side, C)` (row-major crops) into one map `(C, H, W)`."""
    num_crops, num_tokens, channels = crop_features.shape
    side = math.isqrt(num_tokens)
    if side * side != num_tokens or num_crops != rows * cols:
        raise ValueError(
            f"expected {rows}x{cols} crops of a square feature map, got {num_crops} crops of {num_tokens} features"
        )
    grid = crop_features.reshape(rows, cols, side, side, channels).permute(4, 0, 2, 1, 3)
    return grid.reshape(channels, rows * side, cols * side)


def append_row_newlines(feature_map: torch.Tensor, newline: torch.Tensor | None) -> torch.Tensor:
    """Flatten a map `(C, H, W)` row by row into `(H * (W + 1), C)`, each row ended by `newline`.

    Without a newline vector the map is flattened to `(H * W, C)`.
    """
    channels, height, _ = feature_map.shape
    if newline is not None:
        column = newline.to(feature_map.device, feature_map.dtype)[:, None, None].expand(channels, height, 1)
        feature_map = torch.cat((feature_map, column), dim=-1)
    return feature_map.flatten(1, 2).transpose(0, 1)


def pack_anyres_features(
    features: torch.Tensor,
    image_size,
    pinpoints,
    crop_size: int,
    *,
    newline: torch.Tensor | None = None,
    max_crops: int | None = None,
    base_first: bool = True,
) -> torch.Tensor:
    """One image's visual tokens `(N, C)` from its encoded crops `(1 + rows*cols, side*side, C)`.

    Crop 0 is the base (global) image. The crops are merged, unpadded, reduced when
    `max_crops` is set (OneVision), given row-end newlines, and put after the base
    features (`base_first=False` appends the global features instead, as LLaVA-1.5-HD
    describes it). A base image alone (multi-image OneVision) gets one trailing newline.
    """
    if features.dim() != 3:
        raise ValueError(f"features must be (crops, tokens, channels), got shape {tuple(features.shape)}")
    base = features[0]
    if features.shape[0] == 1:
        return base if newline is None else torch.cat((base, newline[None].to(base)), dim=0)
    rows, cols = anyres_grid_shape(image_size, pinpoints, crop_size)
    feature_map = unpad_features(merge_crop_features(features[1:], rows, cols), image_size)
    if max_crops is not None:
        feature_map = reduce_features(feature_map, max_crops, math.isqrt(base.shape[0]))
    tokens = append_row_newlines(feature_map, newline)
    return torch.cat((base, tokens) if base_first else (tokens, base), dim=0)


# --------------------------------------------------------------------------- token counts


def _feature_side(crop_size: int, patch_size: int, side: int | None) -> int:
    """One crop's map side: the patch grid's, or `side` where the connector resizes the map."""
    patches = tokens_per_side(crop_size, patch_size)
    if side is None:
        return patches
    if side < 1:
        raise ValueError(f"side must be >= 1, got {side}")
    return side


def anyres_feature_shape(
    image_size,
    pinpoints,
    crop_size: int,
    patch_size: int,
    max_crops: int | None = None,
    *,
    side: int | None = None,
) -> Size:
    """Shape of an image's merged crop features after unpadding (and reduction with `max_crops`).

    `side`: one crop's map side after the connector (default: the patch grid's, `crop_size // patch_size`).
    """
    side = _feature_side(crop_size, patch_size, side)
    rows, cols = anyres_grid_shape(image_size, pinpoints, crop_size)
    height, width = unpadded_shape(image_size, (rows * side, cols * side))
    if max_crops is not None:
        height, width = reduced_shape(height, width, max_crops, side)
    return height, width


def num_image_tokens(
    mode: str,
    image_size=None,
    *,
    crop_size: int,
    patch_size: int,
    pinpoints=None,
    newline: bool | None = None,
    max_cells: int = 6,
    side: int | None = None,
) -> int:
    """Visual tokens one image becomes (patch features only; a kept CLS is the caller's to add).

    mode:
      `fixed`         one crop (LLaVA, LLaVA-1.5, OneVision multi-image): side^2,
                      plus one trailing newline if `newline` is True (default False);
      `anyres`        LLaVA-NeXT: side^2 base + unpadded rows * (cols + 1 newline);
      `anyres_max_N`  OneVision: as `anyres`, the unpadded map reduced to ~N crops;
      `hd`            LLaVA-1.5-HD: `anyres` over `hd_pinpoints(crop_size, max_cells)`
                      (unless `pinpoints` is given), the global image's side^2 included.
    For the grid modes `newline` defaults to True (one row-end token per row). `side`: one crop's
    map side after the connector (default: the patch grid's); the base image and every crop count
    side^2 tokens, and `anyres_max_N`'s budget is N crops of side^2.
    """
    side = _feature_side(crop_size, patch_size, side)
    base = side * side
    if mode == "fixed":
        return base + int(bool(newline))
    if mode == "hd":
        pinpoints = hd_pinpoints(crop_size, max_cells) if pinpoints is None else pinpoints
        max_crops = None
    elif mode == "anyres":
        max_crops = None
    elif mode.startswith("anyres_max_"):
        max_crops = parse_anyres_max(mode)
    else:
        raise ValueError(f"unknown image token mode {mode!r}; use one of {IMAGE_TOKEN_MODES}")
    if image_size is None or pinpoints is None:
        raise ValueError(f"mode {mode!r} needs image_size and pinpoints")
    height, width = anyres_feature_shape(image_size, pinpoints, crop_size, patch_size, max_crops, side=side)
    return base + height * (width + int(newline is None or newline))


# --------------------------------------------------------------------------- video


def pooled_shape(height: int, width: int, mode: str = "bilinear", stride: int = 2) -> Size:
    """A frame's map after pooling: bilinear rounds up (27 -> 14), average / max pooling down (27 -> 13)."""
    if mode not in VIDEO_POOL_MODES:
        raise ValueError(f"unknown video pool mode {mode!r}; use one of {VIDEO_POOL_MODES}")
    if stride < 1:
        raise ValueError(f"pool stride must be >= 1, got {stride}")
    if mode == "bilinear":
        return math.ceil(height / stride), math.ceil(width / stride)
    return height // stride, width // stride


def pool_video_features(features: torch.Tensor, mode: str = "bilinear", stride: int = 2) -> torch.Tensor:
    """Pool each frame's feature map: `(frames, H, W, C)` -> `(frames, h, w, C)` or
    `(frames, tokens, C)` (a square map) -> `(frames, h * w, C)`."""
    if features.dim() == 3:
        frames, num_tokens, channels = features.shape
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(f"video frame features must form a square map, got {num_tokens} tokens")
        pooled = pool_video_features(features.view(frames, side, side, channels), mode, stride)
        return pooled.reshape(frames, -1, channels)
    if features.dim() != 4:
        raise ValueError(
            f"video features must be (frames, H, W, C) or (frames, tokens, C), got {tuple(features.shape)}"
        )
    height, width = features.shape[1:3]
    size = pooled_shape(height, width, mode, stride)
    maps = features.permute(0, 3, 1, 2)
    if mode == "bilinear":
        maps = nn.functional.interpolate(maps.contiguous(), size=list(size), mode="bilinear")
    elif mode == "average":
        maps = nn.functional.avg_pool2d(maps, stride)
    else:
        maps = nn.functional.max_pool2d(maps, stride)
    return maps.permute(0, 2, 3, 1)


def add_video_newlines(features: torch.Tensor, newline: torch.Tensor, placement: str = "one_token") -> torch.Tensor:
    """Flatten pooled frames `(frames, h, w, C)` to `(N, C)` with newlines placed per
    `grid` (end of every row), `frame` (end of every frame), `one_token` (end of the video) or `none`."""
    if placement not in VIDEO_NEWLINE_PLACEMENTS:
        raise ValueError(f"unknown newline placement {placement!r}; use one of {VIDEO_NEWLINE_PLACEMENTS}")
    frames, height, width, channels = features.shape
    newline = newline.to(features.device, features.dtype)
    if placement == "grid":
        rows = features.reshape(frames * height, width, channels)
        rows = torch.cat((rows, newline.expand(frames * height, 1, channels)), dim=1)
        return rows.reshape(-1, channels)
    if placement == "frame":
        per_frame = features.reshape(frames, height * width, channels)
        per_frame = torch.cat((per_frame, newline.expand(frames, 1, channels)), dim=1)
        return per_frame.reshape(-1, channels)
    tokens = features.reshape(-1, channels)
    return torch.cat((tokens, newline[None]), dim=0) if placement == "one_token" else tokens


def num_video_tokens(
    num_frames: int, side: int, *, pool_mode: str = "bilinear", stride: int = 2, newline: str = "one_token"
) -> int:
    """Visual tokens of a video of `num_frames` frames whose maps are `side` x `side` before pooling."""
    if newline not in VIDEO_NEWLINE_PLACEMENTS:
        raise ValueError(f"unknown newline placement {newline!r}; use one of {VIDEO_NEWLINE_PLACEMENTS}")
    height, width = pooled_shape(side, side, pool_mode, stride)
    per_frame = height * width
    extra = {"grid": num_frames * height, "frame": num_frames, "one_token": 1, "none": 0}[newline]
    return num_frames * per_frame + extra
