"""Pytest fixtures over the shared helpers of `tests/fixtures.py` (tiny models of the reference families)."""

from __future__ import annotations

import pytest
import torch

from .fixtures import FAMILIES, build, random_tokens, save_checkpoint

# Tiny models gain nothing from intra-op threads, and threads oversubscribe a busy 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def pair(family):
    return build(family)


@pytest.fixture
def tokens() -> torch.Tensor:
    return random_tokens(2, 24)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny saved checkpoint for study-runner tests."""
    return save_checkpoint(tmp_path_factory.mktemp("tiny-falcon"))
