"""Fake of modules/sd_hijack_clip.py (1.10.1): 77-token prompt chunks, BREAK, comma backtracking,
textual-inversion fixes and emphasis. The tokenizer and the network are supplied by a subclass
(the harness's FakeClipEmbedder)."""

from __future__ import annotations

import math
from collections import namedtuple

import torch
from modules import prompt_parser, sd_hijack
from modules.shared import opts


class PromptChunk:
    """mirrors modules/sd_hijack_clip.py: PromptChunk (1.10.1) - tokens, multipliers, fixes (77 once closed)."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.multipliers: list[float] = []
        self.fixes: list[PromptChunkFix] = []


PromptChunkFix = namedtuple("PromptChunkFix", ["offset", "embedding"])
"""Offset is counted before BOS is prepended: the vectors land at chunk positions offset+1 ...
offset+vectors."""


class TextConditionalModel(torch.nn.Module):
    """mirrors modules/sd_hijack_clip.py: TextConditionalModel (1.10.1)."""

    def __init__(self) -> None:
        super().__init__()
        self.hijack = sd_hijack.model_hijack
        self.chunk_length = 75
        self.is_trainable = False
        self.input_key = "txt"
        self.return_pooled = False
        self.comma_token = None
        self.id_start = None
        self.id_end = None
        self.id_pad = None

    def empty_chunk(self) -> PromptChunk:
        """mirrors TextConditionalModel.empty_chunk (1.10.1): BOS then EOS up to 77."""
        chunk = PromptChunk()
        chunk.tokens = [self.id_start] + [self.id_end] * (self.chunk_length + 1)
        chunk.multipliers = [1.0] * (self.chunk_length + 2)
        return chunk

    def get_target_prompt_token_count(self, token_count: int) -> int:
        return math.ceil(max(token_count, 1) / self.chunk_length) * self.chunk_length

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def encode_with_transformers(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def tokenize_line(self, line: str):
        """mirrors TextConditionalModel.tokenize_line (1.10.1): ``(chunks, token_count)``."""
        parsed = prompt_parser.parse_prompt_attention(line) if opts.emphasis != "None" else [[line, 1.0]]
        tokenized = self.tokenize([text for text, _ in parsed])

        chunks: list[PromptChunk] = []
        chunk = PromptChunk()
        token_count = 0
        last_comma = -1

        def close_chunk(is_last: bool = False) -> None:
            nonlocal chunk, token_count, last_comma
            token_count += len(chunk.tokens) if is_last else self.chunk_length
            missing = self.chunk_length - len(chunk.tokens)
            if missing > 0:
                chunk.tokens += [self.id_end] * missing
                chunk.multipliers += [1.0] * missing
            chunk.tokens = [self.id_start, *chunk.tokens, self.id_end]
            chunk.multipliers = [1.0, *chunk.multipliers, 1.0]
            chunks.append(chunk)
            chunk = PromptChunk()
            last_comma = -1

        for tokens, (text, weight) in zip(tokenized, parsed, strict=False):
            if text == "BREAK" and weight == -1:
                close_chunk()
                continue

            position = 0
            while position < len(tokens):
                token = tokens[position]
                full = len(chunk.tokens) == self.chunk_length
                if token == self.comma_token:
                    last_comma = len(chunk.tokens)
                elif (
                    opts.comma_padding_backtrack != 0
                    and full
                    and last_comma != -1
                    and len(chunk.tokens) - last_comma <= opts.comma_padding_backtrack
                ):
                    # move the words after the last comma into the next chunk
                    cut = last_comma + 1
                    moved_tokens, moved_mults = chunk.tokens[cut:], chunk.multipliers[cut:]
                    chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                    close_chunk()
                    chunk.tokens, chunk.multipliers = moved_tokens, moved_mults

                if len(chunk.tokens) == self.chunk_length:
                    close_chunk()

                embedding, name_length = self.hijack.embedding_db.find_embedding_at_position(tokens, position)
                if embedding is None:
                    chunk.tokens.append(token)
                    chunk.multipliers.append(weight)
                    position += 1
                    continue

                vectors = int(embedding.vectors)
                if len(chunk.tokens) + vectors > self.chunk_length:
                    close_chunk()
                chunk.fixes.append(PromptChunkFix(len(chunk.tokens), embedding))
                chunk.tokens += [0] * vectors
                chunk.multipliers += [weight] * vectors
                position += name_length

        if chunk.tokens or not chunks:
            close_chunk(is_last=True)

        return chunks, token_count

    def process_texts(self, texts):
        """mirrors TextConditionalModel.process_texts (1.10.1): ``(batch_chunks, max_token_count)``."""
        seen: dict[str, list] = {}
        batch_chunks = []
        token_count = 0
        for line in texts:
            if line not in seen:
                seen[line], count = self.tokenize_line(line)
                token_count = max(token_count, count)
            batch_chunks.append(seen[line])
        return batch_chunks, token_count

    def forward(self, texts):
        """mirrors TextConditionalModel.forward (1.10.1): (B, 77*k, C), short prompts padded with
        empty chunks up to the longest prompt's k."""
        batch_chunks, _ = self.process_texts(texts)
        zs = []
        for i in range(max(len(chunks) for chunks in batch_chunks)):
            column = [chunks[i] if i < len(chunks) else self.empty_chunk() for chunks in batch_chunks]
            self.hijack.fixes = [c.fixes for c in column]
            zs.append(self.process_tokens([c.tokens for c in column], [c.multipliers for c in column]))
        return torch.hstack(zs)

    def process_tokens(self, remade_batch_tokens, batch_multipliers):
        """mirrors TextConditionalModel.process_tokens (1.10.1) with sd_emphasis applied inline."""
        tokens = torch.asarray(remade_batch_tokens)
        if self.id_end != self.id_pad:
            for row, row_tokens in enumerate(remade_batch_tokens):
                tokens[row, row_tokens.index(self.id_end) + 1 :] = self.id_pad
        z = self.encode_with_transformers(tokens)

        multipliers = torch.asarray(batch_multipliers, dtype=z.dtype)[..., None]
        if opts.emphasis == "No norm":  # mirrors modules/sd_emphasis.py: EmphasisOriginalNoNorm
            z = z * multipliers
        elif opts.emphasis not in ("None", "Ignore"):  # mirrors sd_emphasis.py: EmphasisOriginal (the fallback)
            mean = z.mean()
            z = z * multipliers
            z = z * (mean / z.mean())
        return z
