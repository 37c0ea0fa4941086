"""Read-only binds of a snapshot, idmapped so that its files are the sandbox user's.

An overlay keeps the owner of what it copies up, and the sandbox user (uid 1000) must be able to
change what it edits. So a Docker sandbox's lower layer is the one cached snapshot bound with an
ID mapping (open_tree, mount_setattr with MOUNT_ATTR_IDMAP, move_mount; overlayfs takes such a
lower layer since Linux 5.19): its files, this process's on disk, show as the sandbox user's,
and nothing is copied. The mapping swaps the two uids and keeps every other one, so a file of
another owner (an object file linked from the user's repository) keeps a valid owner: the kernel
refuses to delete a file whose owner a mapping leaves out.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from pathlib import Path

from .errors import SandboxError

_OPEN_TREE, _MOVE_MOUNT, _MOUNT_SETATTR = 428, 429, 442  # the same on every architecture since 5.1
_OPEN_TREE_CLONE, _AT_FDCWD, _AT_EMPTY_PATH = 1, -100, 0x1000
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_IDMAP = 0x1, 0x100000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_namespaces: dict[tuple[int, int], int] = {}  # a user namespace per mapping, kept for the process's life
_lock = threading.Lock()


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def id_map(a: int, b: int) -> str:
    """A uid_map (or gid_map) that swaps `a` and `b` and maps every other id to itself."""
    lines, start = [f"{a} {b} 1", *([f"{b} {a} 1"] if a != b else [])], 0
    for special in sorted({a, b}):
        if special > start:
            lines.append(f"{start} {start} {special - start}")
        start = special + 1
    lines.append(f"{start} {start} {0xFFFFFFFF - start}")  # up to 2^32 - 2: -1 is no id
    return "".join(f"{line}\n" for line in lines)


def _user_namespace(owner: int, uid: int) -> int:
    """A file descriptor of a user namespace with `id_map(owner, uid)`, made once per process by a
    child that unshares and waits while its maps are written."""
    with _lock:
        if (owner, uid) not in _namespaces:
            child = subprocess.Popen(["unshare", "--user", "--", "sh", "-c", "echo; read _"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
            try:
                if child.stdout.readline() != b"\n":
                    raise SandboxError(f"could not make a user namespace: {child.stderr.read().decode(errors='replace')}")
                for name in ("uid_map", "gid_map"):
                    Path(f"/proc/{child.pid}/{name}").write_text(id_map(owner, uid))
                _namespaces[owner, uid] = os.open(f"/proc/{child.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise SandboxError(f"could not make a user namespace mapping {owner} to {uid}: {e}") from e
            finally:
                child.stdin.close()
                child.wait()
        return _namespaces[owner, uid]


def _check(result: int, what: str) -> int:
    if result < 0:
        raise SandboxError(f"could not {what}: {os.strerror(ctypes.get_errno())}")
    return result


def bind(source: Path, target: Path, uid: int | None = None) -> None:
    """Bind `source` read-only at `target`; with `uid`, its files of this process's uid show as `uid`'s."""
    tree = _check(_libc.syscall(_OPEN_TREE, _AT_FDCWD, bytes(source), _OPEN_TREE_CLONE | os.O_CLOEXEC),
                  f"bind {source}")
    try:
        attr = _MountAttr(attr_set=_MOUNT_ATTR_RDONLY)
        if uid is not None:
            attr.attr_set |= _MOUNT_ATTR_IDMAP
            attr.userns_fd = _user_namespace(os.getuid(), uid)
        _check(_libc.syscall(_MOUNT_SETATTR, tree, b"", _AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)),
               f"show the files of {source} as uid {uid}'s (idmapped mounts need Linux 5.19 or later and a "
               "filesystem that takes them, such as ext4, xfs, btrfs or tmpfs)" if uid is not None
               else f"make the bind of {source} read-only")
        _check(_libc.syscall(_MOVE_MOUNT, tree, b"", _AT_FDCWD, bytes(target), _MOVE_MOUNT_F_EMPTY_PATH),
               f"bind {source} at {target}")
    finally:
        os.close(tree)
