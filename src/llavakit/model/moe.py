"""Mixture-of-experts language models for MM1-style decoders (`ModelSpec.moe`).

`MoeSpec` is what a recipe says about the decoder's experts; `apply_moe` turns the language
model the spec built into the one that trains.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedModel


@dataclass
class MoeSpec:
    """Experts of the language model.

    `upcycle`: turn a dense decoder into an MoE one (sparse upcycling): each expert starts as a
    copy of the dense feed-forward block, the router starts small. `num_experts` / `top_k`: the
    experts per layer and how many each token uses (MM1: top-2). `aux_loss_coef`: weight of the
    router's load-balancing loss added to the training loss (null: the MoE config's own).
    """

    upcycle: bool = False
    num_experts: int = 8
    top_k: int = 2
    router_init_std: float = 0.02
    aux_loss_coef: float | None = None


def apply_moe(language: PreTrainedModel, moe: MoeSpec) -> PreTrainedModel:
    """The language model `moe` asks for: `language` itself unless it upcycles."""
    if not moe.upcycle:
        return language
    raise NotImplementedError("sparse upcycling is not available yet")
