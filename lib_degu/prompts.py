"""Subject detection and the generic (context) prompt, by text replacement on the raw prompt.

Replacing text before the host parses the prompt keeps every host feature working in both streams:
prompt editing ``[a:b:0.5]``, alternation ``[a|b]``, emphasis ``(sks:1.2)``, ``AND``, ``BREAK``.
Extra-network tags such as ``<lora:sks_dog:0.8>`` are never touched: they select weights, and both
streams must run the same weights.
"""

from __future__ import annotations

import re

# <lora:name:0.8>, <lyco:...>, <hypernet:...>: a name, a colon, then anything up to '>'.
EXTRA_NETWORK_TAG = re.compile(r"<[^<>:\s]+:[^<>]*>")

_OPENERS = "([{|:"
_CLOSERS = ")]}|:,"


def _subject_pattern(subject: str, case_sensitive: bool) -> re.Pattern[str] | None:
    words = subject.split()
    if not words:
        return None
    body = r"\s+".join(re.escape(word) for word in words)
    # Word boundaries by lookaround rather than \b, so names that start or end with
    # punctuation (<my-dog>) still match as a whole and 'sks' never matches inside 'asks'.
    flags = 0 if case_sensitive else re.IGNORECASE
    return re.compile(rf"(?<!\w){body}(?!\w)", flags)


def _tag_spans(prompt: str) -> list[tuple[int, int]]:
    return [m.span() for m in EXTRA_NETWORK_TAG.finditer(prompt)]


def find_subject(prompt: str, subject: str, *, case_sensitive: bool = False) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of every occurrence of ``subject`` outside extra-network tags.

    ``subject`` is one or several words (matched with any whitespace between them), a rare token or
    an embedding name. CLIP's tokenizer lower-cases text, so the default is case-insensitive.
    """
    pattern = _subject_pattern(subject, case_sensitive)
    if pattern is None:
        return []
    tags = _tag_spans(prompt)
    return [
        m.span()
        for m in pattern.finditer(prompt)
        if not any(start < m.end() and m.start() < end for start, end in tags)
    ]


def _replace_spans(prompt: str, spans: list[tuple[int, int]], text: str) -> str:
    pieces: list[str] = []
    cursor = 0
    for start, end in spans:
        pieces += [prompt[cursor:start], text]
        cursor = end
    pieces.append(prompt[cursor:])
    return "".join(pieces)



def _empty_group(sentinel: str) -> re.Pattern[str]:
    """A group left holding nothing but the removed subject: (sks), (sks:1.2), [sks], ((sks))."""
    x = re.escape(sentinel)
    return re.compile(rf"\(\s*{x}\s*(?::\s*-?[\d.]*\s*)?\)|\[\s*{x}\s*\]|\{{\s*{x}\s*\}}")


def _free_sentinel(text: str) -> str:
    """A private-use character that the prompt does not contain."""
    return next(chr(c) for c in range(0xE000, 0xF900) if chr(c) not in text)
def _tidy_removal(text: str, sentinel: str) -> str:
    """Remove the sentinels left by an empty generic word, and only the clutter around them."""
    empty_group = _empty_group(sentinel)
    while True:
        collapsed = empty_group.sub(sentinel, text)
        if collapsed == text:
            break
        text = collapsed
    while sentinel in text:
        at = text.index(sentinel)
        start, end = at, at + 1
        while start > 0 and text[start - 1].isspace():
            start -= 1
        while end < len(text) and text[end].isspace():
            end += 1
        left = text[start - 1] if start > 0 else ""
        right = text[end] if end < len(text) else ""
        joiner = ""
        if not left and right == ",":
            end += 1  # "sks, dog" -> "dog"
            while end < len(text) and text[end].isspace():
                end += 1
        elif not right and left == ",":
            start -= 1  # "dog, sks" -> "dog"
        elif left == "," and right == ",":
            end += 1  # "x, sks, y" -> "x, y"
        elif left and right and left not in _OPENERS and right not in _CLOSERS:
            joiner = " " if (start < at or end > at + 1) else ""
        text = text[:start] + joiner + text[end:]
    return text


def make_generic_prompt(
    prompt: str, subject: str, generic: str, *, case_sensitive: bool = False
) -> str:
    """The context prompt: every occurrence of ``subject`` replaced by ``generic``.

    An empty ``generic`` removes the subject and tidies what the removal leaves behind (no doubled
    spaces, no empty ``()`` or ``(:1.2)`` group). Text outside the subject's spans is kept as is.
    """
    spans = find_subject(prompt, subject, case_sensitive=case_sensitive)
    if not spans:
        return prompt
    generic = generic.strip()
    if generic:
        return _replace_spans(prompt, spans, generic)
    sentinel = _free_sentinel(prompt)
    return _tidy_removal(_replace_spans(prompt, spans, sentinel), sentinel)
