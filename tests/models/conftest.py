"""Fixtures for the model tests; the helpers live in model_helpers.py."""

from __future__ import annotations

import pytest
import torch
from model_helpers import make_stats


@pytest.fixture
def stats():
    return make_stats()


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: on a shared 2-core machine intra-op threads cost far more than they give."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
