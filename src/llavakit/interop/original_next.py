"""Image and video layout of original LLaVA-NeXT / LLaVA-OneVision configs (LLaVA-VL/LLaVA-NeXT) -> llavakit.

Why: LLaVA-NeXT and OneVision checkpoints published in the original layout say how images
become tokens with a handful of `config.json` fields that the original model code reads by
substring. llavakit holds the same layouts as `LlavaKitConfig` fields; this module is the one
translation between them, and refuses (naming the field) what llavakit cannot reproduce
rather than importing a model that would see its images differently:

    original config                              llavakit
    image_aspect_ratio pad | square | (none)     image_mode fixed (the processor pads or resizes)
    image_aspect_ratio anyres                    image_mode anyres (every image of a sample gets its grid)
    image_aspect_ratio anyres_max_N              image_mode anyres_max_N (multi-image samples: base only)
    image_grid_pinpoints [[w, h], ...]           image_grid_pinpoints [(h, w), ...], same order
      or "(1x1),...,(6x6)" (crops, w x h)
    mm_patch_merge_type spatial_unpad*           use_image_newline, image_base_first
    mm_spatial_pool_mode / _stride               video_pool_mode / video_pool_stride
    mm_newline_position grid | frame |           video_newline grid | frame | one_token | none
      one_token | no_token

The original code names sizes (width, height) (PIL's order) and picks the first of equally
good canvases, so its pinpoints are swapped, keeping their order, into llavakit's
(height, width): a small image then lands on the same grid as in the original.

    layout = read_original_layout(config_dict, Path("folder/config.json"))
    fields = layout.config_fields(crop_size=384, video_token_id=None)
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llavakit.errors import CheckpointError
from llavakit.model import anyres

_FIXED_ASPECT_RATIOS = ("pad", "square")
_GRID_SPEC = re.compile(r"\((\d+)x(\d+)\)")
_NEWLINE_POSITIONS = {"grid": "grid", "frame": "frame", "one_token": "one_token", "no_token": "none"}
# Video fields: a config holding any of them was written by the OneVision-era trainer and takes videos.
_VIDEO_FIELDS = ("mm_newline_position", "mm_spatial_pool_mode", "mm_spatial_pool_stride")
# The original pools video frames 2x2 when the config leaves the stride unset.
_DEFAULT_POOL_STRIDE = 2


@dataclass(frozen=True)
class VideoLayout:
    """How the original turns video frames into tokens, in llavakit's terms."""

    pool_mode: str
    pool_stride: int
    newline: str

    def config_fields(self, video_token_id: int) -> dict[str, Any]:
        return dict(
            video_token_id=video_token_id,
            video_pool_mode=self.pool_mode,
            video_pool_stride=self.pool_stride,
            video_newline=self.newline,
        )


@dataclass(frozen=True)
class OriginalLayout:
    """An original config's image (and video) layout.

    image_mode: llavakit's (`fixed`, `anyres`, `anyres_max_N`); processor_mode: how a fixed
    image is made square (`pad` or `square`); pinpoints: the original's [w, h] canvases or
    grid-range string (resolved with the crop size); newline: the config holds an
    `image_newline` vector (a `spatial*unpad*` merge); video: None when the config has no video fields.
    """

    image_mode: str
    processor_mode: str
    pinpoints: Any
    newline: bool
    video: VideoLayout | None
    where: Path

    @property
    def is_grid(self) -> bool:
        return self.image_mode != "fixed"

    def config_fields(self, crop_size: int, video_token_id: int | None = None) -> dict[str, Any]:
        """The LlavaKitConfig fields of this layout for an encoder of `crop_size` pixels."""
        fields: dict[str, Any] = dict(image_mode=self.image_mode, use_image_newline=self.newline)
        if self.is_grid:
            fields.update(
                image_grid_pinpoints=[list(p) for p in grid_pinpoints(self.pinpoints, crop_size, self.where)],
                image_base_first=True,
                multi_image_base_only=self.image_mode != "anyres",
            )
        if self.video is not None and video_token_id is not None:
            fields.update(self.video.config_fields(video_token_id))
        return fields


