"""Front-end assets agree with the settings schema."""

import json
import re
from pathlib import Path

from lib_degu.settings import DeGuSettings

ROOT = Path(__file__).resolve().parent.parent


def test_tooltips_cover_every_setting_with_its_help_text():
    source = (ROOT / "javascript" / "degu_hints.js").read_text(encoding="utf-8")
    table = json.loads(re.search(r"const degu_hints = (\{.*?\});", source, re.S).group(1))
    assert table == {name: DeGuSettings.spec(name).help for name in DeGuSettings.names()}
