"""Shared fixtures: generic, offline, cheap."""

from __future__ import annotations

import pytest

from llavakit.tiny_tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The tiny in-process BPE tokenizer (`<image>` and template tokens are single ids). Do not mutate it."""
    return build_tiny_tokenizer()
