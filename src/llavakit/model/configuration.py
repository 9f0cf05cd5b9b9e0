"""`LlavaKitConfig`: a built model's config, saved as `config.json` beside its weights.

(What a model is built from, backbones named or as config mappings, is `llavakit.model.build.ModelSpec`.)

A composite transformers config: the vision tower's config, the language model's config,
and the few choices LLaVA adds between them (connector, feature layer, feature strategy,
image token). Field names follow transformers' `LlavaConfig` so that a reader of one
reads the other.

Beyond one fixed-size crop per image (`image_mode="fixed"`, LLaVA / LLaVA-1.5), the config
selects the high-resolution layouts of LLaVA-1.5-HD (`hd`), LLaVA-NeXT (`anyres`) and
LLaVA-OneVision (`anyres_max_N`), and OneVision's video input. The processor and the model
both read these fields and count tokens with the same functions of `llavakit.model.anyres`.
"""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from llavakit.model import anyres

# Vision models that prepend a CLS token to their patch features.
VISION_TYPES_WITH_CLS = {"clip_vision_model"}


class LlavaKitConfig(PreTrainedConfig):
    """Config of `LlavaKitForCausalLM`.

    connector: a key of `llavakit.model.connectors.CONNECTORS` (`linear`, `mlp2x_gelu`, ...).
    vision_feature_layer: hidden-state index (or list, concatenated); -2 is LLaVA's choice.
    vision_feature_select_strategy: `default` drops the CLS feature, `full` keeps all.
    image_token_id: id of the `<image>` placeholder that the processor expands.

    High resolution (all optional; the defaults keep one fixed-size crop per image):
    image_mode: `fixed`, `hd` (LLaVA-1.5-HD), `anyres` (LLaVA-NeXT) or `anyres_max_N`
        (OneVision: the merged crop map shrunk to about N crops' worth of features).
    image_grid_pinpoints: candidate canvases, a list of (height, width) or a string such as
        `"(1x1),...,(6x6)"`; default: the HD grids of at most `hd_max_cells` cells (`hd`),
        LLaVA-NeXT's five canvases (`anyres`), every grid up to 6x6 (`anyres_max_N`).
    use_image_newline: end every feature row with a learned `image_newline` vector (and a
        base-only image with one); default True in the grid modes, False for `fixed`.
    image_base_first: put the base (global) image's features before the crops' (LLaVA-NeXT,
        OneVision) or after them (default for `hd`, as LLaVA-1.5-HD describes it).
    multi_image_base_only: a sample with several images encodes each at base resolution
        only (OneVision); default True for `anyres_max_N`.
    video_token_id: id of the `<video>` placeholder (None: no video input).
    video_pool_mode / video_pool_stride: per-frame pooling of the feature map
        (`bilinear`, `average`, `max`; OneVision: bilinear, 2).
    video_newline: where newline vectors go in a video: `grid`, `frame`, `one_token`, `none`.
    """

    model_type = "llavakit"
    attribute_map = {"image_token_index": "image_token_id", "video_token_index": "video_token_id"}
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    connector: str = "mlp2x_gelu"
    vision_feature_layer: int | list[int] = -2
    vision_feature_select_strategy: str = "default"
    image_token_id: int = 32000
    tie_word_embeddings: bool = False
    image_mode: str = "fixed"
    image_grid_pinpoints: list | str | None = None
    hd_max_cells: int = 6
    use_image_newline: bool | None = None
    image_base_first: bool | None = None
    multi_image_base_only: bool | None = None
    video_token_id: int | None = None
    video_pool_mode: str = "bilinear"
    video_pool_stride: int = 2
    video_newline: str = "one_token"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                "vision_feature_select_strategy must be 'default' or 'full', "
                f"got {self.vision_feature_select_strategy!r}"
            )
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        self._check_high_resolution()

    def _check_high_resolution(self) -> None:
        """Fail at construction, not mid-forward, on a mode, pinpoint or video setting that cannot work."""
        mode = self.image_mode
        if mode not in ("fixed", "hd", "anyres") and not mode.startswith("anyres_max_"):
            raise ValueError(f"image_mode must be fixed, hd, anyres or anyres_max_N, got {mode!r}")
        if mode.startswith("anyres_max_"):
            anyres.parse_anyres_max(mode)
        if self.hd_max_cells < 1:
            raise ValueError(f"hd_max_cells must be >= 1, got {self.hd_max_cells}")
        anyres.pooled_shape(2, 2, self.video_pool_mode, self.video_pool_stride)
        if self.video_newline not in anyres.VIDEO_NEWLINE_PLACEMENTS:
            raise ValueError(
                f"video_newline must be one of {anyres.VIDEO_NEWLINE_PLACEMENTS}, got {self.video_newline!r}"
            )
        needs_square_map = mode != "fixed" or self.video_token_id is not None
        if needs_square_map and self.num_image_tokens != self.feature_side**2:
            raise ValueError(
                f"image_mode {mode!r} / video input merge and pool square feature maps, but the vision tower gives "
                f"{self.num_image_tokens} features per crop with strategy {self.vision_feature_select_strategy!r} "
                f"({self.feature_side}x{self.feature_side} patches): "
                "use 'default' with CLIP (drops CLS), 'full' with SigLIP"
            )
        if mode != "fixed":
            _ = self.grid_pinpoints  # parses and checks the canvases

    @property
    def num_image_tokens(self) -> int:
        """Visual features one image becomes (and so `<image>` tokens the processor emits)."""
        vision = self.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        has_cls = vision.model_type in VISION_TYPES_WITH_CLS
        if self.vision_feature_select_strategy == "full":
            return patches + int(has_cls)
        # `default` drops the first feature: the CLS token where there is one (as transformers does).
        return patches if has_cls else patches - 1

    # ---- high resolution: resolved settings and token counts -----------------------------

    @property
    def crop_size(self) -> int:
        """Side in pixels of one encoder input (a crop, the base image, a video frame)."""
        return int(self.vision_config.image_size)

    @property
    def feature_side(self) -> int:
        """Side of one crop's feature map."""
        return anyres.tokens_per_side(self.crop_size, int(self.vision_config.patch_size))

    @property
    def grid_pinpoints(self) -> list[tuple[int, int]] | None:
        """The candidate canvases (height, width) of the grid modes; None for `fixed`."""
        mode, crop = self.image_mode, self.crop_size
        if mode == "fixed":
            return None
        if self.image_grid_pinpoints is not None:
            pinpoints = anyres.parse_grid_pinpoints(self.image_grid_pinpoints, crop)
        elif mode == "hd":
            pinpoints = anyres.hd_pinpoints(crop, self.hd_max_cells)
        elif mode == "anyres":
            # LLaVA-NeXT's canvases 1x2, 2x1, 2x2, 3x1, 1x3, in crops of this encoder's size.
            pinpoints = [(crop * rows, crop * cols) for rows, cols in ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))]
        else:
            pinpoints = anyres.grid_pinpoints(crop)
        for height, width in pinpoints:
            if height % crop or width % crop:
                raise ValueError(f"grid pinpoint {(height, width)} is not a whole number of {crop}-pixel crops")
        return pinpoints

    @property
    def max_crops(self) -> int | None:
        """N of `anyres_max_N` (the reduced map's budget in crops); None otherwise."""
        return anyres.parse_anyres_max(self.image_mode) if self.image_mode.startswith("anyres_max_") else None

    @property
    def newline_in_images(self) -> bool:
        """Whether image features carry newline vectors (row ends, or one after a base-only image)."""
        return self.image_mode != "fixed" if self.use_image_newline is None else bool(self.use_image_newline)

    @property
    def base_first(self) -> bool:
        return self.image_mode != "hd" if self.image_base_first is None else bool(self.image_base_first)

    @property
    def base_only_for_multi_image(self) -> bool:
        if self.multi_image_base_only is None:
            return self.image_mode.startswith("anyres_max_")
        return bool(self.multi_image_base_only)

    @property
    def has_image_newline(self) -> bool:
        """Whether the model holds a learned `image_newline` vector (images or videos use it)."""
        video_newline = self.video_token_id is not None and self.video_newline != "none"
        return self.newline_in_images or video_newline

    def image_token_count(self, image_size=None, base_only: bool = False) -> int:
        """Visual features (so `<image>` tokens) of one image of `image_size` (height, width).

        `base_only`: the image is encoded at base resolution only (one crop), as every image
        of the `fixed` mode and the images of a multi-image sample under `multi_image_base_only`.
        """
        if self.image_mode == "fixed" or base_only:
            return self.num_image_tokens + int(self.newline_in_images)
        if image_size is None:
            raise ValueError(f"image_mode {self.image_mode!r} needs the image's (height, width) to count its tokens")
        return anyres.num_image_tokens(
            self.image_mode,
            image_size,
            crop_size=self.crop_size,
            patch_size=int(self.vision_config.patch_size),
            pinpoints=self.grid_pinpoints,
            newline=self.newline_in_images,
        )

    def video_token_count(self, num_frames: int) -> int:
        """Visual features (so `<video>` tokens) of a video of `num_frames` frames."""
        if num_frames < 1:
            raise ValueError(f"a video needs at least one frame, got {num_frames}")
        return anyres.num_video_tokens(
            num_frames,
            self.feature_side,
            pool_mode=self.video_pool_mode,
            stride=self.video_pool_stride,
            newline=self.video_newline,
        )
