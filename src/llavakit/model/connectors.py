"""Connectors: the module between the vision tower and the LLM, and the visual token budget.

A connector maps one crop's vision features `(crops, features, vision_dim)` to the tokens the
language model reads `(crops, tokens, text_dim)`. MM1 found that the number of visual tokens
(and the image resolution) matters far more than the connector's design, so here a connector
also decides how many tokens a crop becomes: each registered connector comes with an output
rule (`connector_output`) that `LlavaKitConfig` counts `<image>` / `<video>` tokens with, so the
processor's expansion and the model's features cannot disagree.

| key | tokens per crop (h x w patch grid) | output | budget key (default) |
|---|---|---|---|
| `linear`, `mlpNx_gelu` | h * w, one per feature | the tower's grid | none |
| `avg_pool` | N: adaptive average pooling, then an MLP | sqrt(N) x sqrt(N) grid | `connector_tokens` (144) |
| `c_abstractor` | N: ResNet blocks, pooling, ResNet blocks, MLP | sqrt(N) x sqrt(N) grid | `connector_tokens` (144) |
| `pixel_shuffle` | (h/r) * (w/r): space-to-depth, then an MLP | (h/r) x (w/r) grid | `connector_ratio` (2) |
| `attn_pool` | N learned queries (perceiver resampler) | unordered | `connector_tokens` (144) |

A registry of exact keys: `@register_connector(name, output=rule)` registers
`factory(inputs: ConnectorInput) -> nn.Module`; `rule(name, inputs) -> ConnectorOutput` says
what it outputs (default: one token per feature, the grid kept). See docs/connectors.md.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init

Grid = tuple[int, int]
DEFAULT_TOKENS = 144  # MM1 / Honeybee's budget: a 12x12 grid per crop
DEFAULT_RATIO = 2  # nanoVLM / Idefics3 shuffle 2x2 patches into one token (Idefics3 uses 3 at 364 px)
_MLP_PATTERN = re.compile(r"mlp(\d+)x_gelu")


# ---- what a connector is built for, and what it outputs ---------------------------------------


@dataclass(frozen=True)
class ConnectorInput:
    """What a connector is built for: the widths, one crop's feature grid and the budget keys.

    grid: (height, width) of one crop's patch features, or None where they form no grid (a kept
        CLS feature; SigLIP's first patch dropped by the `default` strategy).
    num_features: features per crop the tower gives; None: height * width of `grid`.
    num_tokens / ratio: `LlavaKitConfig.connector_tokens` / `connector_ratio`; None takes the
        connector's default.
    """

    vision_dim: int
    text_dim: int
    grid: Grid | None = None
    num_features: int | None = None
    num_tokens: int | None = None
    ratio: int | None = None

    @property
    def features(self) -> int:
        """Vision features per crop (what a one-token-per-feature connector outputs)."""
        if self.num_features is not None:
            return self.num_features
        if self.grid is None:
            raise ValueError("a ConnectorInput needs its grid or num_features to count tokens")
        return self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class ConnectorOutput:
    """Tokens per crop a connector gives, and their grid (None: unordered tokens, such as learned queries)."""

    num_tokens: int
    grid: Grid | None = None

    @property
    def square_side(self) -> int | None:
        """Side of a square output grid (what the grid modes merge and videos pool); None otherwise."""
        if self.grid is None or self.grid[0] != self.grid[1]:
            return None
        return self.grid[0]


ConnectorFactory = Callable[[ConnectorInput], nn.Module]
OutputRule = Callable[[str, ConnectorInput], ConnectorOutput]


@dataclass(frozen=True)
class ConnectorType:
    """A registered connector: how to build it and what it outputs for an input."""

    build: ConnectorFactory
    output: OutputRule


def _refuse(name: str, key: str, value: object, why: str) -> None:
    """A budget key set for a connector that never reads it: silently ignoring it would train another model."""
    if value is not None:
        raise ValueError(f"{key}={value!r} does not apply to connector {name!r}: {why}")


def _need_grid(name: str, inputs: ConnectorInput) -> Grid:
    if inputs.grid is None:
        raise ValueError(
            f"connector {name!r} works on the tower's patch grid, but its {inputs.features} features per crop form "
            "none (a kept CLS feature, or a patch dropped): use vision_feature_select_strategy 'default' with CLIP, "
            "'full' with SigLIP"
        )
    return inputs.grid


def one_token_per_feature(name: str, inputs: ConnectorInput) -> ConnectorOutput:
    """`linear`, `mlpNx_gelu` (and factories of the two-argument signature): every feature becomes a token."""
    why = "it keeps one token per vision feature; avg_pool, c_abstractor, attn_pool and pixel_shuffle set a budget"
    _refuse(name, "connector_tokens", inputs.num_tokens, why)
    _refuse(name, "connector_ratio", inputs.ratio, why)
    return ConnectorOutput(inputs.features, inputs.grid)


def pooled_grid(name: str, inputs: ConnectorInput) -> ConnectorOutput:
    """`avg_pool`, `c_abstractor`: a sqrt(N) x sqrt(N) grid, N = connector_tokens (144 by default)."""
    _refuse(name, "connector_ratio", inputs.ratio, "its token count is connector_tokens")
    height, width = _need_grid(name, inputs)
    tokens = DEFAULT_TOKENS if inputs.num_tokens is None else inputs.num_tokens
    side = math.isqrt(tokens) if tokens > 0 else 0
    if tokens < 1 or side * side != tokens:
        raise ValueError(
            f"connector_tokens={tokens} must be a positive perfect square for connector {name!r}: "
            "it pools each crop's features to a sqrt(N) x sqrt(N) grid (16, 64, 144, 576, ...)"
        )
    if side > min(height, width):
        default = " (the connector's default)" if inputs.num_tokens is None else ""
        raise ValueError(
            f"connector_tokens={tokens}{default} asks connector {name!r} for a {side}x{side} grid, larger than the "
            f"tower's {height}x{width} patch grid: pooling cannot add detail; set connector_tokens to at most "
            f"{min(height, width) ** 2}"
        )
    return ConnectorOutput(tokens, (side, side))


def shuffled_grid(name: str, inputs: ConnectorInput) -> ConnectorOutput:
    """`pixel_shuffle`: (h/r) x (w/r) tokens of r*r features each, r = connector_ratio (2 by default)."""
    height, width = _need_grid(name, inputs)
    ratio = DEFAULT_RATIO if inputs.ratio is None else inputs.ratio
    if ratio < 1 or height % ratio or width % ratio:
        raise ValueError(
            f"connector_ratio={ratio} must be a positive divisor of the tower's {height}x{width} patch grid "
            f"for connector {name!r}: it folds r x r patches into one token"
        )
    grid = (height // ratio, width // ratio)
    why = f"its tokens are (h/r) x (w/r) = {grid[0] * grid[1]}; set connector_ratio"
    _refuse(name, "connector_tokens", inputs.num_tokens, why)
    return ConnectorOutput(grid[0] * grid[1], grid)


def learned_queries(name: str, inputs: ConnectorInput) -> ConnectorOutput:
    """`attn_pool`: N unordered tokens, N = connector_tokens (144 by default); any feature count goes in."""
    _refuse(name, "connector_ratio", inputs.ratio, "its token count is connector_tokens")
    tokens = DEFAULT_TOKENS if inputs.num_tokens is None else inputs.num_tokens
    if tokens < 1:
        raise ValueError(f"connector_tokens={tokens} must be positive for connector {name!r}")
    return ConnectorOutput(tokens, None)


# ---- registry ----------------------------------------------------------------------------------

CONNECTORS: dict[str, ConnectorType] = {}


def _takes_widths(factory: Callable) -> bool:
    """Whether `factory` has the earlier `factory(vision_dim, text_dim)` signature (two required positionals)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in parameters if p.kind in positional and p.default is inspect.Parameter.empty]
    return len(required) == 2