# ---------------------------------------------------------------- fields


def _field_error(where: Path, field: str, value: Any, why: str) -> CheckpointError:
    return CheckpointError(f"{where}: {field} {value!r} {why}")


def _image_mode(raw: dict, where: Path) -> str:
    """llavakit's image mode for `image_aspect_ratio` (the original's default, unset, resizes to a square)."""
    ratio = raw.get("image_aspect_ratio") or "square"
    if ratio in _FIXED_ASPECT_RATIOS:
        return "fixed"
    if ratio == "anyres":
        return "anyres"
    if str(ratio).startswith("anyres_max"):
        try:
            anyres.parse_anyres_max(ratio)
        except ValueError:
            raise _field_error(where, "image_aspect_ratio", ratio, "is not anyres_max_N with a budget N >= 1") from None
        return ratio
    raise _field_error(
        where,
        "image_aspect_ratio",
        ratio,
        "is not supported: llavakit reproduces pad, square, anyres and anyres_max_N "
        "(highres and crop_split cut images differently)",
    )


def _merge_flags(raw: dict, where: Path, grid: bool) -> bool:
    """Whether images carry the `image_newline` vector, after checking `mm_patch_merge_type`.

    The original reads the merge type by substring: `spatial*` merges crops into one map,
    `unpad` drops the padding's features and ends rows with the newline; `maxpool2x2` and
    `nobase` change the features in ways llavakit has no setting for.
    """
    merge = str(raw.get("mm_patch_merge_type") or "flat")
    if merge != "flat" and not merge.startswith("spatial"):
        raise _field_error(where, "mm_patch_merge_type", merge, "is neither flat nor spatial*")
    for flag, why in (("maxpool2x2", "max-pools the merged crops"), ("nobase", "leaves out the base image")):
        if flag in merge:
            raise _field_error(where, "mm_patch_merge_type", merge, f"{why}, which llavakit does not reproduce")
    unpad = merge.startswith("spatial") and "unpad" in merge
    if grid and not unpad:
        ratio = raw.get("image_aspect_ratio")
        raise _field_error(
            where,
            "mm_patch_merge_type",
            merge,
            f"with image_aspect_ratio {ratio!r} keeps the crops' padding features without row-end newlines; "
            "llavakit's grid layout is spatial_unpad (unpadded map, a newline per row, base image first)",
        )
    return unpad


def _check_unsupported(raw: dict, where: Path) -> None:
    """Original options that change the visual tokens and that llavakit has no setting for."""
    if raw.get("add_faster_video"):
        raise _field_error(where, "add_faster_video", raw["add_faster_video"], "adds faster-video tokens: unsupported")
    if raw.get("mm_resampler_type"):
        raise _field_error(where, "mm_resampler_type", raw["mm_resampler_type"], "resamples features: unsupported")
    if raw.get("s2"):
        raise _field_error(where, "s2", raw["s2"], "encodes images at several scales (S2): unsupported")


def _video(raw: dict, where: Path, spatial: bool, newline: bool) -> VideoLayout | None:
    """The video layout, or None for a config without video fields (LLaVA-1.5, LLaVA-1.6)."""
    if not any(raw.get(field) is not None for field in _VIDEO_FIELDS):
        return None
    mode = raw.get("mm_spatial_pool_mode") or "bilinear"
    if mode not in anyres.VIDEO_POOL_MODES:
        raise _field_error(where, "mm_spatial_pool_mode", mode, f"is not one of {list(anyres.VIDEO_POOL_MODES)}")
    stride = raw.get("mm_spatial_pool_stride") or _DEFAULT_POOL_STRIDE
    if not isinstance(stride, int) or stride < 1:
        raise _field_error(where, "mm_spatial_pool_stride", stride, "is not a positive integer")
    position = raw.get("mm_newline_position") or "one_token"
    if position not in _NEWLINE_POSITIONS:
        raise _field_error(where, "mm_newline_position", position, f"is not one of {list(_NEWLINE_POSITIONS)}")
    placement = _NEWLINE_POSITIONS[position] if spatial else "none"  # a flat merge flattens frames as they are
    if placement in ("grid", "frame") and not newline:
        raise _field_error(
            where,
            "mm_newline_position",
            position,
            f"needs the image_newline vector, which mm_patch_merge_type {raw.get('mm_patch_merge_type')!r} lacks",
        )
    if placement == "one_token" and not newline:
        placement = "none"  # the original appends the one newline only when the model has one
    return VideoLayout(pool_mode=mode, pool_stride=int(stride), newline=placement)


