"""The live progress line (stderr): rewritten in place on a terminal, one line a
second otherwise."""

from __future__ import annotations

import sys
from typing import TextIO


class Progress:
    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._tty = self.stream.isatty()
        self._width = 0

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self._tty:
            padding = " " * max(self._width - len(text), 0)
            self.stream.write(f"\r{text}{padding}")
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self) -> None:
        """End the line being rewritten, if any."""
        if self.enabled and self._tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0

    def note(self, text: str) -> None:
        """A line of its own (a phase starting, a warning)."""
        if not self.enabled:
            return
        self.done()
        self.stream.write(text + "\n")
        self.stream.flush()


def rate(value: float) -> str:
    """1234567 → '1.23M', 12345 → '12.3k'."""
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"
