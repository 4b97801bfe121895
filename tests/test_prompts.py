"""Generic-prompt construction and subject spans, on the WebUI prompt syntax."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_degu.prompts import find_subject, make_generic_prompt

CASES = [
    # (prompt, subject, generic, expected)
    ("a photo of sks dog on a beach", "sks", "a", "a photo of a dog on a beach"),
    ("a photo of sks dog on a beach", "sks", "", "a photo of dog on a beach"),
    ("she asks sks dog", "sks", "a", "she asks a dog"),
    ("(sks:1.2) dog", "sks", "a", "(a:1.2) dog"),
    ("(sks:1.2) dog", "sks", "", "dog"),
    ("((sks)) dog", "sks", "", "dog"),
    ("[sks] dog", "sks", "", "dog"),
    ("(sks dog:1.2) on grass", "sks", "", "(dog:1.2) on grass"),
    ("[sks:cat:0.5] in snow", "sks", "a", "[a:cat:0.5] in snow"),
    ("[sks:cat:0.5] in snow", "sks", "", "[:cat:0.5] in snow"),
    ("[cat:sks:0.5]", "sks", "", "[cat::0.5]"),
    ("[sks|cat] toy", "sks", "a", "[a|cat] toy"),
    ("[sks|cat] toy", "sks", "", "[|cat] toy"),
    ("sks dog AND a beach AND sks toy", "sks", "a", "a dog AND a beach AND a toy"),
    ("sks dog BREAK sks on a beach", "sks", "a", "a dog BREAK a on a beach"),
    ("<lora:sks_dog:0.8> sks dog", "sks", "a", "<lora:sks_dog:0.8> a dog"),
    ("<lora:sks:0.8> sks dog", "sks", "", "<lora:sks:0.8> dog"),
    ("x, sks, y", "sks", "", "x, y"),
    ("sks, on a beach", "sks", "", "on a beach"),
    ("a dog, sks", "sks", "", "a dog"),
    ("SKS dog", "sks", "a", "a dog"),
    ("photo of ohwx man", "ohwx man", "a man", "photo of a man"),
    ("photo of ohwx   man", "ohwx man", "a man", "photo of a man"),
    ("a <my-dog> on a beach", "<my-dog>", "dog", "a dog on a beach"),
    ("an emb_v2 toy", "emb_v2", "a", "an a toy"),
    ("an emb_v2x toy", "emb_v2", "a", "an emb_v2x toy"),
    ("no subject here", "sks", "a", "no subject here"),
]


@pytest.mark.parametrize(("prompt", "subject", "generic", "expected"), CASES)
def test_make_generic_prompt(prompt, subject, generic, expected):
    assert make_generic_prompt(prompt, subject, generic) == expected


def test_case_sensitivity_is_a_parameter():
    assert make_generic_prompt("SKS dog", "sks", "a", case_sensitive=True) == "SKS dog"
    assert find_subject("SKS sks", "sks", case_sensitive=True) == [(4, 7)]
    assert find_subject("SKS sks", "sks") == [(0, 3), (4, 7)]


def test_find_subject_spans_skip_words_containing_it_and_network_tags():
    prompt = "asks sks <lora:sks_dog:1> sks_dog (sks:1.1)"
    assert find_subject(prompt, "sks") == [(5, 8), (35, 38)]
    assert find_subject(prompt, "") == []
    assert find_subject(prompt, "   ") == []


def test_embedding_name_with_punctuation_matches_whole():
    assert find_subject("a <my-dog>, <my-dog2>", "<my-dog>") == [(2, 10)]


words = st.sampled_from(
    ["sks", "SKS", "asks", "sks_dog", "dog", "a", "(", ")", "[", "]", ":", "|", ",", "AND", "BREAK",
     "<lora:sks:1>", "<lora:x:0.5>", ":1.2", "0.5", "\n", "é", "🐶", "<my-dog>", "{", "}"]
)
prompt_texts = st.one_of(
    st.text(max_size=60),
    st.lists(words, max_size=20).map(" ".join),
    st.lists(words, max_size=20).map("".join),
)


@settings(max_examples=1500, deadline=None)
@given(prompt_texts, st.sampled_from(["sks", "sks dog", "<my-dog>", "a", "é"]), st.sampled_from(["a", "dog", "x y"]))
def test_fuzz_replacement_changes_only_subject_spans(prompt, subject, generic):
    spans = find_subject(prompt, subject)
    out = make_generic_prompt(prompt, subject, generic)
    # Rebuild the expected text from the spans: everything outside them is untouched.
    expected, cursor = [], 0
    for start, end in spans:
        assert prompt[start:end].lower().split() == subject.lower().split()
        expected += [prompt[cursor:start], generic]
        cursor = end
    expected.append(prompt[cursor:])
    assert out == "".join(expected)


def _spaces(text: str) -> str:
    return "".join(" " if ch.isspace() else ch for ch in text)


def _is_subsequence(short: str, long: str) -> bool:
    rest = iter(long)
    return all(ch in rest for ch in short)


@settings(max_examples=1500, deadline=None)
@given(prompt_texts, st.sampled_from(["sks", "sks dog", "<my-dog>"]))
def test_fuzz_removal_deletes_the_subject_and_only_its_clutter(prompt, subject):
    out = make_generic_prompt(prompt, subject, "")
    assert isinstance(out, str)
    assert not any("\ue000" <= ch <= "\uf8ff" for ch in out) or any("\ue000" <= ch <= "\uf8ff" for ch in prompt)
    assert "  " not in out or "  " in prompt
    spans = find_subject(prompt, subject)
    if not spans:
        assert out == prompt
        return
    # Removal only deletes: the subject's spans, then whitespace, commas and emptied brackets around
    # them (a whitespace run may become one space). So the output fits in the prompt without the spans.
    starts, ends = [start for start, _ in spans] + [len(prompt)], [0] + [end for _, end in spans]
    kept = "".join(prompt[a:b] for a, b in zip(ends, starts, strict=True))
    assert len(out) <= len(kept)
    assert _is_subsequence(_spaces(out), _spaces(kept))
    assert len(find_subject(out, subject)) <= len(find_subject(prompt, subject))


def test_differing_positions_same_and_different_lengths():
    from lib_degu.tokens import differing_positions, flatten_chunks

    bos, eos = 1, 2
    subject = [bos, 10, 11, 99, 12, eos, eos]
    assert differing_positions(subject, [bos, 10, 11, 50, 12, eos, eos]) == [3]
    assert differing_positions(subject, [bos, 10, 11, 12, eos, eos, eos]) == [3]  # removed
    assert differing_positions([bos, 10, 97, 98, 12, eos], [bos, 10, 50, 12, eos, eos]) == [2, 3]
    assert differing_positions(subject, subject) == []
    assert flatten_chunks([[1] * 77, [2] * 77])[76:78] == [1, 2]
