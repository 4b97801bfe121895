"""Fake of modules/sd_hijack.py (1.10.1): ``model_hijack`` holds the embedding database and the
per-call textual-inversion fixes the text encoder applies (EmbeddingsWithFixes)."""

from __future__ import annotations

from modules.textual_inversion.textual_inversion import EmbeddingDatabase


class StableDiffusionModelHijack:
    """mirrors modules/sd_hijack.py: StableDiffusionModelHijack (1.10.1), data fields only."""

    def __init__(self) -> None:
        self.fixes = None
        self.layers = None
        self.circular_enabled = False
        self.clip = None
        self.optimization_method = None
        self.embedding_db = EmbeddingDatabase()
        self.comments: list[str] = []
        self.extra_generation_params: dict = {}

    def clear_comments(self) -> None:
        self.comments = []
        self.extra_generation_params = {}

    def apply_circular(self, enable: bool) -> None:
        self.circular_enabled = enable


model_hijack = StableDiffusionModelHijack()
