"""Which process owns a task or a sandbox, in a form that tells later whether it still runs.

A pid alone is not enough: pids are reused. A process is named by its pid and its start time
(clock ticks since boot, from /proc), and what it leaves on a Docker engine also by this host's
name and boot, so a sweep removes only what a process of this machine left when it died.
"""

from __future__ import annotations

import os
import socket
from functools import cache
from pathlib import Path

LABEL = "offload.process"  # the label holding `label()` on every container, volume and directory


def _proc_stat(pid: int) -> tuple[str, str | None]:
    """A process's state letter and start time (in clock ticks since boot), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return "X", None


def current() -> dict:
    """This process: enough to tell later whether it is still alive."""
    return {"pid": os.getpid(), "started": _proc_stat(os.getpid())[1]}


def alive(owner: dict | None) -> bool:
    """The owner process still runs (and is the same process, not a reused pid or a zombie)."""
    if not owner:
        return False
    state, started = _proc_stat(owner["pid"])
    if state in ("X", "Z"):
        return False
    return owner.get("started") is None or started == owner["started"]


@cache
def _machine() -> tuple[str, str]:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return socket.gethostname(), boot


def label() -> str:
    """This process as a label value: host/boot/pid/start."""
    me = current()
    return "/".join([*_machine(), str(me["pid"]), str(me["started"])])


def dead(labels: dict) -> bool:
    """Whether what carries these labels was left by a process of this machine that has ended.
    Anything else (another host's, one without the label) is not ours to judge: False."""
    parts = str(labels.get(LABEL, "")).rsplit("/", 3)
    if len(parts) != 4 or parts[0] != _machine()[0] or not parts[2].isdigit():
        return False
    if parts[1] != _machine()[1]:  # made before this machine last booted
        return True
    return not alive({"pid": int(parts[2]), "started": None if parts[3] == "None" else parts[3]})
