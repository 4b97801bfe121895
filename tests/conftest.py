"""Test-wide settings."""

import pytest
import torch

# Tiny models on a 2-core machine: one thread avoids oversubscription stalls (seen: 50x slower
# when another process competes for the cores) and keeps float results reproducible.
torch.set_num_threads(1)

SOAK_LONG_GENERATIONS = 1000  # every soak (A1111 and Forge) with --soak-long


def pytest_addoption(parser):
    parser.addoption(
        "--soak-long", action="store_true", help=f"run every soak for {SOAK_LONG_GENERATIONS} generations"
    )


@pytest.fixture
def soak_generations(request):
    """``soak_generations(default)``: the number of generations a soak runs (``--soak-long`` for all)."""
    long = request.config.getoption("--soak-long")
    return lambda default: SOAK_LONG_GENERATIONS if long else default
