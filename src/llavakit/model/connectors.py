"""Connectors: the small module that maps vision features into the LLM's embedding space.

A registry of exact keys, so a config names its connector and a researcher adds one with a
decorator. `mlpNx_gelu` is parsed for any N (LLaVA-1.5 uses N=2); `linear` is LLaVA's.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

ConnectorFactory = Callable[[int, int], nn.Module]
CONNECTORS: dict[str, ConnectorFactory] = {}
_MLP_PATTERN = re.compile(r"mlp(\d+)x_gelu")


def register_connector(name: str) -> Callable[[ConnectorFactory], ConnectorFactory]:
    """Register `factory(vision_dim, text_dim) -> nn.Module` under the exact key `name`."""

    def decorator(factory: ConnectorFactory) -> ConnectorFactory:
        if name in CONNECTORS:
            raise ValueError(f"connector {name!r} is already registered")
        CONNECTORS[name] = factory
        return factory

    return decorator


class MlpConnector(nn.Module):
    """Linear layers with GELU between them: `layers.0`, `layers.1`, ... hold the weights."""

    def __init__(self, vision_dim: int, text_dim: int, depth: int):
        super().__init__()
        dims = [vision_dim] + [text_dim] * depth
        self.layers = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(depth))
        self.act = nn.GELU()

    def forward(self, features):
        hidden = self.layers[0](features)
        for layer in self.layers[1:]:
            hidden = layer(self.act(hidden))
        return hidden


@register_connector("linear")
def _linear(vision_dim: int, text_dim: int) -> nn.Module:
    return MlpConnector(vision_dim, text_dim, depth=1)


def build_connector(name: str, vision_dim: int, text_dim: int) -> nn.Module:
    """Build the connector registered as `name`; `mlpNx_gelu` works for every N >= 1."""
    if name in CONNECTORS:
        return CONNECTORS[name](vision_dim, text_dim)
    match = _MLP_PATTERN.fullmatch(name)
    if match and int(match.group(1)) >= 1:
        return MlpConnector(vision_dim, text_dim, depth=int(match.group(1)))
    known = sorted(CONNECTORS) + ["mlpNx_gelu"]
    raise ValueError(f"unknown connector {name!r}; known: {', '.join(known)}")


def mlp_depth(name: str) -> int | None:
    """Number of linear layers of an MLP connector name (`linear` is 1), else None."""
    if name == "linear":
        return 1
    match = _MLP_PATTERN.fullmatch(name)
    return int(match.group(1)) if match else None
