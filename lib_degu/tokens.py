"""Subject token positions from the host's own tokenisation of the two prompts.

The most robust rule across tokenizers, chunking, ``BREAK`` and emphasis: tokenise the prompt as
written and the generic prompt with the same host function, and take the positions of the prompt's
tokens that the generic prompt does not share (a sequence diff, so a subject of several tokens
replaced by a generic word of another length still lines up).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence


def differing_positions(subject_tokens: Sequence[int], generic_tokens: Sequence[int]) -> list[int]:
    """Indices into ``subject_tokens`` that are not part of the longest common alignment."""
    matcher = difflib.SequenceMatcher(a=list(subject_tokens), b=list(generic_tokens), autojunk=False)
    shared = set()
    for block in matcher.get_matching_blocks():
        shared.update(range(block.a, block.a + block.size))
    return [i for i in range(len(subject_tokens)) if i not in shared]


def flatten_chunks(chunks: Sequence[Sequence[int]], chunk_length: int | None = 77) -> list[int]:
    """Concatenate chunks; position ``chunk * chunk_length + j`` is the model's key index.

    ``chunk_length=None`` accepts chunks of any length (T5 engines: one padded chunk, no BOS).
    """
    flat: list[int] = []
    for chunk in chunks:
        if chunk_length is not None and len(chunk) != chunk_length:
            raise ValueError(f"chunk of {len(chunk)} tokens, expected {chunk_length}")
        flat.extend(chunk)
    return flat
