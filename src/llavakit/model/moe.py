"""Mixture-of-experts language models for MM1-style decoders (`ModelSpec.moe`).

`MoeSpec` is what a recipe says about the decoder's experts; `apply_moe` turns the language
model the spec built into the one that trains.

Two ways to an MoE decoder, both ending in a transformers MoE model (so checkpoints save, load
and export through transformers):

* a transformers MoE causal LM as `model.language` (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE...);
* sparse upcycling (`moe.upcycle`) of a dense decoder into its transformers MoE sibling
  (`UPCYCLING`): Llama / Mistral -> Mixtral, Qwen2 -> Qwen2-MoE, Qwen3 -> Qwen3-MoE. Attention,
  norms and embeddings are copied exactly; every expert is a copy of the dense feed-forward block
  (the gate and up projections stacked into the fused `gate_up_proj`, the down projection into
  `down_proj`); each router starts as small normal noise (`router_init_std`), so routing starts
  near uniform. The top-k weights are normalised to sum to 1 (Mixtral always does; the Qwen MoE
  configs get `norm_topk_prob`), so at initialisation the MoE computes the dense model's
  function: all experts are the same function and their weights add up to one. Qwen2-MoE always
  has a shared expert beside the routed ones; an upcycled Qwen2 gets a zero-width one (and a zeroed
  shared gate), so it routes exactly like Mixtral (MM1's top-2 experts, no shared expert).

The load-balancing loss (transformers' `load_balancing_loss_func`, weighted by the config's
`router_aux_loss_coef`, which `aux_loss_coef` replaces when given) is added to the loss whenever
labels are given: `LlavaKitForCausalLM` then asks the language model for its router logits, and
returns the unweighted balance loss as `aux_loss`. The configs keep `output_router_logits` off:
transformers also reads it on generation steps, where its balance loss fails against the cache's
attention mask.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel


@dataclass
class MoeSpec:
    """Experts of the language model.

    `upcycle`: turn a dense decoder into an MoE one (sparse upcycling): each expert starts as a
    copy of the dense feed-forward block, the router starts small. `num_experts` / `top_k`: the
    experts per layer and how many each token uses (MM1: top-2). `router_init_std`: the std of the
    routers' normal initialisation. These three apply to upcycling only (an MoE language model
    keeps its own). `aux_loss_coef`: weight of the router's load-balancing loss added to the
    training loss (null: the MoE config's own), for an upcycled and an MoE language model alike.
    """

    upcycle: bool = False
    num_experts: int = 8
    top_k: int = 2
    router_init_std: float = 0.02
    aux_loss_coef: float | None = None


@dataclass(frozen=True)
class Upcycling:
    """How one dense family becomes the transformers MoE model with the same attention, norms and embeddings.

    `experts_key` / `width_key`: the MoE config's names for the expert count and one expert's
    width. `fixed`: MoE settings that make the upcycled model compute the dense function at
    initialisation. `carry`: dense config keys the MoE config reads without declaring them.
    `zeroed`: weight-name suffixes of MoE parts the dense model lacks, set to zero.
    """

    moe_type: str
    experts_key: str
    width_key: str
    fixed: Mapping[str, Any] = field(default_factory=dict)
    carry: tuple[str, ...] = ()
    zeroed: tuple[str, ...] = ()


_MIXTRAL = Upcycling("mixtral", "num_local_experts", "intermediate_size")
_QWEN_ROUTING = {"norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": []}

# Dense model_type -> its MoE sibling in transformers.
UPCYCLING: Mapping[str, Upcycling] = {
    "llama": _MIXTRAL,
    "mistral": _MIXTRAL,
    "qwen2": Upcycling(
        "qwen2_moe",
        "num_experts",
        "moe_intermediate_size",
        fixed={**_QWEN_ROUTING, "shared_expert_intermediate_size": 0, "qkv_bias": True},
        zeroed=("mlp.shared_expert_gate.weight",),
    ),
    "qwen3": Upcycling("qwen3_moe", "num_experts", "moe_intermediate_size", fixed=_QWEN_ROUTING, carry=("head_dim",)),
}

# Config keys that describe the saved model rather than its shape; the MoE config sets its own.
_OWN_KEYS = {"model_type", "architectures", "transformers_version", "_name_or_path"}

# A dense decoder layer's feed-forward weights: `<layer>.mlp.{gate,up,down}_proj.weight`.
_DENSE_FFN = re.compile(r"(?P<block>.+\.layers\.\d+\.mlp)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight")


# ---- which models route ------------------------------------------------------------------------


def routes_tokens(config: PreTrainedConfig) -> bool:
    """Whether `config` is a transformers MoE language model whose forward computes the router balance loss.

    Their configs carry `output_router_logits`, the switch their `ForCausalLM.forward` reads.
    """
    return hasattr(config, "output_router_logits") and hasattr(config, "router_aux_loss_coef")


def check_moe_spec(moe: MoeSpec) -> None:
    """Refuse settings that cannot make a router: they would fail deep inside transformers, or route nothing."""
    if moe.num_experts < 2:
        raise ValueError(f"model.moe.num_experts must be at least 2, got {moe.num_experts}")
    if not 1 <= moe.top_k <= moe.num_experts:
        raise ValueError(f"model.moe.top_k must be in [1, num_experts={moe.num_experts}], got {moe.top_k}")
    if moe.router_init_std <= 0:
        raise ValueError(f"model.moe.router_init_std must be positive, got {moe.router_init_std}")
    if moe.aux_loss_coef is not None and moe.aux_loss_coef < 0:
        raise ValueError(f"model.moe.aux_loss_coef must not be negative, got {moe.aux_loss_coef}")


# ---- configs -------------------------------------------------------------------------------------


def upcycling_for(config: PreTrainedConfig) -> Upcycling:
    """The upcycling recipe of a dense config's family; other families (and MoE models) are refused by name."""
    if routes_tokens(config):
        raise ValueError(
            f"model.moe.upcycle=true, but the language model ({config.model_type}) already has experts; "
            "set model.moe.upcycle=false to train it as it is"
        )
    if config.model_type not in UPCYCLING:
        raise ValueError(
            f"model.moe.upcycle=true cannot upcycle a {config.model_type!r} language model; "
            f"upcycling turns {', '.join(sorted(UPCYCLING))} into their transformers MoE models"
        )
    return UPCYCLING[config.model_type]


def upcycled_config(dense: PreTrainedConfig, moe: MoeSpec) -> PreTrainedConfig:
    """The MoE config of `dense` upcycled as `moe` says: the dense shapes, `num_experts` experts as wide as its FFN."""
    check_moe_spec(moe)
    recipe = upcycling_for(dense)
    declared = set(AutoConfig.for_model(recipe.moe_type).to_dict()) - _OWN_KEYS
    values = {key: value for key, value in dense.to_dict().items() if key in declared or key in recipe.carry}
    values.update(recipe.fixed)
    values[recipe.experts_key] = moe.num_experts
    values[recipe.width_key] = dense.intermediate_size
    values["num_experts_per_tok"] = moe.top_k
    values["output_router_logits"] = False  # the loss asks for router logits itself (see the module docstring)
    if moe.aux_loss_coef is not None:
        values["router_aux_loss_coef"] = moe.aux_loss_coef
    config = AutoConfig.for_model(recipe.moe_type, **values)
    config._attn_implementation = dense._attn_implementation
    return config


def moe_text_config(config: PreTrainedConfig, moe: MoeSpec) -> PreTrainedConfig:
    """The language config `apply_moe` gives a model built from `config` (shapes only, no weights)."""
    if moe.upcycle:
        return upcycled_config(config, moe)
    _check_plain(config, moe)
    if moe.aux_loss_coef is None:
        return config
    config = copy.deepcopy(config)
    config.router_aux_loss_coef = moe.aux_loss_coef
    return config


def _check_plain(config: PreTrainedConfig, moe: MoeSpec) -> None:
    """A balance-loss weight needs routers: on a dense model without upcycling it would silently do nothing."""
    if moe.aux_loss_coef is not None and not routes_tokens(config):
        raise ValueError(
            f"model.moe.aux_loss_coef={moe.aux_loss_coef} weights a router loss, but the language model "
            f"({config.model_type}) has no experts; set model.moe.upcycle=true or choose an MoE language model"
        )


# ---- models --------------------------------------------------------------------------------------


def apply_moe(language: PreTrainedModel, moe: MoeSpec) -> PreTrainedModel:
    """The language model `moe` asks for: `language` upcycled, or itself (an MoE one weighted by `aux_loss_coef`)."""
    if moe.upcycle:
        return upcycle(language, moe)
    _check_plain(language.config, moe)
    if moe.aux_loss_coef is not None:
        set_aux_loss_coef(language, moe.aux_loss_coef)
    return language


def set_aux_loss_coef(language: PreTrainedModel, coef: float) -> None:
    """Weight the balance loss by `coef`, now and once saved: transformers' MoE models copy it from the config."""
    if coef < 0:
        raise ValueError(f"model.moe.aux_loss_coef must not be negative, got {coef}")
    language.config.router_aux_loss_coef = coef
    if hasattr(language, "router_aux_loss_coef"):
        language.router_aux_loss_coef = coef


def upcycle(dense: PreTrainedModel, moe: MoeSpec) -> PreTrainedModel:
    """Sparse upcycling: the transformers MoE model of `dense`'s family, equal to `dense` at initialisation."""
    if getattr(dense, "hf_quantizer", None) is not None:
        raise ValueError(
            "model.moe.upcycle=true needs the language model's full-precision weights, not a quantized load; "
            "upcycle without stage.lora.quantize (or save the upcycled model first)"
        )
    config = upcycled_config(dense.config, moe)
    recipe = upcycling_for(dense.config)
    options = {"attn_implementation": config._attn_implementation} if config._attn_implementation else {}
    with warnings.catch_warnings():
        # an upcycled Qwen2-MoE's shared expert has zero width: torch notes that it has nothing to initialise
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        sparse = AutoModelForCausalLM.from_config(config, dtype=dense.dtype, **options)
    copy_into_experts(dense, sparse, recipe.zeroed, moe.router_init_std)
    return sparse


def copy_into_experts(
    dense: PreTrainedModel, sparse: PreTrainedModel, zeroed: tuple[str, ...], router_init_std: float
) -> None:
    """Fill every weight of `sparse` from `dense`: same-named ones copied, each FFN into all its experts.

    Routers get small normal noise and `zeroed` parts zeros. A dense weight with no place in the
    MoE model (a bias it lacks) or an MoE weight left unfilled is an error: either would make the
    upcycled model a different function from the dense one.
    """
    target = sparse.state_dict()
    filled: set[str] = set()
    homeless: list[str] = []
    ffn: dict[str, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        for name, tensor in dense.state_dict().items():
            match = _DENSE_FFN.fullmatch(name)
            if match:
                ffn.setdefault(match["block"], {})[match["proj"]] = tensor
            elif name in target and target[name].shape == tensor.shape:
                target[name].copy_(tensor)
                filled.add(name)
            else:
                homeless.append(name)
        for block, parts in ffn.items():
            filled |= _fill_block(target, block, parts, router_init_std, homeless)
        for name in target:
            if name.endswith(zeroed) and zeroed:
                target[name].zero_()
                filled.add(name)
    unfilled = [name for name, tensor in target.items() if name not in filled and tensor.numel() > 0]
    model_type = sparse.config.model_type
    if homeless:
        raise ValueError(
            f"cannot upcycle into {model_type}: it has no place for the dense weights {', '.join(homeless[:6])} "
            "(attention or MLP biases, or an unexpected layout)"
        )
    if unfilled:
        raise ValueError(
            f"cannot upcycle into {model_type}: nothing in the dense model fills {', '.join(unfilled[:6])}"
        )


def _fill_block(
    target: dict[str, torch.Tensor],
    block: str,
    parts: dict[str, torch.Tensor],
    router_init_std: float,
    homeless: list[str],
) -> set[str]:
    """One layer's experts, each the dense FFN (gate and up stacked as transformers fuses them), and its router."""
    names = {key: f"{block}.{key}" for key in ("experts.gate_up_proj", "experts.down_proj", "gate.weight")}
    if any(name not in target for name in names.values()) or len(parts) != 3:
        homeless.extend(f"{block}.{proj}.weight" for proj in parts)
        return set()
    gate_up = torch.cat([parts["gate_proj"], parts["up_proj"]])
    experts = (target[names["experts.gate_up_proj"]], target[names["experts.down_proj"]])
    if experts[0].shape[1:] != gate_up.shape or experts[1].shape[1:] != parts["down_proj"].shape:
        homeless.extend(f"{block}.{proj}.weight" for proj in parts)
        return set()
    experts[0].copy_(gate_up.expand_as(experts[0]))
    experts[1].copy_(parts["down_proj"].expand_as(experts[1]))
    target[names["gate.weight"]].normal_(mean=0.0, std=router_init_std)
    return set(names.values())


__all__ = [
    "UPCYCLING",
    "MoeSpec",
    "Upcycling",
    "apply_moe",
    "check_moe_spec",
    "copy_into_experts",
    "moe_text_config",
    "routes_tokens",
    "set_aux_loss_coef",
    "upcycle",
    "upcycled_config",
]
