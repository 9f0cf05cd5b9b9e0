"""`LlavaKitConfig`: a built model's config, saved as `config.json` beside its weights.

(What a model is built from, backbones named or as config mappings, is `llavakit.model.build.ModelSpec`.)

A composite transformers config: the vision tower's config, the language model's config,
and the few choices LLaVA adds between them (connector, feature layer, feature strategy,
image token). Field names follow transformers' `LlavaConfig` so that a reader of one
reads the other.

The connector decides how many tokens one crop becomes (`connector_tokens` / `connector_ratio`,
read by `llavakit.model.connectors`): every count here (`num_image_tokens`, `feature_side`,
`image_token_count`, `video_token_count`) is of the connector's output, which is what the grid
modes merge and videos pool.

Beyond one fixed-size crop per image (`image_mode="fixed"`, LLaVA / LLaVA-1.5), the config
selects the high-resolution layouts of LLaVA-1.5-HD (`hd`), LLaVA-NeXT (`anyres`) and
LLaVA-OneVision (`anyres_max_N`), and OneVision's video input. The processor and the model
both read these fields and count tokens with the same functions of `llavakit.model.anyres`.
"""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from llavakit.model import anyres
from llavakit.model.connectors import ConnectorInput, ConnectorOutput, connector_output

# Vision models that prepend a CLS token to their patch features.
VISION_TYPES_WITH_CLS = {"clip_vision_model"}


class LlavaKitConfig(PreTrainedConfig):
    """Config of `LlavaKitForCausalLM`.

    connector: a key of `llavakit.model.connectors.CONNECTORS` (`linear`, `mlp2x_gelu`, `avg_pool`,
        `c_abstractor`, `attn_pool`, `pixel_shuffle`).
    connector_tokens: tokens per crop of `avg_pool` / `c_abstractor` (a perfect square) and
        `attn_pool`; None: the connector's default (144).
    connector_ratio: `pixel_shuffle`'s r (a divisor of the patch grid's side); None: 2.
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
    connector_tokens: int | None = None
    connector_ratio: int | None = None
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
        _ = self.connector_output  # the connector exists and can meet its budget
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
        self._check_square_map()
        if mode != "fixed":
            _ = self.grid_pinpoints  # parses and checks the canvases

    def _square_map_users(self) -> str | None:
        """What reads one crop's tokens as a square feature map: the grid mode and / or video input."""
        users = [f"image_mode {self.image_mode!r}"] if self.image_mode != "fixed" else []
        if self.video_token_id is not None:
            users.append(f"video input (video_token_id={self.video_token_id})")
        return " and ".join(users) or None

    def _check_square_map(self) -> None:
        """The grid modes merge, and videos pool, each crop's tokens as a square map: the connector must give one."""
        users = self._square_map_users()
        output = self.connector_output
        if users is None:
            return
        if output.square_side is not None:
            self._check_video_pool(output.square_side)
            return
        if output.num_tokens == self.num_vision_features:  # one token per feature: the tower's output is no grid
            raise ValueError(
                f"{users}: the grid modes merge, and videos pool, square feature maps, but the vision tower gives "
                f"{self.num_vision_features} features per crop with strategy {self.vision_feature_select_strategy!r} "
                f"({self.patch_side}x{self.patch_side} patches): "
                "use 'default' with CLIP (drops CLS), 'full' with SigLIP"
            )
        raise ValueError(
            f"connector {self.connector!r} cannot serve {users}: the grid modes merge, and videos pool, each crop's "
            f"tokens as a square feature map, and {self.connector!r} gives {output.num_tokens} tokens per crop "
            "without a spatial grid (learned queries); use connector avg_pool, c_abstractor or pixel_shuffle for a "
            "token budget there, or keep it with image_mode 'fixed' and no video"
        )

    def _check_video_pool(self, side: int) -> None:
        """A frame's map pooled to nothing (a small connector budget, average / max pooling) would drop every frame."""
        if self.video_token_id is None:
            return
        height, width = anyres.pooled_shape(side, side, self.video_pool_mode, self.video_pool_stride)
        if height < 1 or width < 1:
            raise ValueError(
                f"video_pool_mode {self.video_pool_mode!r} with video_pool_stride={self.video_pool_stride} leaves no "
                f"features of the {side}x{side} map connector {self.connector!r} gives per frame: raise "
                "connector_tokens / lower connector_ratio, or pool bilinearly or with a smaller stride"
            )

    @property
    def num_vision_features(self) -> int:
        """Features the vision tower gives per crop (what the connector reads)."""
        vision = self.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        has_cls = vision.model_type in VISION_TYPES_WITH_CLS
        if self.vision_feature_select_strategy == "full":
            return patches + int(has_cls)
        # `default` drops the first feature: the CLS token where there is one (as transformers does).
        return patches if has_cls else patches - 1

    @property
    def vision_feature_width(self) -> int:
        """Width of the features the connector reads (the tower's, times the layers concatenated)."""
        layers = 1 if isinstance(self.vision_feature_layer, int) else len(self.vision_feature_layer)
        return int(self.vision_config.hidden_size) * layers

    @property
    def connector_input(self) -> ConnectorInput:
        """What the connector is built for: widths, one crop's patch grid (when its features form one), budget."""
        side, features = self.patch_side, self.num_vision_features
        return ConnectorInput(
            vision_dim=self.vision_feature_width,
            text_dim=int(self.text_config.hidden_size),
            grid=(side, side) if features == side * side else None,
            num_features=features,
            num_tokens=self.connector_tokens,
            ratio=self.connector_ratio,
        )

    @property
    def connector_output(self) -> ConnectorOutput:
        """Tokens per crop the connector gives, and their grid (raises on a budget it cannot meet)."""
        return connector_output(self.connector, self.connector_input)

    @property
    def num_image_tokens(self) -> int:
        """Tokens one crop becomes after the connector: an image's in the fixed mode (without a newline)."""
        return self.connector_output.num_tokens

    # ---- high resolution: resolved settings and token counts -----------------------------

    @property
    def crop_size(self) -> int:
        """Side in pixels of one encoder input (a crop, the base image, a video frame)."""
        return int(self.vision_config.image_size)

    @property
    def patch_side(self) -> int:
        """Side of one crop's patch grid in the vision tower (what the connector reads)."""
        return anyres.tokens_per_side(self.crop_size, int(self.vision_config.patch_size))

    @property
    def feature_side(self) -> int:
        """Side of one crop's feature map after the connector: what the grid modes merge and videos pool.

        The patch side for connectors that keep one token per feature; the connector's output side
        for the budgeted ones (`avg_pool`, `c_abstractor`: sqrt(N); `pixel_shuffle`: h / r).
        """
        output = self.connector_output
        if output.square_side is not None:
            return output.square_side
        if output.num_tokens == self.num_vision_features:
            return self.patch_side
        raise ValueError(
            f"connector {self.connector!r} gives {output.num_tokens} tokens per crop without a spatial grid: "
            "it has no feature side"
        )

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
            side=self.feature_side,
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
