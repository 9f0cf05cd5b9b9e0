"""`LlavaKitForCausalLM`: vision tower → connector → language model, as one transformers model.

Images enter the text as `<image>` placeholder tokens, already expanded by the processor to
one token per visual feature (transformers' LlavaProcessor convention). The model encodes
the images, projects the features, checks that their number equals the number of
placeholders, and scatters them into the token embeddings before the language model runs.
Save/load, generate (with KV cache), gradient checkpointing and device maps come from
transformers' `PreTrainedModel` and `GenerationMixin`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from llavakit.model.configuration import LlavaKitConfig
from llavakit.model.connectors import build_connector
from llavakit.model.vision import VisionTower


class LlavaKitForCausalLM(PreTrainedModel, GenerationMixin):
    config: LlavaKitConfig
    config_class = LlavaKitConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(
        self,
        config: LlavaKitConfig,
        vision_encoder: nn.Module | None = None,
        language_model: PreTrainedModel | None = None,
    ):
        """Build from `config`; pass already-loaded backbones to compose pretrained parts without a second copy."""
        super().__init__(config)
        if vision_encoder is None:
            self.vision_tower = VisionTower.from_config(
                config.vision_config, config.vision_feature_layer, config.vision_feature_select_strategy
            )
        else:
            self.vision_tower = VisionTower(
                vision_encoder, config.vision_feature_layer, config.vision_feature_select_strategy
            )
        self.multi_modal_projector = build_connector(
            config.connector, self.vision_tower.hidden_size, config.text_config.hidden_size
        )
        self.language_model = language_model or AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(images, 3, H, W) -> (images, features, text hidden size)."""
        return self.multi_modal_projector(self.vision_tower(pixel_values))

    def merge_image_features(
        self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Put the image features, in order, at the `<image>` token positions."""
        image_mask = input_ids == self.config.image_token_id
        num_tokens = int(image_mask.sum())
        num_images, per_image = image_features.shape[:2]
        if num_tokens != num_images * per_image:
            raise ValueError(
                f"the input has {num_tokens} image tokens but {num_images} image(s) give "
                f"{num_images * per_image} features ({per_image} each); "
                "expand every <image> with the model's processor"
            )
        features = image_features.reshape(-1, inputs_embeds.shape[-1]).to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), features)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Loss (when `labels` is given) counts only positions whose label is not -100."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None and pixel_values.shape[0] > 0:
            if input_ids is None:
                raise ValueError("pixel_values need input_ids to find the <image> tokens")
            inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, self.get_image_features(pixel_values))
        elif input_ids is not None and past_key_values is None and bool((input_ids == self.config.image_token_id).any()):
            raise ValueError("the input has <image> tokens but no pixel_values")
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
