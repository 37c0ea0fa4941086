"""Where a failing check points: file and line locations parsed from its output.

Test runners, compilers and linters print locations in a few shapes; the ones understood here
are Python tracebacks (`File "x.py", line 8`) and `path:line[:col]: message` lines (pytest,
gcc, mypy, ruff, eslint, go). Paths are mapped from the sandbox's workspace to the repository.
"""

from __future__ import annotations

import posixpath
import re

_TRACEBACK = re.compile(r'^\s*File "(?P<path>[^"]+)", line (?P<line>\d+)')
_COLON = re.compile(r"^(?P<path>[\w./\\-]+\.[A-Za-z0-9]+):(?P<line>\d+)(?::\d+)?:?\s+(?P<message>\S.*)$")
_ERROR = re.compile(r"^(?P<message>[A-Za-z_][\w.]*(Error|Exception|Failure)\b.*)$")


def _relative(path: str, workspace: str) -> str | None:
    """A workspace-relative path, or None for files outside it (the standard library, site-packages)."""
    if path.startswith(workspace + "/"):
        path = path[len(workspace) + 1:]
    elif path.startswith("/"):
        return None
    path = posixpath.normpath(path)
    return None if path.startswith("..") else path


def failure_locations(output: str, workdir: str = "", workspace: str = "/workspace") -> list[dict]:
    """`[{path, line, message}]` in the order found, one per location; `line` is 1-based."""
    found: dict[tuple[str, int], dict] = {}
    frame: dict | None = None
    for text in output.splitlines():
        if m := _TRACEBACK.match(text):
            path = _relative(m["path"], workspace)
            frame = {"path": posixpath.join(workdir, path) if path and not m["path"].startswith("/") else path,
                     "line": int(m["line"]), "message": ""} if path else frame
        elif (m := _ERROR.match(text.strip())) and frame:
            frame["message"] = m["message"]
            found.setdefault((frame["path"], frame["line"]), frame)
            frame = None
        elif m := _COLON.match(text.strip()):
            path = _relative(m["path"], workspace)
            if path:
                path = posixpath.normpath(posixpath.join(workdir, path)) if not m["path"].startswith("/") else path
                found.setdefault((path, int(m["line"])), {"path": path, "line": int(m["line"]),
                                                          "message": m["message"]})
    return list(found.values())