def register_connector(name: str, output: OutputRule = one_token_per_feature) -> Callable[[Callable], Callable]:
    """Register `factory(inputs: ConnectorInput) -> nn.Module` under the exact key `name`.

    `output(name, inputs)` gives the connector's tokens per crop (and raises, naming the key and
    value, on a budget it cannot meet); the default keeps one token per feature. A factory of the
    earlier two-argument signature `factory(vision_dim, text_dim)` still registers, as one token
    per feature, so connectors written before the budget keys keep working.
    """

    def decorator(factory: Callable) -> Callable:
        if name in CONNECTORS:
            raise ValueError(f"connector {name!r} is already registered")
        build = factory
        if _takes_widths(factory):

            def build(inputs: ConnectorInput) -> nn.Module:
                return factory(inputs.vision_dim, inputs.text_dim)

        CONNECTORS[name] = ConnectorType(build, output)
        return factory

    return decorator


def mlp_depth(name: str) -> int | None:
    """Number of linear layers of an MLP connector name (`linear` is 1), else None."""
    if name == "linear":
        return 1
    match = _MLP_PATTERN.fullmatch(name)
    return int(match.group(1)) if match else None


def connector_type(name: str) -> ConnectorType:
    """The registered connector `name`; `mlpNx_gelu` works for every N >= 1."""
    if name in CONNECTORS:
        return CONNECTORS[name]
    depth = mlp_depth(name)
    if depth is not None and depth >= 1:

        def build(inputs: ConnectorInput) -> nn.Module:
            return MlpConnector(inputs.vision_dim, inputs.text_dim, depth)

        return ConnectorType(build, one_token_per_feature)
    known = sorted(CONNECTORS) + ["mlpNx_gelu"]
    raise ValueError(f"unknown connector {name!r}; known: {', '.join(known)}")


