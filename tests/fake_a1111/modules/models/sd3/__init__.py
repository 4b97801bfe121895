"""Fake ``modules.models.sd3`` (AUTOMATIC1111 1.10.1): the MM-DiT (``mmdit``) and its ``attention``
(``other_impls``); the text encoders and the denoiser are in ``tests/fake_a1111/harness.py``."""
