"""T5 prompt engine (Flux): no BOS, EOS appended, padded to ``min_length`` (256).

Own re-implementation; mirrors backend/text_processing/t5_engine.py: T5TextProcessingEngine
(Forge dfdcbab6), including its BREAK behaviour (every chunk becomes its own row).
"""

from __future__ import annotations

from typing import Any

import torch
from backend import memory_management
from backend.text_processing import emphasis, parsing
from modules.shared import opts


# mirrors backend/text_processing/t5_engine.py: PromptChunk (Forge dfdcbab6)
class PromptChunk:
    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.multipliers: list[float] = []


# mirrors backend/text_processing/t5_engine.py: T5TextProcessingEngine (Forge dfdcbab6)
class T5TextProcessingEngine:
    def __init__(
        self, text_encoder: Any, tokenizer: Any, emphasis_name: str = "Original", min_length: int = 256
    ) -> None:
        self.text_encoder = getattr(text_encoder, "transformer", text_encoder)
        self.tokenizer = tokenizer
        self.emphasis = emphasis.get_current_option(opts.emphasis)()
        self.min_length = min_length
        self.id_end = 1
        self.id_pad = 0

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

    def encode_with_transformers(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids=tokens.to(memory_management.text_encoder_device()))

    def tokenize_line(self, line: str) -> tuple[list[PromptChunk], int]:
        parsed = parsing.parse_prompt_attention(line, self.emphasis.name)
        tokenized = self.tokenize([text for text, _ in parsed])
        chunks: list[PromptChunk] = []
        chunk = PromptChunk()
        token_count = 0

        def next_chunk() -> None:
            nonlocal token_count, chunk
            chunk.tokens.append(self.id_end)
            chunk.multipliers.append(1.0)
            token_count += len(chunk.tokens)
            missing = self.min_length - len(chunk.tokens)
            if missing > 0:
                chunk.tokens += [self.id_pad] * missing
                chunk.multipliers += [1.0] * missing
            chunks.append(chunk)
            chunk = PromptChunk()

        for tokens, (text, weight) in zip(tokenized, parsed, strict=True):
            if text == "BREAK" and weight == -1:
                next_chunk()
                continue
            chunk.tokens += list(tokens)
            chunk.multipliers += [weight] * len(tokens)

        if chunk.tokens or not chunks:
            next_chunk()
        return chunks, token_count

    def __call__(self, texts: list[str]) -> torch.Tensor:
        self.emphasis = emphasis.get_current_option(opts.emphasis)()
        zs: list[torch.Tensor] = []
        cache: dict[str, list[torch.Tensor]] = {}
        for line in texts:
            if line not in cache:
                chunks, _ = self.tokenize_line(line)
                longest = max(len(c.tokens) for c in chunks)
                values = []
                for c in chunks:
                    missing = longest - len(c.tokens)
                    tokens = c.tokens + [self.id_pad] * missing
                    multipliers = c.multipliers + [1.0] * missing
                    values.append(self.process_tokens([tokens], [multipliers])[0])
                cache[line] = values
            zs.extend(cache[line])
        return torch.stack(zs)

    def process_tokens(self, batch_tokens: list[list[int]], batch_multipliers: list[list[float]]) -> torch.Tensor:
        z = self.encode_with_transformers(torch.asarray(batch_tokens))
        self.emphasis.tokens = batch_tokens
        self.emphasis.multipliers = torch.asarray(batch_multipliers).to(z)
        self.emphasis.z = z
        self.emphasis.after_transformers()
        return self.emphasis.z
