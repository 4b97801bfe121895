"""The suite's own switches say what they do."""

import re


def test_markers_name_only_options_that_exist(pytestconfig):
    for marker in pytestconfig.getini("markers"):
        for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", marker):
            pytestconfig.getoption(option)  # ValueError for an option nobody registered
