"""CLIP prompt engine: 75-token chunks wrapped in BOS/EOS (77 ids), emphasis, TI, comma backtrack.

Own re-implementation; mirrors backend/text_processing/classic_engine.py:
ClassicTextProcessingEngine, PromptChunk, PromptChunkFix, last_extra_generation_params
(Forge dfdcbab6). The tokenizer and encoder are the tiny fakes of tests/fake_forge/tiny_text.py.
"""

from __future__ import annotations

import math
from collections import namedtuple
from typing import Any

import torch
from backend import memory_management
from backend.text_processing import emphasis, parsing
from backend.text_processing.textual_inversion import EmbeddingDatabase
from modules.shared import opts

PromptChunkFix = namedtuple("PromptChunkFix", ["offset", "embedding"])
last_extra_generation_params: dict = {}


# mirrors backend/text_processing/classic_engine.py: PromptChunk (Forge dfdcbab6)
class PromptChunk:
    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.multipliers: list[float] = []
        self.fixes: list[PromptChunkFix] = []


# mirrors backend/text_processing/classic_engine.py: ClassicTextProcessingEngine (Forge dfdcbab6)
class ClassicTextProcessingEngine:
    def __init__(
        self,
        text_encoder: Any,
        tokenizer: Any,
        chunk_length: int = 75,
        embedding_dir: str | None = None,
        embedding_key: str = "clip_l",
        embedding_expected_shape: int = 768,
        emphasis_name: str = "Original",
        text_projection: bool = False,
        minimal_clip_skip: int = 1,
        clip_skip: int = 1,
        return_pooled: bool = False,
        final_layer_norm: bool = True,
    ) -> None:
        self.embeddings = EmbeddingDatabase(tokenizer, embedding_expected_shape)
        self.embedding_key = embedding_key
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.emphasis = emphasis.get_current_option(opts.emphasis)()
        self.text_projection = text_projection
        self.minimal_clip_skip = minimal_clip_skip
        self.clip_skip = clip_skip
        self.return_pooled = return_pooled
        self.final_layer_norm = final_layer_norm
        self.chunk_length = chunk_length
        self.id_start = tokenizer.bos_token_id
        self.id_end = tokenizer.eos_token_id
        self.id_pad = tokenizer.pad_token_id
        self.comma_token = tokenizer.get_vocab().get(",</w>", None)

    def empty_chunk(self) -> PromptChunk:
        chunk = PromptChunk()
        chunk.tokens = [self.id_start] + [self.id_end] * (self.chunk_length + 1)
        chunk.multipliers = [1.0] * (self.chunk_length + 2)
        return chunk

    def get_target_prompt_token_count(self, token_count: int) -> int:
        return math.ceil(max(token_count, 1) / self.chunk_length) * self.chunk_length

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

    def encode_with_transformers(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(memory_management.text_encoder_device())
        embeds = self.text_encoder.token_embedding(tokens)
        fixes, self.embeddings.fixes = self.embeddings.fixes, None
        if fixes:  # TI vectors replace the placeholder ids (offset + 1 skips BOS)
            rows = []
            for row_fixes, row in zip(fixes, embeds, strict=True):
                for offset, embedding in row_fixes:
                    vec = embedding.vec[self.embedding_key] if isinstance(embedding.vec, dict) else embedding.vec
                    n = min(row.shape[0] - offset - 1, vec.shape[0])
                    row = torch.cat([row[: offset + 1], vec[:n].to(row), row[offset + 1 + n :]])
                rows.append(row)
            embeds = torch.stack(rows)
        hidden_states = self.text_encoder(tokens, inputs_embeds=embeds)
        z = hidden_states[-max(self.clip_skip, self.minimal_clip_skip)]
        if self.final_layer_norm:
            z = self.text_encoder.final_layer_norm(z)
        if self.return_pooled:
            last = self.text_encoder.final_layer_norm(hidden_states[-1])
            z.pooled = last[torch.arange(last.shape[0]), tokens.argmax(dim=-1)]
        return z

    def tokenize_line(self, line: str) -> tuple[list[PromptChunk], int]:
        parsed = parsing.parse_prompt_attention(line, self.emphasis.name)
        tokenized = self.tokenize([text for text, _ in parsed])

        chunks: list[PromptChunk] = []
        chunk = PromptChunk()
        token_count = 0
        last_comma = -1

        def next_chunk(is_last: bool = False) -> None:
            nonlocal token_count, last_comma, chunk
            token_count += len(chunk.tokens) if is_last else self.chunk_length
            missing = self.chunk_length - len(chunk.tokens)
            if missing > 0:
                chunk.tokens += [self.id_end] * missing
                chunk.multipliers += [1.0] * missing
            chunk.tokens = [self.id_start] + chunk.tokens + [self.id_end]
            chunk.multipliers = [1.0] + chunk.multipliers + [1.0]
            last_comma = -1
            chunks.append(chunk)
            chunk = PromptChunk()

        for tokens, (text, weight) in zip(tokenized, parsed, strict=True):
            if text == "BREAK" and weight == -1:
                next_chunk()
                continue
            position = 0
            while position < len(tokens):
                token = tokens[position]
                if token == self.comma_token:
                    last_comma = len(chunk.tokens)
                elif (
                    len(chunk.tokens) == self.chunk_length and last_comma != -1 and len(chunk.tokens) - last_comma <= 20
                ):
                    # a full chunk with a comma at most 20 tokens back: move the tail to the next chunk
                    cut = last_comma + 1
                    tail_tokens, tail_mults = chunk.tokens[cut:], chunk.multipliers[cut:]
                    chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                    next_chunk()
                    chunk.tokens, chunk.multipliers = tail_tokens, tail_mults
                if len(chunk.tokens) == self.chunk_length:
                    next_chunk()

                embedding, length_in_tokens = self.embeddings.find_embedding_at_position(tokens, position)
                if embedding is None:
                    chunk.tokens.append(token)
                    chunk.multipliers.append(weight)
                    position += 1
                    continue
                vectors = int(embedding.vectors)
                if len(chunk.tokens) + vectors > self.chunk_length:
                    next_chunk()
                chunk.fixes.append(PromptChunkFix(len(chunk.tokens), embedding))
                chunk.tokens += [0] * vectors
                chunk.multipliers += [weight] * vectors
                position += length_in_tokens

        if chunk.tokens or not chunks:
            next_chunk(is_last=True)
        return chunks, token_count

    def process_texts(self, texts: list[str]) -> tuple[list[list[PromptChunk]], int]:
        token_count = 0
        cache: dict[str, list[PromptChunk]] = {}
        batch_chunks = []
        for line in texts:
            if line not in cache:
                chunks, count = self.tokenize_line(line)
                token_count = max(count, token_count)
                cache[line] = chunks
            batch_chunks.append(cache[line])
        return batch_chunks, token_count

    def __call__(self, texts: list[str]) -> Any:
        self.emphasis = emphasis.get_current_option(opts.emphasis)()
        batch_chunks, _ = self.process_texts(texts)
        used_embeddings: dict[str, Any] = {}
        zs = []
        for i in range(max(len(chunks) for chunks in batch_chunks)):
            batch_chunk = [chunks[i] if i < len(chunks) else self.empty_chunk() for chunks in batch_chunks]
            self.embeddings.fixes = [c.fixes for c in batch_chunk]
            for fixes in self.embeddings.fixes:
                for _, embedding in fixes:
                    used_embeddings[embedding.name] = embedding
            zs.append(self.process_tokens([c.tokens for c in batch_chunk], [c.multipliers for c in batch_chunk]))

        if used_embeddings:
            names = ", ".join(name.replace(":", "").replace(",", "") for name in used_embeddings)
            previous = last_extra_generation_params.get("TI")
            last_extra_generation_params["TI"] = f"{previous}, {names}" if previous else names
        if any("(" in t or "[" in t for t in texts) and self.emphasis.name != "Original":
            last_extra_generation_params["Emphasis"] = self.emphasis.name

        if self.return_pooled:
            return torch.hstack(zs), zs[0].pooled
        return torch.hstack(zs)

    def process_tokens(
        self, remade_batch_tokens: list[list[int]], batch_multipliers: list[list[float]]
    ) -> torch.Tensor:
        tokens = torch.asarray(remade_batch_tokens)
        if self.id_end != self.id_pad:
            for row, ids in enumerate(remade_batch_tokens):
                tokens[row, ids.index(self.id_end) + 1 :] = self.id_pad
        z = self.encode_with_transformers(tokens)
        pooled = getattr(z, "pooled", None)
        self.emphasis.tokens = remade_batch_tokens
        self.emphasis.multipliers = torch.asarray(batch_multipliers).to(z)
        self.emphasis.z = z
        self.emphasis.after_transformers()
        z = self.emphasis.z
        if pooled is not None:
            z.pooled = pooled
        return z
