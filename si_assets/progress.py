"""Progress with rate and ETA for long steps, written to any logger (Dagster's run log included)."""

from __future__ import annotations

import io
from collections.abc import Callable

from tqdm import tqdm


class _LineWriter(io.TextIOBase):
    """tqdm writes carriage-return refreshes; a log wants whole lines."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit

    def write(self, text: str) -> int:
        line = text.strip("\r\n ")
        if line:
            self._emit(line)
        return len(text)


def progress(total: int, desc: str, log: Callable[[str], None] | None, every_s: float = 10.0) -> tqdm:
    """A tqdm bar that logs at most every `every_s` seconds (not every step); silent without a logger."""
    return tqdm(
        total=total,
        desc=desc,
        file=_LineWriter(log) if log else None,
        disable=log is None,
        mininterval=every_s,
        maxinterval=every_s * 6,
        ascii=True,
        dynamic_ncols=False,
        ncols=100,
    )