def connector_output(name: str, inputs: ConnectorInput) -> ConnectorOutput:
    """Tokens per crop (and their grid) connector `name` makes of `inputs`; raises on a budget it cannot meet."""
    return connector_type(name).output(name, inputs)


def build_connector(name: str, inputs: ConnectorInput | int, text_dim: int | None = None) -> nn.Module:
    """Build connector `name` for `inputs`.

    `build_connector(name, vision_dim, text_dim)` is short for a `ConnectorInput` without a grid,
    enough for the connectors that keep one token per feature (`linear`, `mlpNx_gelu`).
    """
    if not isinstance(inputs, ConnectorInput):
        if text_dim is None:
            raise ValueError("build_connector needs a ConnectorInput, or vision_dim and text_dim")
        inputs = ConnectorInput(int(inputs), int(text_dim))
    return connector_type(name).build(inputs)


# ---- shared parts ------------------------------------------------------------------------------


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


class LearnedTable(nn.Module):
    """A learned `(rows, width)` table (queries, position embeddings), drawn from a truncated normal.

    A module of its own so that the model's weight initialisation (`LlavaKitForCausalLM._init_weights`)
    finds it: transformers' defaults only know linear, conv, norm and embedding layers.
    """

    def __init__(self, rows: int, width: int, std: float = 0.02):
        super().__init__()
        self.std = std
        self.weight = nn.Parameter(torch.empty(rows, width))
        self.init_weights()

    def init_weights(self) -> None:
        init.trunc_normal_(self.weight, std=self.std)


def _to_map(features: torch.Tensor, grid: Grid) -> torch.Tensor:
    """`(crops, h*w, C)` row-major features -> `(crops, C, h, w)` maps."""
    crops, tokens, channels = features.shape
    height, width = grid
    if tokens != height * width:
        raise ValueError(f"expected {height}x{width} = {height * width} features per crop, got {tokens}")
    return features.transpose(1, 2).reshape(crops, channels, height, width)


def _to_tokens(maps: torch.Tensor) -> torch.Tensor:
    """`(crops, C, h, w)` maps -> `(crops, h*w, C)` tokens, row-major (the order the grid modes merge)."""
    return maps.flatten(2).transpose(1, 2)


# ---- avg_pool ----------------------------------------------------------------------------------


