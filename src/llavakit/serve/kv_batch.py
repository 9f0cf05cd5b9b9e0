"""The running batch's key/value cache: one row per request, left-padded to a shared length.

Continuous batching needs requests of different lengths to share each decoding step. Requests
are prefilled (alone, or several left-padded together: `stack_prompts`), and their caches then
join the batch: rows are left-padded with zeros to the longest, and an attention mask marks the
padding, so a padded key adds exactly nothing to attention. Positions come
from each row's own count of real tokens, so rotary embeddings see the same positions as an
unpadded run. A finished row leaves, and leading columns that only padding fills any more
are cut away, so a long-gone long prompt does not keep the batch wide.

Layers are plain full-attention `DynamicLayer`s (keys and values `(batch, heads, length,
dim)`); models with sliding-window or linear-attention layers are not batched this way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache


def _kv_tensors(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's (keys, values), `(batch, heads, length, dim)`."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """`tensor` `(batch, heads, length, dim)` with `width` zero positions before its first."""
    return F.pad(tensor, (0, 0, width, 0)) if width else tensor


class PaddedKVBatch:
    """Stacked caches of the running requests, their padding mask, and each row's real length."""

    def __init__(self) -> None:
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (batch, length), 1 on real tokens

    def __len__(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    @property
    def width(self) -> int:
        """Columns every row holds, padding included."""
        return 0 if self.mask is None else self.mask.shape[1]

    def real_lengths(self) -> torch.Tensor:
        """Per row, the tokens it really holds: the position its next token takes. `(batch, 1)`."""
        return self.mask.sum(dim=1, keepdim=True)

    def add(self, cache: DynamicCache, mask: torch.Tensor | None = None) -> None:
        """Append prefilled rows as the last rows: `cache` of one or more requests, `mask` their padding
        `(rows, length)` (None: one row without padding)."""
        length = cache.get_seq_length()
        device = cache.layers[0].keys.device
        if mask is None:
            mask = torch.ones(1, length, dtype=torch.long, device=device)
        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        width = max(self.width, length)
        layers = [
            (
                torch.cat((_left_pad(keys, width - self.width), _left_pad(new_keys, width - length))),
                torch.cat((_left_pad(values, width - self.width), _left_pad(new_values, width - length))),
            )
            for (keys, values), (new_keys, new_values) in zip(_kv_tensors(self.cache), _kv_tensors(cache))
        ]
        self.cache = DynamicCache(layers)
        self.mask = torch.cat((F.pad(self.mask, (width - self.width, 0)), F.pad(mask, (width - length, 0))))

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoding step's attention mask (room for the new token) and the new tokens' positions."""
        positions = self.real_lengths()
        mask = F.pad(self.mask, (0, 1), value=1)
        return mask, positions

    def stepped(self, mask: torch.Tensor) -> None:
        """Record that a decoding step with `mask` (from `step_inputs`) appended one token to every row."""
        self.mask = mask

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only `rows` (in that order); then drop leading columns that are padding in every row."""
        if not rows:
            self.cache, self.mask = None, None
            return
        index = torch.tensor(list(rows), dtype=torch.long, device=self.mask.device)
        self.mask = self.mask.index_select(0, index)
        unused = int(self.mask.cumsum(dim=1).eq(0).all(dim=0).sum())  # columns padded in every row
        self.cache = DynamicCache(
            [
                (keys.index_select(0, index)[:, :, unused:], values.index_select(0, index)[:, :, unused:])
                for keys, values in _kv_tensors(self.cache)
            ]
        )
        self.mask = self.mask[:, unused:]


# Processor outputs stacked along their first dimension when prompts are prefilled together.
_STACKED_KEYS = ("pixel_values", "image_sizes", "image_num_crops", "pixel_values_videos", "video_num_frames")


def stack_prompts(prompts: Sequence[Mapping[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Processed prompts (one row each) as one left-padded prefill batch, with `position_ids`.

    Left padding puts every row's last token in the last column, so one `logits_to_keep=1` gives
    each row its next-token logits, and the cache comes out already laid out as `PaddedKVBatch`
    keeps it. Images and videos are stacked in row order, which is their placeholders' order.
    """
    unknown = {key for prompt in prompts for key in prompt} - {"input_ids", "attention_mask", *_STACKED_KEYS}
    if unknown:
        raise ValueError(f"cannot stack prompts with {sorted(unknown)}: unknown processor outputs")
    width = max(prompt["input_ids"].shape[1] for prompt in prompts)
    ids = torch.cat([F.pad(p["input_ids"], (width - p["input_ids"].shape[1], 0), value=pad_id) for p in prompts])
    mask = torch.cat([F.pad(p["attention_mask"], (width - p["attention_mask"].shape[1], 0)) for p in prompts])
    stacked = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(dim=1) - 1).clamp(min=0)}
    for key in _STACKED_KEYS:
        parts = [prompt[key] for prompt in prompts if key in prompt]
        if parts:
            stacked[key] = torch.cat(parts)
    return stacked
