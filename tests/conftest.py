"""Test-wide settings."""

import torch

# Tiny models on a 2-core machine: one thread avoids oversubscription stalls (seen: 50x slower
# when another process competes for the cores) and keeps float results reproducible.
torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--soak-long", action="store_true", help="run the long soak (1000 generations)")
