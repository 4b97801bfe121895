"""Per-image planning of AND parts and the weighted composition of a stream."""

import torch

from lib_degu.guidance import cfg, compose
from lib_degu.plan import check_settings, plan_image
from lib_degu.settings import DeGuSettings

SETTINGS = DeGuSettings(enabled=True, subject="sks", generic="a")


def test_parts_without_subject_are_shared():
    plan = plan_image([("sks dog", 1.0), ("on a beach", 0.7)], SETTINGS)
    assert plan.active and plan.first_subject_part == 0
    assert plan.parts[0].generic == "a dog" and plan.parts[1].generic is None
    assert not plan_image([("a cat", 1.0)], SETTINGS).active


def test_settings_that_cannot_work_are_reported():
    assert "no subject" in check_settings(DeGuSettings(enabled=True))
    assert "equals the subject" in check_settings(DeGuSettings(enabled=True, subject="dog", generic="Dog"))
    assert check_settings(SETTINGS) is None


def test_compose_matches_host_and_composition():
    gen = torch.Generator().manual_seed(0)
    u, a, b = (torch.randn(4, 8, 8, generator=gen) for _ in range(3))
    assert compose(u, [a], [1.0]) is a
    both = compose(u, [a, b], [1.0, 0.5])
    assert torch.allclose(both, u + (a - u) + 0.5 * (b - u))
    # CFG on the composed stream equals the host's AND combination with scale w.
    w = 7.0
    host = u + (a - u) * w + (b - u) * (0.5 * w)
    assert torch.allclose(cfg(u, both, w), host, atol=1e-5)
