"""Prompt emphasis parsing: ``(text)``, ``(text:1.3)``, ``[text]``, ``\\(`` escapes and ``BREAK``.

Own re-implementation (a small scanner); mirrors backend/text_processing/parsing.py:
parse_prompt_attention (Forge dfdcbab6).
"""

from __future__ import annotations

import re

_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_WEIGHT_CLOSE = re.compile(r":\s*([+-]?[.\d]+)\s*\)")
_PLAIN = re.compile(r"[^\\()\[\]:]+")


def _tokens(text: str) -> list[tuple[str, str | None]]:
    """Lexemes: escapes, brackets, ``:weight)`` closers, plain runs and lone colons."""
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            nxt = text[i + 1] if i + 1 < len(text) else ""
            if nxt in "()[]\\":
                out.append((ch + nxt, None))
                i += 2
            else:
                out.append((ch, None))
                i += 1
            continue
        if ch == ":":
            m = _WEIGHT_CLOSE.match(text, i)
            if m:
                out.append((m.group(0), m.group(1)))
                i = m.end()
                continue
        if ch in "()[]:":
            out.append((ch, None))
            i += 1
            continue
        m = _PLAIN.match(text, i)
        out.append((m.group(0), None))
        i = m.end()
    return out


# mirrors backend/text_processing/parsing.py: parse_prompt_attention (Forge dfdcbab6)
def parse_prompt_attention(text: str, emphasis: str) -> list[list]:
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for item in res[start:]:
            item[1] *= factor

    if emphasis == "None":
        res = [[text, 1.0]]
    else:
        for lexeme, weight in _tokens(text):
            if lexeme.startswith("\\"):
                res.append([lexeme[1:], 1.0])
            elif lexeme == "(":
                round_open.append(len(res))
            elif lexeme == "[":
                square_open.append(len(res))
            elif weight is not None and round_open:
                scale_from(round_open.pop(), float(weight))
            elif lexeme == ")" and round_open:
                scale_from(round_open.pop(), 1.1)
            elif lexeme == "]" and square_open:
                scale_from(square_open.pop(), 1 / 1.1)
            else:
                for i, part in enumerate(_BREAK.split(lexeme)):
                    if i > 0:
                        res.append(["BREAK", -1])
                    res.append([part, 1.0])
        for start in round_open:
            scale_from(start, 1.1)
        for start in square_open:
            scale_from(start, 1 / 1.1)

    if not res:
        res = [["", 1.0]]
    merged: list[list] = [res[0]]
    for item in res[1:]:
        if item[1] == merged[-1][1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return merged
