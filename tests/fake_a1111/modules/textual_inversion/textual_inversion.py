"""Fake of modules/textual_inversion/textual_inversion.py (1.10.1): Embedding and the lookup database."""

from __future__ import annotations

from typing import Any


class Embedding:
    """mirrors modules/textual_inversion/textual_inversion.py: Embedding (1.10.1), data fields only."""

    def __init__(self, vec: Any, name: str, step: int | None = None) -> None:
        self.vec = vec
        self.name = name
        self.step = step
        self.shape = None
        self.vectors = 0
        self.filename = None
        self.hash = None
        self.shorthash = None


class EmbeddingDatabase:
    """mirrors modules/textual_inversion/textual_inversion.py: EmbeddingDatabase (1.10.1): names are
    matched by their token ids (``ids_lookup``: first id -> [(ids, embedding)], longest first)."""

    def __init__(self) -> None:
        self.ids_lookup: dict[int, list] = {}
        self.word_embeddings: dict[str, Embedding] = {}
        self.skipped_embeddings: dict[str, Embedding] = {}

    def register_embedding(self, embedding: Embedding, model: Any) -> Embedding:
        return self.register_embedding_by_name(embedding, model, embedding.name)

    def register_embedding_by_name(self, embedding: Embedding | None, model: Any, name: str) -> Embedding | None:
        """mirrors EmbeddingDatabase.register_embedding_by_name (1.10.1); ``None`` unregisters."""
        ids = model.cond_stage_model.tokenize([name])[0]
        others = [entry for entry in self.ids_lookup.get(ids[0], []) if entry[1].name != name]
        if embedding is not None:
            others.append((ids, embedding))
        if others:
            self.ids_lookup[ids[0]] = sorted(others, key=lambda entry: len(entry[0]), reverse=True)
        else:
            self.ids_lookup.pop(ids[0], None)
        if embedding is None:
            self.word_embeddings.pop(name, None)
            return None
        self.word_embeddings[name] = embedding
        return embedding

    def find_embedding_at_position(self, tokens: list[int], offset: int) -> tuple[Embedding | None, int | None]:
        """mirrors EmbeddingDatabase.find_embedding_at_position (1.10.1)."""
        for ids, embedding in self.ids_lookup.get(tokens[offset], []):
            if tokens[offset : offset + len(ids)] == ids:
                return embedding, len(ids)
        return None, None
