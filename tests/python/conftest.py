"""Fixtures shared by the pytest files of tests/python."""

import pytest
import torch


@pytest.fixture
def gen(request):
    """A CPU generator seeded from the test's name and the process's hash seed: fresh random
    inputs on every run, the same inputs for every use within one test."""
    return torch.Generator().manual_seed(abs(hash(request.node.name)) % (2**31))