def read_original_layout(raw: dict, where: Path) -> OriginalLayout:
    """The image and video layout of an original LLaVA / LLaVA-NeXT / OneVision config dict.

    `where` names the config file in errors. Raises CheckpointError naming the field for a
    layout llavakit cannot reproduce exactly.
    """
    _check_unsupported(raw, where)
    image_mode = _image_mode(raw, where)
    grid = image_mode != "fixed"
    newline = _merge_flags(raw, where, grid)
    pinpoints = raw.get("image_grid_pinpoints")
    if grid and not pinpoints:
        raise _field_error(where, "image_grid_pinpoints", pinpoints, f"is empty, but image_mode {image_mode} needs it")
    if grid and not (isinstance(pinpoints, str) and _GRID_SPEC.search(pinpoints)):
        _listed_pinpoints(pinpoints, where)  # a malformed list fails here, before any weights load
    spatial = str(raw.get("mm_patch_merge_type") or "flat").startswith("spatial")
    return OriginalLayout(
        image_mode=image_mode,
        processor_mode="pad" if raw.get("image_aspect_ratio") == "pad" else "square",
        pinpoints=pinpoints,
        newline=newline,
        video=_video(raw, where, spatial, newline),
        where=where,
    )


# ---------------------------------------------------------------- pinpoints


def _range_pinpoints(spec: str, crop_size: int) -> list[tuple[int, int]]:
    """`"(1x1),...,(6x6)"`: the original's grids (w crops x h crops) from the first to the last, w outer."""
    grids = _GRID_SPEC.findall(spec)
    (first_w, first_h), (last_w, last_h) = grids[0], grids[-1]
    return [
        (h * crop_size, w * crop_size)
        for w in range(int(first_w), int(last_w) + 1)
        for h in range(int(first_h), int(last_h) + 1)
    ]


def _listed_pinpoints(spec: Any, where: Path) -> list[tuple[int, int]]:
    """`[[w, h], ...]` (or its string form) as llavakit's `(h, w)`, order kept."""
    if isinstance(spec, str):
        try:
            spec = ast.literal_eval(spec)
        except (ValueError, SyntaxError):
            why = "is neither a list of [w, h] nor '(1x1),...,(NxN)'"
            raise _field_error(where, "image_grid_pinpoints", spec, why) from None
    try:
        return [(int(height), int(width)) for width, height in spec]
    except (TypeError, ValueError):
        raise _field_error(where, "image_grid_pinpoints", spec, "is not a list of [width, height] pairs") from None


def grid_pinpoints(spec: Any, crop_size: int, where: Path) -> list[tuple[int, int]]:
    """The original `image_grid_pinpoints` as llavakit's (height, width) canvases, each whole crops."""
    if isinstance(spec, str) and _GRID_SPEC.search(spec):
        pinpoints = _range_pinpoints(spec, crop_size)
    else:
        pinpoints = _listed_pinpoints(spec, where)
    for height, width in pinpoints:
        if height <= 0 or width <= 0 or height % crop_size or width % crop_size:
            raise _field_error(
                where,
                "image_grid_pinpoints",
                spec,
                f"holds {[width, height]}, which is not a whole number of the vision tower's {crop_size}-pixel crops",
            )
    if not pinpoints:
        raise _field_error(where, "image_grid_pinpoints", spec, "is empty")
    return pinpoints