class AvgPoolConnector(nn.Module):
    """MM1's average pooling: each crop's feature map pooled to `side` x `side`, then a 2-layer GELU MLP."""

    def __init__(self, inputs: ConnectorInput, side: int):
        super().__init__()
        self.grid, self.side = _need_grid("avg_pool", inputs), side
        self.mlp = MlpConnector(inputs.vision_dim, inputs.text_dim, depth=2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(_to_map(features, self.grid), self.side)  # (crops, C, side, side)
        return self.mlp(_to_tokens(pooled))


@register_connector("avg_pool", output=pooled_grid)
def _avg_pool(inputs: ConnectorInput) -> nn.Module:
    return AvgPoolConnector(inputs, pooled_grid("avg_pool", inputs).square_side)


# ---- c_abstractor ------------------------------------------------------------------------------


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of `(crops, C, h, w)` maps (ConvNeXt's and Honeybee's LayerNorm2d).

    Chosen over BatchNorm: it keeps no running statistics, so a crop's tokens do not depend on
    the other crops of the batch, and a stage-1 run's trainable weights are the whole connector.
    """

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return super().forward(maps.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SqueezeExcite(nn.Module):
    """Channel gates from the map's mean: RegNet-Y's squeeze-and-excitation."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.act = nn.SiLU()

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        gate = self.expand(self.act(self.reduce(maps.mean((2, 3), keepdim=True))))
        return maps * torch.sigmoid(gate)


class BottleneckBlock(nn.Module):
    """RegNet-Y's residual bottleneck: 1x1 conv, 3x3 depthwise conv, squeeze-excitation, 1x1 conv.

    Each conv is followed by a channel LayerNorm (SiLU after the first two); a 1x1 conv projects the
    shortcut where the width changes. The C-Abstractor stacks these around its pooling, so every
    token sees its neighbourhood before and after the map shrinks (locality that plain pooling lacks).
    """

    def __init__(self, in_channels: int, out_channels: int, se_ratio: float = 0.25):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.norm1 = ChannelLayerNorm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, groups=out_channels, bias=False)
        self.norm2 = ChannelLayerNorm(out_channels)
        self.se = SqueezeExcite(out_channels, max(1, round(in_channels * se_ratio)))
        self.conv3 = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.norm3 = ChannelLayerNorm(out_channels)
        self.shortcut = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), ChannelLayerNorm(out_channels))
        )
        self.act = nn.SiLU()

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        hidden = self.act(self.norm1(self.conv1(maps)))
        hidden = self.act(self.norm2(self.conv2(hidden)))
        hidden = self.norm3(self.conv3(self.se(hidden)))
        return self.act(hidden + self.shortcut(maps))


