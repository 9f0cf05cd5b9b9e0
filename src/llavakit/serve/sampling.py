"""Choosing each request's next token from a batched step's logits: greedy or sampled, per row.

Rows of one batch ask for different things (one greedy, one at temperature 0.8 with top-p
0.9 and a seed), so the choice is per row: the placeholder tokens the model's generation
config suppresses (`<image>`, `<video>`) are removed for every row, as `model.generate` does;
greedy rows take the argmax together; sampled rows draw from their own `torch.Generator`, so a
request with a `seed` gets the same answer whatever else shares its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How one request's answer is generated. `temperature` 0 means greedy (top_p then has no effect)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def new_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """A request's own random stream: seeded when it gave a `seed`, else from the system's entropy."""
    if params.greedy:
        return None
    generator = torch.Generator(device=device)
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    return generator


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """`logits` (vocab,) with every token outside the smallest set whose probability reaches `top_p` at -inf."""
    if top_p >= 1:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    probabilities = sorted_logits.softmax(dim=-1)
    outside = probabilities.cumsum(dim=-1) - probabilities > top_p  # the first token always stays
    return logits.masked_fill(outside.scatter(0, order, outside), float("-inf"))


class TokenChooser:
    """The next token of every row of a step, given each row's parameters and generator."""

    def __init__(self, suppressed_ids: Sequence[int]) -> None:
        self.suppressed_ids = sorted(set(suppressed_ids))

    def choose(
        self,
        logits: torch.Tensor,
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator | None],
    ) -> list[int]:
        """`logits` `(rows, vocab)` of the last position -> one token id per row."""
        logits = logits.to(torch.float32, copy=True)  # the caller's logits stay as they were
        if self.suppressed_ids:
            logits[:, self.suppressed_ids] = float("-inf")
        chosen = logits.argmax(dim=-1).tolist()
        for row, (row_params, generator) in enumerate(zip(params, generators)):
            if not row_params.greedy:
                filtered = top_p_filter(logits[row] / row_params.temperature, row_params.top_p)
                chosen[row] = int(torch.multinomial(filtered.softmax(dim=-1), 1, generator=generator))
        return chosen
