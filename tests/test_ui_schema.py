"""Round trips of the user's side: infotext paste, X/Y/Z axes, settings page, API args."""

from __future__ import annotations

import types

import pytest

from lib_degu.settings import DeGuSettings
from tests.a1111_support import degu_script, run, shared
from tests.fake_a1111 import harness

with harness.installed():
    from modules import scripts as host_scripts


def _fake_xyz_module() -> types.ModuleType:
    """mirrors scripts/xyz_grid.py (1.10.1): AxisOption, apply_field, confirm_range, boolean_choice, axis_options."""
    xyz = types.ModuleType("xyz_grid.py")

    class AxisOption:
        def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None):
            self.label, self.type, self.apply, self.format_value = label, type, apply, format_value
            self.confirm, self.cost, self.choices, self.prepare = confirm, cost, choices, prepare

    def apply_field(field):
        def fun(p, x, xs):
            setattr(p, field, x)

        return fun

    def confirm_range(min_val, max_val, axis_label):
        def confirm_range_fun(p, xs):
            for x in xs:
                if not (max_val >= x >= min_val):
                    raise ValueError(f'{axis_label} value "{x}" out of range [{min_val}, {max_val}]')

        return confirm_range_fun

    def boolean_choice(reverse=False):
        return lambda: ["False", "True"] if reverse else ["True", "False"]

    xyz.AxisOption, xyz.apply_field, xyz.confirm_range, xyz.boolean_choice = (
        AxisOption, apply_field, confirm_range, boolean_choice,
    )
    xyz.axis_options = [AxisOption("Seed", int, apply_field("seed"))]
    script_class = type("Script", (), {"__module__": "xyz_grid.py"})
    xyz.Script = script_class
    return xyz


@pytest.fixture
def xyz():
    module = _fake_xyz_module()
    entry = host_scripts.ScriptClassData(module.Script, "scripts/xyz_grid.py", ".", module)
    host_scripts.scripts_data.append(entry)
    yield module
    host_scripts.scripts_data.remove(entry)


def test_xyz_axes_registered_once_labelled_and_validated(xyz):
    with harness.installed():
        degu_script.register_xyz_axes()
        degu_script.register_xyz_axes()  # "Reload UI" runs on_before_ui again
    ours = [a for a in xyz.axis_options if a.label.startswith("[DeGu] ")]
    labels = [a.label for a in ours]
    assert len(labels) == len(set(labels)) == len(DeGuSettings.names()) - 1  # all but show_mask
    balance = next(a for a in ours if a.label == "[DeGu] Fidelity <-> editability")
    balance.confirm(None, [-1.0, 0.5])
    with pytest.raises(ValueError, match="out of range"):
        balance.confirm(None, [1.5])
    source = next(a for a in ours if a.label == "[DeGu] Mask source")
    assert source.choices() == ["attention", "difference", "full"]
    enabled = next(a for a in ours if a.label == "[DeGu] Enable DeGu")
    p = types.SimpleNamespace()
    enabled.apply(p, "True", None)
    balance.apply(p, -0.5, None)
    assert p.degu_enabled is True and p.degu_balance == -0.5


def test_xyz_cell_overrides_reach_the_generation():
    with harness.host_session(seed=0):
        plain = run(None, prompt="a photo of a dog on a beach").latents
        p = harness.FakeProcessing(prompt="a photo of sks dog on a beach", steps=4, seed=3, negative_prompt="blurry")
        script = degu_script.DeGuScript()
        script.args_from, script.args_to = 0, 14
        from tests.a1111_support import script_args

        p.scripts = host_scripts.ScriptRunner([script])
        p.script_args = script_args(enabled=True, subject="sks", generic="a")
        p.degu_balance, p.degu_mask_source = -1.0, "difference"  # what apply_field does per cell
        out = harness.txt2img(p).latents
        reference = run(None, prompt="a photo of a dog on a beach", seed=3).latents
    assert plain.shape == out.shape
    import torch

    assert torch.allclose(out, reference, atol=1e-4)


def test_paste_restores_every_control_and_missing_key_means_disabled():
    script = degu_script.DeGuScript()
    script.is_img2img = False
    s = DeGuSettings(enabled=True, subject="ohwx man", generic="a man", balance=0.25, mask_source="difference")
    infotext = s.to_infotext()
    # What the WebUI does on paste: call each PasteField's function with the parsed parameters.
    readers = {name: degu_script._paste_reader(name) for name in DeGuSettings.names() if name != "show_mask"}
    restored = {name: read(infotext) for name, read in readers.items()}
    assert DeGuSettings.from_dict(restored) == s
    assert all(read({"Steps": "20"}) == getattr(DeGuSettings(), name) for name, read in readers.items())


def test_settings_page_section_and_defaults():
    with harness.host_session(seed=0):
        degu_script.on_ui_settings()
        labels = shared.opts.data_labels
        assert {"degu_default_identity_scale", "degu_default_mask_source", "degu_default_show_mask"} <= set(labels)
        assert labels["degu_default_mask_source"].section == ("degu", "DeGu")
        shared.opts.degu_default_context_scale = 1.7
        assert degu_script._ui_default("context_scale") == 1.7
        shared.opts.degu_default_context_scale = 99  # invalid: the schema's default is used instead
        assert degu_script._ui_default("context_scale") == 1.0