class CAbstractorConnector(nn.Module):
    """Honeybee's C-Abstractor (MM1's best-performing connector family).

    Position embeddings are added to the features; `depth` bottleneck blocks, adaptive average
    pooling to `side` x `side`, `depth` more blocks, then a 2-layer GELU MLP readout. `hidden`
    (the blocks' width) defaults to the vision width, as Honeybee's 1024 for CLIP ViT-L.
    """

    def __init__(self, inputs: ConnectorInput, side: int, depth: int = 3, hidden: int | None = None):
        super().__init__()
        self.grid, self.side = _need_grid("c_abstractor", inputs), side
        hidden = hidden or inputs.vision_dim
        self.position = LearnedTable(self.grid[0] * self.grid[1], inputs.vision_dim)
        widths = [inputs.vision_dim] + [hidden] * depth
        self.before = nn.Sequential(*(BottleneckBlock(widths[i], widths[i + 1]) for i in range(depth)))
        self.after = nn.Sequential(*(BottleneckBlock(hidden, hidden) for _ in range(depth)))
        self.readout = MlpConnector(widths[-1], inputs.text_dim, depth=2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        maps = self.before(_to_map(features + self.position.weight.to(features.dtype), self.grid))
        maps = self.after(F.adaptive_avg_pool2d(maps, self.side))  # (crops, hidden, side, side)
        return self.readout(_to_tokens(maps))


@register_connector("c_abstractor", output=pooled_grid)
def _c_abstractor(inputs: ConnectorInput) -> nn.Module:
    return CAbstractorConnector(inputs, pooled_grid("c_abstractor", inputs).square_side)


# ---- pixel_shuffle -----------------------------------------------------------------------------


class PixelShuffleConnector(nn.Module):
    """nanoVLM / Idefics3's pixel shuffle: each r x r block of patches folded into one token, then a 2-layer MLP.

    `(crops, h*w, d)` -> `(crops, (h/r)*(w/r), d*r*r)`: no feature is averaged away, the tokens get wider.
    """

    def __init__(self, inputs: ConnectorInput, ratio: int):
        super().__init__()
        self.grid, self.ratio = _need_grid("pixel_shuffle", inputs), ratio
        self.mlp = MlpConnector(inputs.vision_dim * ratio * ratio, inputs.text_dim, depth=2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        crops, tokens, channels = features.shape
        (height, width), ratio = self.grid, self.ratio
        if tokens != height * width:
            raise ValueError(f"expected {height}x{width} = {height * width} features per crop, got {tokens}")
        blocks = features.reshape(crops, height // ratio, ratio, width // ratio, ratio, channels)
        # (crops, h/r, w/r, r, r, d): the block's patches side by side in one wide token
        blocks = blocks.permute(0, 1, 3, 2, 4, 5).reshape(crops, -1, ratio * ratio * channels)
        return self.mlp(blocks)


@register_connector("pixel_shuffle", output=shuffled_grid)
def _pixel_shuffle(inputs: ConnectorInput) -> nn.Module:
    return PixelShuffleConnector(inputs, DEFAULT_RATIO if inputs.ratio is None else inputs.ratio)


# ---- attn_pool ---------------------------------------------------------------------------------


def _attention_heads(width: int, head_dim: int = 64) -> int:
    """Heads of about `head_dim` features each that divide `width` (16 for 1024, 18 for SigLIP's 1152)."""
    heads = max(1, width // head_dim)
    while width % heads:
        heads -= 1
    return heads


class ResamplerLayer(nn.Module):
    """One perceiver-resampler layer (Flamingo): the queries attend to the features and themselves, then an MLP.

    Pre-norm residual blocks: LayerNorms on queries and features, multi-head attention, LayerNorm,
    a 4x GELU MLP.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_queries = nn.LayerNorm(width)
        self.norm_features = nn.LayerNorm(width)
        self.query = nn.Linear(width, width, bias=False)
        self.key_value = nn.Linear(width, 2 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp_in = nn.Linear(width, 4 * width)
        self.mlp_out = nn.Linear(4 * width, width)
        self.act = nn.GELU()

    def _split(self, tokens: torch.Tensor) -> torch.Tensor:
        """`(crops, n, width)` -> `(crops, heads, n, width / heads)`."""
        crops, length, width = tokens.shape
        return tokens.reshape(crops, length, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, queries: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        normed = self.norm_queries(queries)
        context = torch.cat((self.norm_features(features), normed), dim=1)  # features, then the queries
        key, value = self.key_value(context).chunk(2, dim=-1)
        attended = F.scaled_dot_product_attention(self._split(self.query(normed)), self._split(key), self._split(value))
        queries = queries + self.out(attended.transpose(1, 2).flatten(2))
        return queries + self.mlp_out(self.act(self.mlp_in(self.norm_mlp(queries))))


class AttnPoolConnector(nn.Module):
    """MM1's attention pooling: `num_queries` learned queries read every crop through `depth` resampler layers.

    The queries work at the vision width; a final LayerNorm and a 2-layer GELU MLP map them to the
    LLM. The output tokens carry no spatial order, so the grid modes and video pooling refuse it.
    """

    def __init__(self, inputs: ConnectorInput, num_queries: int, depth: int = 2):
        super().__init__()
        width = inputs.vision_dim
        self.queries = LearnedTable(num_queries, width)
        self.layers = nn.ModuleList(ResamplerLayer(width, _attention_heads(width)) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.readout = MlpConnector(width, inputs.text_dim, depth=2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        queries = self.queries.weight.to(features.dtype).expand(features.shape[0], -1, -1)  # (crops, N, width)
        for layer in self.layers:
            queries = layer(queries, features)
        return self.readout(self.norm(queries))


@register_connector("attn_pool", output=learned_queries)
def _attn_pool(inputs: ConnectorInput) -> nn.Module:
    return AttnPoolConnector(inputs, learned_queries("attn_pool", inputs).num_tokens)


# ---- linear ------------------------------------------------------------------------------------


@register_connector("linear")
def _linear(inputs: ConnectorInput) -> nn.Module:
    return MlpConnector(inputs.vision_dim, inputs.text_dim, depth=1)
