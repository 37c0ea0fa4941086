"""The CLI's faces: a live display on a terminal, plain lines when piped; on a terminal, control characters shown, not obeyed."""

from __future__ import annotations

import io

from offload.server.cli import LiveDisplay, _progress_line
from offload.server.terminal import Out, escape


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_display_keeps_one_status_line_and_scrolls_finished_steps():
    out = Terminal()
    display = LiveDisplay(out)
    record = {"id": "t1"}
    display.update(record, {"type": "state", "state": "running", "reason": "working"})
    display.update(record, {"type": "tool.call", "name": "shell", "arguments": '{"command": ["make", "test"]}'})
    display.update(record, {"type": "tool.result", "exit_code": 0, "duration": 1.5})
    display.update(record, {"type": "state", "state": "finished", "reason": ""})
    screen = [line.rsplit("\r\x1b[K", 1)[-1] for line in out.getvalue().split("\n")]
    assert screen == ["[t1] running: working", "[t1]   shell: make test  → exit 0 in 1.5s", "[t1] finished", ""]


def test_plain_lines_name_the_step():
    line = _progress_line({"id": "t1"}, {"type": "tool.call", "name": "shell",
                                         "arguments": '{"command": ["python3", "-m", "pytest"]}'})
    assert line == "[t1]   shell: python3 -m pytest"


def test_control_characters_are_shown_not_obeyed_on_a_terminal():
    hostile = "ok\tcol\nline\r\nover\rwrite \x1b[2K\x1b]0;title\x07 \x9b2J \u202eevil\b\x00"
    assert escape(hostile) == "ok\tcol\nline\nover\\rwrite \\x1b[2K\\x1b]0;title\\x07 \\x9b2J \\u202eevil\\b\\0"
    screen = Terminal()
    Out(screen).line(hostile)
    assert screen.getvalue() == escape(hostile) + "\n"
    piped = io.StringIO()
    Out(piped).line(hostile)
    assert piped.getvalue() == hostile + "\n"  # a file or a pipe gets the text as it is


def test_the_live_display_escapes_what_a_task_says():
    out = Terminal()
    LiveDisplay(out).update({"id": "t1"}, {"type": "note", "text": "\x1b[2Kgone?"})
    assert "\\x1b[2Kgone?" in out.getvalue() and "\x1b[2K" not in out.getvalue()
