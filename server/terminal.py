"""Text for a terminal: what a task brings back is untrusted, so its control characters are shown,
never obeyed.

A file, a command's output or a model's message may hold `ESC[2K`, a carriage return or an OSC
title sequence that would hide or rewrite what the user reads. On a terminal every control
character but tab and newline is printed escaped (`\\x1b`); colour is only what we add ourselves,
and only where the user wants it (a terminal, `NO_COLOR` unset). Piped or redirected output stays
byte for byte what it was, so `offload diff ID > fix.patch` is still a patch.
"""

from __future__ import annotations

import os
import re
from typing import TextIO

# C0 but tab and newline, DEL, C1, and the bidirectional overrides that reorder a line as displayed
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\r": "\\r", "\x1b": "\\x1b", "\b": "\\b", "\f": "\\f", "\v": "\\v", "\x00": "\\0"}

RED, GREEN, YELLOW, CYAN, BOLD, DIM = "31", "32", "33", "36", "1", "2"


def _visible(match: re.Match) -> str:
    c = match[0]
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) <= 0xff else f"\\u{ord(c):04x}")


def escape(text: str) -> str:
    """`text` with every control character but tab and newline made visible; CRLF ends a line."""
    return _CONTROL.sub(_visible, text.replace("\r\n", "\n"))


class Out:
    """One output stream as the user sees it: escaped and maybe coloured on a terminal, verbatim elsewhere."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.colour = self.tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"

    def text(self, text: str) -> str:
        return escape(text) if self.tty else text

    def paint(self, text: str, *styles: str) -> str:
        """`text` made safe, in the given SGR styles when colour is on."""
        text = self.text(text)
        return f"\033[{';'.join(styles)}m{text}\033[0m" if self.colour and styles and text else text

    def line(self, text: str = "", *styles: str) -> None:
        self.stream.write(self.paint(text, *styles) + "\n")

    def flush(self) -> None:
        self.stream.flush()

    def diff(self, text: str) -> None:
        """A diff (unified, or a patch in the model's grammar), coloured line by line on a terminal."""
        if not self.tty:
            self.stream.write(text)
            return
        lines = text.split("\n")
        for i, line in enumerate(lines):
            self.stream.write(self.paint(line, *diff_styles(line)) + ("\n" if i < len(lines) - 1 else ""))


_DIFF_HEADERS = ("*** ", "diff --git ", "index ", "--- ", "+++ ", "new file", "deleted file", "old mode", "new mode",
                 "rename ", "similarity ", "Binary files ")


def diff_styles(line: str) -> tuple[str, ...]:
    """How a line of a diff is coloured: file headers bold, hunk headers cyan, additions green, removals red."""
    if line.startswith(_DIFF_HEADERS):
        return (BOLD,)
    if line.startswith("@@"):
        return (CYAN,)
    return {"+": (GREEN,), "-": (RED,)}.get(line[:1], ())
