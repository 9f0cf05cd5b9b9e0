"""`LlavaKitConfig`: what a LLaVA model is made of, saved as `config.json` beside its weights.

A composite transformers config: the vision tower's config, the language model's config,
and the few choices LLaVA adds between them (connector, feature layer, feature strategy,
image token). Field names follow transformers' `LlavaConfig` so that a reader of one
reads the other.
"""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# Vision models that prepend a CLS token to their patch features.
VISION_TYPES_WITH_CLS = {"clip_vision_model"}


class LlavaKitConfig(PreTrainedConfig):
    """Config of `LlavaKitForCausalLM`.

    connector: a key of `llavakit.model.connectors.CONNECTORS` (`linear`, `mlp2x_gelu`, ...).
    vision_feature_layer: hidden-state index (or list, concatenated); -2 is LLaVA's choice.
    vision_feature_select_strategy: `default` drops the CLS feature, `full` keeps all.
    image_token_id: id of the `<image>` placeholder that the processor expands.
    """

    model_type = "llavakit"
    attribute_map = {"image_token_index": "image_token_id"}
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

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                f"vision_feature_select_strategy must be 'default' or 'full', got {self.vision_feature_select_strategy!r}"
            )
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True

    @property
    def num_feature_layers(self) -> int:
        layers = self.vision_feature_layer
        return 1 if isinstance(layers, int) else len(layers)

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
