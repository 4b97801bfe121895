"""In-memory Textual Inversion embeddings (no files are read).

Own re-implementation; mirrors backend/text_processing/textual_inversion.py: Embedding,
EmbeddingDatabase.register_embedding(_by_name) / find_embedding_at_position (Forge dfdcbab6).
Register test embeddings with ``engine.embeddings.register_embedding(Embedding(vec, "name"))``.
"""

from __future__ import annotations

from typing import Any

import torch


# mirrors backend/text_processing/textual_inversion.py: Embedding (Forge dfdcbab6)
class Embedding:
    def __init__(self, vec: Any, name: str, step: int | None = None) -> None:
        self.vec = vec
        self.name = name
        self.step = step
        first = vec if isinstance(vec, torch.Tensor) else next(iter(vec.values()))
        self.shape = first.shape[-1]
        self.vectors = first.shape[0]
        self.sd_checkpoint = None
        self.sd_checkpoint_name = None


# mirrors backend/text_processing/textual_inversion.py: EmbeddingDatabase (Forge dfdcbab6)
class EmbeddingDatabase:
    def __init__(self, tokenizer: Any, expected_shape: int = -1) -> None:
        self.ids_lookup: dict[int, list] = {}
        self.word_embeddings: dict[str, Embedding] = {}
        self.skipped_embeddings: dict[str, Embedding] = {}
        self.expected_shape = expected_shape
        self.tokenizer = tokenizer
        self.fixes: Any = []

    def register_embedding(self, embedding: Embedding) -> Embedding | None:
        return self.register_embedding_by_name(embedding, embedding.name)

    def register_embedding_by_name(self, embedding: Embedding | None, name: str) -> Embedding | None:
        ids = self.tokenizer([name], truncation=False, add_special_tokens=False)["input_ids"][0]
        first = ids[0]
        entries = [e for e in self.ids_lookup.get(first, []) if e[1].name != name]
        if embedding is not None:
            if self.expected_shape not in (-1, embedding.shape):
                self.skipped_embeddings[name] = embedding
                return None
            entries.append((ids, embedding))
            self.word_embeddings[name] = embedding
        else:
            self.word_embeddings.pop(name, None)
        if entries:
            self.ids_lookup[first] = sorted(entries, key=lambda e: len(e[0]), reverse=True)
        else:
            self.ids_lookup.pop(first, None)
        return embedding

    def find_embedding_at_position(self, tokens: list[int], offset: int) -> tuple[Embedding | None, int | None]:
        for ids, embedding in self.ids_lookup.get(tokens[offset], []):
            if tokens[offset : offset + len(ids)] == ids:
                return embedding, len(ids)
        return None, None
