"""The settings schema: round trips and every validation message."""

import dataclasses
import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lib_degu.settings import MASK_SOURCES, DeGuSettings


def _valid_settings():
    def build(values):
        start, end = sorted((values.pop("a"), values.pop("b")))
        return DeGuSettings(start=start, end=end, **values)

    return st.fixed_dictionaries(
        {
            "enabled": st.booleans(),
            "subject": st.text(max_size=12),
            "generic": st.text(max_size=12),
            "identity_scale": st.floats(0, 3),
            "context_scale": st.floats(0, 3),
            "balance": st.floats(-1, 1),
            "mask_source": st.sampled_from(MASK_SOURCES),
            "threshold": st.floats(0, 1),
            "softness": st.floats(0, 1),
            "blur": st.floats(0, 8),
            "ema": st.floats(0, 0.99),
            "show_mask": st.booleans(),
            "a": st.floats(0, 1),
            "b": st.floats(0, 1),
        }
    ).map(build)


@settings(max_examples=300, deadline=None)
@given(_valid_settings())
@example(DeGuSettings(enabled=True, subject="sks", generic="\r"))
@example(DeGuSettings(enabled=True, subject=" ", generic=""))
def test_round_trips_args_dict_infotext(s):
    as_args = [getattr(s, name) for name in DeGuSettings.names()]
    assert DeGuSettings.from_args(as_args) == s
    assert DeGuSettings.from_dict(dataclasses.asdict(s)) == s
    assert DeGuSettings.from_args([dataclasses.asdict(s)]) == s
    text = s.to_infotext()
    if s.enabled:
        assert all(isinstance(v, str) for v in text.values())
        # show_mask is a display preference, not a generation parameter: not in the infotext. A blank
        # subject or generic word is left out (the hosts' parser cannot read an empty value) and
        # pastes as the empty text, which DeGu treats the same (no subject; the subject removed).
        blank_as_empty = {name: "" for name in ("subject", "generic") if not getattr(s, name).strip()}
        assert DeGuSettings.from_infotext(text) == dataclasses.replace(s, show_mask=False, **blank_as_empty)
    else:
        assert text == {}


def test_missing_infotext_key_means_disabled():
    assert DeGuSettings.from_infotext({"Steps": "20", "DeGu subject": "sks"}) == DeGuSettings()
    assert not DeGuSettings.from_infotext({}).enabled


def test_infotext_accepts_parsed_numbers_and_partial_keys():
    s = DeGuSettings.from_infotext({"DeGu": "True", "DeGu subject": "sks", "DeGu balance": -0.5})
    assert s.enabled and s.subject == "sks" and s.balance == -0.5 and s.identity_scale == 1.0


def test_positional_args_may_be_short_and_are_coerced():
    s = DeGuSettings.from_args([True, "sks", "dog", 2, "0.5"])
    assert s.identity_scale == 2.0 and s.context_scale == 0.5 and s.balance == 0.0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"identity_scale": 3.5}, "'identity_scale' must be between 0 and 3, got 3.5"),
        ({"context_scale": -1}, "'context_scale' must be between 0 and 3, got -1.0"),
        ({"balance": 1.5}, "'balance' must be between -1 and 1, got 1.5"),
        ({"threshold": 2}, "'threshold' must be between 0 and 1"),
        ({"softness": -0.1}, "'softness' must be between 0 and 1"),
        ({"blur": 9}, "'blur' must be between 0 and 8"),
        ({"ema": 1.0}, "'ema' must be between 0 and 0.99"),
        ({"start": 0.8, "end": 0.2}, "'start' (0.8) must not be after 'end' (0.2)"),
        ({"end": 1.2}, "'end' must be between 0 and 1"),
        ({"mask_source": "magic"}, "'mask_source' must be one of attention, difference, full; got 'magic'"),
        ({"balance": math.nan}, "'balance' must be a finite number, got nan"),
        ({"identity_scale": math.inf}, "'identity_scale' must be a finite number, got inf"),
        ({"identity_scale": "lots"}, "'identity_scale' must be a number, got 'lots'"),
        ({"identity_scale": True}, "'identity_scale' must be a finite number, got True"),
        ({"enabled": "yes"}, "'enabled' must be true or false, got 'yes'"),
        ({"subject": 3}, "'subject' must be text, got 3"),
        ({"colour": 1, "size": 2}, "unknown setting(s) 'colour', 'size'; known: enabled, subject"),
    ],
)
def test_validation_messages_name_the_field_and_its_range(values, message):
    with pytest.raises(ValueError) as error:
        DeGuSettings.from_dict(values)
    assert message in str(error.value)
    assert str(error.value).startswith("DeGu: ")


def test_too_many_positional_args():
    with pytest.raises(ValueError, match="expected at most 17 arguments"):
        DeGuSettings.from_args([False] * 18)


def test_every_field_has_a_spec_and_infotext_keys_are_unique():
    keys = [DeGuSettings.spec(name).infotext for name in DeGuSettings.names()]
    present = [k for k in keys if k is not None]
    assert len(present) == len(set(present)) == len(keys) - 1  # all but show_mask
    assert all(DeGuSettings.spec(name).help for name in DeGuSettings.names())


def test_replace_validates():
    s = DeGuSettings(enabled=True, subject="sks")
    assert s.replace(balance=0.5).balance == 0.5
    with pytest.raises(ValueError, match="balance"):
        s.replace(balance=5)


def test_old_infotext_without_snap_pastes_the_unsnapped_mask():
    """Images made before edge snapping existed used the mask as estimated: they paste as snap 0."""
    old = {"DeGu": "True", "DeGu subject": "sks"}
    assert DeGuSettings.from_infotext(old).snap == 0
    assert DeGuSettings.from_infotext({**old, "DeGu snap": "3"}).snap == 3
    assert DeGuSettings(enabled=True).to_infotext()["DeGu snap"] == str(DeGuSettings().snap)
    assert DeGuSettings(snap=2).mask_params.snap == 2


def test_old_infotext_without_layout_pass_pastes_a_single_pass():
    """Images made before the layout pass existed were sampled once: they paste with it off."""
    old = {"DeGu": "True", "DeGu subject": "sks"}
    assert DeGuSettings.from_infotext(old).layout_pass is False
    assert DeGuSettings.from_infotext({**old, "DeGu layout pass": "True"}).layout_pass is True
    assert DeGuSettings(enabled=True, layout_pass=True).to_infotext()["DeGu layout pass"] == "True"
