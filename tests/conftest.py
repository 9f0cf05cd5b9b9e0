"""Shared fixtures: generic, offline, cheap."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llavakit.tiny import build_tiny_tokenizer

# The shipped YAML recipes and model specs.
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The tiny in-process BPE tokenizer (`<image>` and template tokens are single ids). Do not mutate it."""
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and do not fight other processes for the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
