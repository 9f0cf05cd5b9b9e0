"""The vision tower: a transformers CLIP or SigLIP vision model plus LLaVA's feature selection.

LLaVA does not use the encoder's final output: it takes the hidden states of a chosen layer
(the penultimate by default, which LLaVA found best), optionally several layers
concatenated, and drops the CLS feature under the `default` strategy.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, PreTrainedConfig


class VisionTower(nn.Module):
    """Wraps `encoder` (e.g. CLIPVisionModel) and returns the selected patch features."""

    def __init__(self, encoder: nn.Module, feature_layer: int | list[int], select_strategy: str):
        super().__init__()
        self.encoder = encoder
        self.feature_layer = feature_layer
        self.select_strategy = select_strategy

    @classmethod
    def from_config(cls, config: PreTrainedConfig, feature_layer: int | list[int], select_strategy: str) -> VisionTower:
        return cls(AutoModel.from_config(config), feature_layer, select_strategy)

    @property
    def config(self) -> PreTrainedConfig:
        return self.encoder.config

    @property
    def hidden_size(self) -> int:
        """Width of the features this tower returns (times the number of layers concatenated)."""
        layers = 1 if isinstance(self.feature_layer, int) else len(self.feature_layer)
        return self.config.hidden_size * layers

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(images, 3, H, W) -> (images, features, hidden_size)."""
        dtype = next(self.encoder.parameters()).dtype
        outputs = self.encoder(pixel_values.to(dtype), output_hidden_states=True, return_dict=True)
        layers = [self.feature_layer] if isinstance(self.feature_layer, int) else self.feature_layer
        selected = [outputs.hidden_states[index] for index in layers]
        if self.select_strategy == "default":
            selected = [features[:, 1:] for features in selected]
        return selected[0] if len(selected) == 1 else torch.cat(selected, dim=-1)
