"""Error reporting that prints and never raises.

Minimal stand-in for modules/errors.py: report / display (Forge dfdcbab6).
"""

from __future__ import annotations

import sys
import traceback

reported: list[str] = []  # test aid: every reported message, in order


# mirrors modules/errors.py: report (Forge dfdcbab6)
def report(message: str, *, exc_info: bool = False) -> None:
    reported.append(message)
    print(f"*** {message}", file=sys.stderr)
    if exc_info:
        print(traceback.format_exc(), file=sys.stderr)


# mirrors modules/errors.py: display (Forge dfdcbab6)
def display(e: Exception, task: str, *, full_traceback: bool = False) -> None:
    report(f"{task}: {type(e).__name__}: {e}", exc_info=True)
