"""Fake of modules/errors.py (1.10.1): only what callbacks and the script runner use."""

from __future__ import annotations

import sys
import textwrap
import traceback

# mirrors modules/errors.py: exception_records (tests can inspect reported errors here)
exception_records: list[dict] = []


def record_exception() -> None:
    """mirrors modules/errors.py: record_exception (1.10.1), simplified to a list of dicts."""
    _, value, tb = sys.exc_info()
    if value is None:
        return
    if exception_records and exception_records[-1]["exception"] is value:
        return
    exception_records.append({"exception": value, "traceback": traceback.format_tb(tb)})
    del exception_records[:-5]


def report(message: str, *, exc_info: bool = False) -> None:
    """mirrors modules/errors.py: report (1.10.1) - print to stderr, never raise."""
    record_exception()
    for line in message.splitlines():
        print("***", line, file=sys.stderr)
    if exc_info:
        print(textwrap.indent(traceback.format_exc(), "    "), file=sys.stderr)
        print("---", file=sys.stderr)
