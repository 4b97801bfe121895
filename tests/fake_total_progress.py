"""The console's "Total progress" bar of both fake hosts: mirrors modules/shared_total_tqdm.py
(A1111 1.10.1 and Forge, identical) with a bar that counts instead of printing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class CountingBar:
    """What the fakes keep of ``tqdm.tqdm``: its total and how far it got."""

    total: int
    n: int = 0

    def update(self) -> None:
        self.n += 1


class TotalTQDM:
    """mirrors TotalTQDM: made at the first step with ``job_count * sampling_steps``; ``updateTotal``
    (the hires pass, X/Y/Z) resizes it; nothing when console bars are off. ``shared``: the fake's
    modules.shared, read at call time like the host's module global."""

    def __init__(self, shared: Any) -> None:
        self._shared = shared
        self._tqdm: CountingBar | None = None

    def _enabled(self) -> bool:
        return bool(self._shared.opts.multiple_tqdm and not self._shared.cmd_opts.disable_console_progressbars)

    def reset(self) -> None:
        self._tqdm = CountingBar(total=self._shared.state.job_count * self._shared.state.sampling_steps)

    def update(self) -> None:
        if not self._enabled():
            return
        if self._tqdm is None:
            self.reset()
        self._tqdm.update()

    def updateTotal(self, new_total: int) -> None:  # noqa: N802 - the host's name
        if not self._enabled():
            return
        if self._tqdm is None:
            self.reset()
        self._tqdm.total = new_total

    def clear(self) -> None:
        self._tqdm = None
