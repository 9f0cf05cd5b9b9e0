"""`LlavaKitForCausalLM`: vision tower → connector → language model, as one transformers model.

Images enter the text as `<image>` placeholder tokens, already expanded by the processor to
one token per visual feature (transformers' LlavaProcessor convention); how many features a
crop gives is the connector's choice (`llavakit.model.connectors`), counted by the config. The model encodes
the images, projects the features, checks that their number equals the number of
placeholders, and scatters them into the token embeddings before the language model runs.
Save/load, generate (with KV cache), gradient checkpointing and device maps come from
transformers' `PreTrainedModel` and `GenerationMixin`.

High-resolution inputs (`config.image_mode` other than `fixed`) follow transformers'
LLaVA-NeXT / OneVision conventions, so the same tensors drive either model:

* `pixel_values`: every image's crops, base image first, stacked flat `(total crops, 3, S, S)`,
  or transformers' padded `(images, max crops, 3, S, S)`;
* `image_sizes`: `(images, 2)` original (height, width), which fix each image's grid;
* `image_num_crops` (optional): crops per image; 1 marks an image encoded at base
  resolution only (a OneVision multi-image sample). Default: 1 + the grid's cells;
* `batch_num_images` (optional, transformers' OneVision convention): images per sample. The
  images of a sample with more than one are encoded at base resolution only (their first
  crop; the rest of a padded row is padding) when `config.multi_image_base_only` says so;
  the image of a single-image sample keeps its grid. Beside `image_num_crops` it must agree.

Videos (`<video>` tokens, `config.video_token_id`) come as `pixel_values_videos`: frames at
base resolution, `(videos, frames, 3, S, S)` or flat `(total frames, 3, S, S)` with
`video_num_frames`. All crops (and all frames) are encoded in one batched call.

Generation: `<image>` / `<video>` ids are inputs, never text, so the model's generation config
suppresses them by default (`generation_config.suppress_tokens`; pass `suppress_tokens=[]` to
`generate` to allow them). A model that still writes one (suppression off) gets it embedded as
an ordinary token after the prefill step, as transformers' Llava does: only the prefill step
(no cache, or an empty one) requires pixel values for the placeholders it holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutputWithPast

from llavakit.model import anyres
from llavakit.model.configuration import LlavaKitConfig
from llavakit.model.connectors import LearnedTable, build_connector
from llavakit.model.moe import routes_tokens
from llavakit.model.vision import VisionTower


def _is_prefill(cache) -> bool:
    """The step that holds the prompt: no cache, or an empty one. Later steps hold generated ids only."""
    return cache is None or cache.get_seq_length() == 0


def _images_per_sample(batch_num_images: Sequence[int] | torch.Tensor, num_images: int) -> list[int]:
    """`batch_num_images` as ints, checked against the images given.

    A count that does not add up would pair images with the wrong samples (and so the wrong
    base-only rule) without any later check noticing, so it fails here, naming both numbers.
    """
    per_sample = [int(n) for n in torch.as_tensor(batch_num_images).reshape(-1).tolist()]
    if any(n < 0 for n in per_sample):
        raise ValueError(f"batch_num_images must not be negative, got {per_sample}")
    if sum(per_sample) != num_images:
        raise ValueError(
            f"batch_num_images {per_sample} counts {sum(per_sample)} image(s), but {num_images} image(s) were given"
        )
    return per_sample


class LlavaKitForCausalLM(PreTrainedModel, GenerationMixin):
    config: LlavaKitConfig
    config_class = LlavaKitConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["cache"]
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
        # The connector decides each crop's token count (config.connector_output): the grid modes and
        # videos merge and pool its output, so counts everywhere are of the connector's tokens.
        self.multi_modal_projector = build_connector(config.connector, config.connector_input)
        self.language_model = language_model or AutoModelForCausalLM.from_config(config.text_config)
        if config.has_image_newline:
            # Row-end / end-of-image vector of LLaVA-NeXT and OneVision (and LLaVA-1.5-HD's row-end token).
            hidden = config.text_config.hidden_size
            self.image_newline = nn.Parameter(torch.randn(hidden) / math.sqrt(hidden))
        self.post_init()
        self._suppress_placeholders()

    def placeholder_token_ids(self) -> list[int]:
        """The `<image>` / `<video>` ids: slots for visual features, which no answer should contain."""
        return [token for token in (self.config.image_token_id, self.config.video_token_id) if token is not None]

    def _suppress_placeholders(self) -> None:
        """Keep placeholders out of generated text unless the generation config already chose (`[]`: allow all)."""
        if self.generation_config is not None and self.generation_config.suppress_tokens is None:
            self.generation_config.suppress_tokens = self.placeholder_token_ids()

    def adjust_generation_fn(self, *args, **kwargs) -> None:
        """After a saved generation config loads: checkpoints written before the default still suppress."""
        super().adjust_generation_fn(*args, **kwargs)
        self._suppress_placeholders()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LearnedTable):  # a connector's queries or position embeddings
            module.init_weights()
        if module is self and getattr(self, "image_newline", None) is not None:
            init.normal_(self.image_newline, mean=0.0, std=1 / math.sqrt(self.config.text_config.hidden_size))

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def _newline(self) -> torch.Tensor | None:
        return getattr(self, "image_newline", None)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(images, 3, H, W) -> (images, features, text hidden size); one crop per image (`fixed`)."""
        features = self.multi_modal_projector(self.vision_tower(pixel_values))
        if self.config.newline_in_images:
            newline = self.image_newline.to(features.device, features.dtype)
            features = torch.cat((features, newline.expand(features.shape[0], 1, -1)), dim=1)
        return features

    def _base_only_images(self, image_sizes: torch.Tensor, batch_num_images) -> list[bool]:
        """Per image, whether it is encoded at base resolution only.

        Without `batch_num_images` every image keeps its grid (as transformers does); with it,
        the images of a multi-image sample are base-only when the config says so (OneVision).
        """
        if batch_num_images is None:
            return [False] * len(image_sizes)
        per_sample = _images_per_sample(batch_num_images, len(image_sizes))
        multi_base_only = self.config.base_only_for_multi_image
        return [multi_base_only and count > 1 for count in per_sample for _ in range(count)]

    def _crop_counts(
        self,
        image_sizes: torch.Tensor,
        image_num_crops: Sequence[int] | torch.Tensor | None,
        batch_num_images: Sequence[int] | torch.Tensor | None = None,
    ) -> list[int]:
        """Encoder inputs per image: `image_num_crops` when given, else derived from the grids and `batch_num_images`.

        Both given must agree, so a batch cannot be read one way by the processor and another by the model.
        """
        if image_num_crops is not None:
            counts = [int(count) for count in image_num_crops]
            if len(counts) != len(image_sizes):
                raise ValueError(f"image_num_crops has {len(counts)} entries for {len(image_sizes)} image_sizes")
            if batch_num_images is None:
                return counts
        pinpoints, crop = self.config.grid_pinpoints, self.config.crop_size
        expected = [
            1 if base_only else 1 + anyres.num_grid_cells(size, pinpoints, crop)
            for size, base_only in zip(image_sizes.tolist(), self._base_only_images(image_sizes, batch_num_images))
        ]
        if image_num_crops is not None and counts != expected:
            raise ValueError(
                f"image_num_crops {counts} disagree with batch_num_images "
                f"{_images_per_sample(batch_num_images, len(image_sizes))}, which need {expected} crops per image"
            )
        return expected

    def get_anyres_image_features(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | Sequence[Sequence[int]],
        image_num_crops: Sequence[int] | torch.Tensor | None = None,
        batch_num_images: Sequence[int] | torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Each image's visual tokens `(N_i, text hidden size)` in the grid modes.

        All crops go through the vision tower and connector in one call; each image's crop
        features are then merged, unpadded, reduced (`anyres_max_N`), given row-end newlines
        and joined with its base features by `anyres.pack_anyres_features`. An image with one
        crop is base-only: its features plus one newline. `batch_num_images` (images per
        sample) marks the images of multi-image samples, as transformers' OneVision does.
        """
        config = self.config
        image_sizes = torch.as_tensor(image_sizes).reshape(-1, 2)
        counts = self._crop_counts(image_sizes, image_num_crops, batch_num_images)
        if pixel_values.dim() == 5:
            if pixel_values.shape[0] != len(counts):
                raise ValueError(f"pixel_values holds {pixel_values.shape[0]} images but image_sizes {len(counts)}")
            pixel_values = torch.cat([crops[:count] for crops, count in zip(pixel_values, counts)])
        elif pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values must be (crops, 3, H, W) or (images, crops, 3, H, W), got {tuple(pixel_values.shape)}"
            )
        if pixel_values.shape[0] != sum(counts):
            raise ValueError(
                f"pixel_values holds {pixel_values.shape[0]} crops but the {len(counts)} image(s) need {sum(counts)} "
                f"({counts}); preprocess the images with the model's processor"
            )
        features = self.multi_modal_projector(self.vision_tower(pixel_values))
        pinpoints, crop = config.grid_pinpoints, config.crop_size
        packed, start = [], 0
        for size, count in zip(image_sizes.tolist(), counts):
            crops = features[start : start + count]
            start += count
            if count != 1 and count != 1 + anyres.num_grid_cells(size, pinpoints, crop):
                raise ValueError(
                    f"an image of size {tuple(size)} has {count} crops, but its grid needs "
                    f"{1 + anyres.num_grid_cells(size, pinpoints, crop)} (or 1 for base only)"
                )
            packed.append(
                anyres.pack_anyres_features(
                    crops,
                    size,
                    pinpoints,
                    crop,
                    newline=self._newline() if config.newline_in_images else None,
                    max_crops=config.max_crops,
                    base_first=config.base_first,
                )
            )
        return packed

    def get_video_features(
        self, pixel_values_videos: torch.Tensor, video_num_frames: Sequence[int] | torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Each video's visual tokens: frames encoded at base resolution, projected, pooled, newlines placed."""
        config = self.config
        if config.video_token_id is None:
            raise ValueError("pixel_values_videos given, but the model config has no video_token_id")
        if pixel_values_videos.dim() == 5:
            frames = [pixel_values_videos.shape[1]] * pixel_values_videos.shape[0]
            pixel_values_videos = pixel_values_videos.flatten(0, 1)
        elif pixel_values_videos.dim() == 4:
            frames = [pixel_values_videos.shape[0]] if video_num_frames is None else [int(n) for n in video_num_frames]
        else:
            raise ValueError(
                "pixel_values_videos must be (videos, frames, 3, H, W) or (frames, 3, H, W), "
                f"got {tuple(pixel_values_videos.shape)}"
            )
        if sum(frames) != pixel_values_videos.shape[0] or min(frames, default=0) < 1:
            raise ValueError(
                f"pixel_values_videos holds {pixel_values_videos.shape[0]} frames, video_num_frames says {frames}"
            )
        features = self.multi_modal_projector(self.vision_tower(pixel_values_videos))
        pooled = anyres.pool_video_features(features, config.video_pool_mode, config.video_pool_stride)
        side = math.isqrt(pooled.shape[1])
        pooled = pooled.reshape(pooled.shape[0], side, side, pooled.shape[-1])
        newline = self._newline()
        if newline is None:
            newline = pooled.new_zeros(pooled.shape[-1])  # only reached with video_newline='none'
        videos, start = [], 0
        for count in frames:
            videos.append(anyres.add_video_newlines(pooled[start : start + count], newline, config.video_newline))
            start += count
        return videos

    def _scatter(
        self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, features: torch.Tensor, token_id: int, what: str
    ) -> torch.Tensor:
        mask = input_ids == token_id
        num_tokens = int(mask.sum())
        if num_tokens != features.shape[0]:
            raise ValueError(
                f"the input has {num_tokens} {what} tokens but the {what}s give {features.shape[0]} features; "
                f"expand every <{what}> with the model's processor"
            )
        features = features.to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(mask.unsqueeze(-1), features)

    def merge_image_features(
        self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, image_features: torch.Tensor | list[torch.Tensor]
    ) -> torch.Tensor:
        """Put the image features, in order, at the `<image>` token positions.

        `image_features`: `(images, features, hidden)` (one count per image) or a list of
        `(features_i, hidden)` (the grid modes, one count per image).
        """
        if isinstance(image_features, (list, tuple)):
            flat = (
                torch.cat(list(image_features))
                if image_features
                else inputs_embeds.new_zeros(0, inputs_embeds.shape[-1])
            )
            return self._scatter(input_ids, inputs_embeds, flat, self.config.image_token_id, "image")
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
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        image_sizes: torch.Tensor | None = None,
        image_num_crops: torch.Tensor | Sequence[int] | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_num_frames: torch.Tensor | Sequence[int] | None = None,
        batch_num_images: torch.Tensor | Sequence[int] | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Loss (when `labels` is given) counts only positions whose label is not -100.

        `image_sizes` / `image_num_crops` / `batch_num_images` matter in the grid modes only (see
        the module docstring); `batch_num_images` is checked against the images in every mode and
        ignored on steps without `pixel_values` (generation after the prefill). An MoE language model
        adds its router load-balancing loss to the loss when `labels` is given and returns it (unweighted)
        as `aux_loss` (see `llavakit.model.moe`).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None and pixel_values.shape[0] > 0:
            if input_ids is None:
                raise ValueError("pixel_values need input_ids to find the <image> tokens")
            if self.config.image_mode == "fixed":
                if batch_num_images is not None:
                    _images_per_sample(batch_num_images, pixel_values.shape[0])
                features = self.get_image_features(pixel_values)
            elif image_sizes is None:
                raise ValueError(f"image_mode {self.config.image_mode!r} needs image_sizes beside pixel_values")
            else:
                features = self.get_anyres_image_features(pixel_values, image_sizes, image_num_crops, batch_num_images)
            inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, features)
        elif input_ids is not None and _is_prefill(cache) and bool((input_ids == self.config.image_token_id).any()):
            raise ValueError("the input has <image> tokens but no pixel_values")
        video_token = self.config.video_token_id
        if pixel_values_videos is not None and pixel_values_videos.shape[0] > 0:
            if input_ids is None:
                raise ValueError("pixel_values_videos need input_ids to find the <video> tokens")
            videos = torch.cat(self.get_video_features(pixel_values_videos, video_num_frames))
            inputs_embeds = self._scatter(input_ids, inputs_embeds, videos, video_token, "video")
        elif (
            video_token is not None
            and input_ids is not None
            and _is_prefill(cache)
            and bool((input_ids == video_token).any())
        ):
            raise ValueError("the input has <video> tokens but no pixel_values_videos")
        if routes_tokens(self.language_model.config):
            # An MoE decoder's balance loss belongs to the training loss: router logits are asked for
            # with labels only, never on generation steps, where transformers cannot compute that loss.
            kwargs.setdefault("output_router_logits", labels is not None)
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
