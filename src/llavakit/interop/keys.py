"""State-dict key renaming, the one machinery behind every checkpoint conversion.

Layouts differ only in names, so a conversion is a list of renaming rules applied to every
key; a key no rule knows is an error, never dropped (a silently missing weight is a wrong
model that still runs). Where both directions exist (transformers Llava / LlavaNext /
OneVision) the rules are written once, as a `KeyTable` of (llavakit name, other name)
pairs, and both rule lists are derived from it, so import and export cannot drift apart.

    table = KeyTable((("vision_tower.encoder.{rest}", "model.vision_tower.{rest}"),))
    rename(state_dict, table.to_llavakit(), "transformers Llava")
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

StateDict = dict[str, torch.Tensor]

# What each `{placeholder}` of a KeyTable name matches.
_PLACEHOLDERS = {"rest": r".+", "param": r"weight|bias"}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class KeyRule:
    """One renaming: a key that `pattern` matches in full becomes `replace(match)`."""

    pattern: re.Pattern
    replace: Callable[[re.Match], str]


def regex_rule(pattern: str, replace: Callable[[re.Match], str]) -> KeyRule:
    """A one-way rule from a regular expression (for layouts that are only read, e.g. original LLaVA)."""
    return KeyRule(re.compile(pattern), replace)


def _name_pattern(name: str) -> re.Pattern:
    """`model.vision_tower.{rest}` -> `^model\\.vision_tower\\.(?P<rest>.+)$`."""
    parts, last = [], 0
    for match in _PLACEHOLDER.finditer(name):
        parts.append(re.escape(name[last : match.start()]))
        parts.append(f"(?P<{match[1]}>{_PLACEHOLDERS[match[1]]})")
        last = match.end()
    parts.append(re.escape(name[last:]))
    return re.compile("^" + "".join(parts) + "$")


def _template_rule(source: str, target: str) -> KeyRule:
    return KeyRule(_name_pattern(source), lambda match: target.format(**match.groupdict()))


@dataclass(frozen=True)
class KeyTable:
    """(llavakit name, other layout's name) pairs with `{rest}` / `{param}` placeholders; first match wins."""

    pairs: tuple[tuple[str, str], ...]

    def __post_init__(self):
        for ours, theirs in self.pairs:
            if set(_PLACEHOLDER.findall(ours)) != set(_PLACEHOLDER.findall(theirs)):
                raise ValueError(f"key pair {ours!r} <-> {theirs!r} must use the same placeholders")
            unknown = set(_PLACEHOLDER.findall(ours)) - set(_PLACEHOLDERS)
            if unknown:
                raise ValueError(f"key pair {ours!r}: unknown placeholder(s) {sorted(unknown)}")

    def extended(self, *pairs: tuple[str, str]) -> KeyTable:
        """This table plus `pairs` (a layout that adds weights to another, e.g. LlavaNext's image_newline)."""
        return KeyTable(self.pairs + pairs)

    def to_llavakit(self) -> list[KeyRule]:
        return [_template_rule(theirs, ours) for ours, theirs in self.pairs]

    def from_llavakit(self) -> list[KeyRule]:
        return [_template_rule(ours, theirs) for ours, theirs in self.pairs]


def rename(state_dict: StateDict, rules: list[KeyRule], source: str) -> StateDict:
    """Rename every key by the first matching rule (tensors shared); a key no rule knows raises ValueError."""
    renamed: StateDict = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        for rule in rules:
            match = rule.pattern.match(key)
            if match:
                renamed[rule.replace(match)] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(sorted(unknown)[:20]) + (" ..." if len(unknown) > 20 else "")
        raise ValueError(f"{len(unknown)} {source} state-dict key(s) have no mapping: {shown}")
    return renamed
