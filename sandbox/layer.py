"""A sandbox's directory on this host: its labels, and for Docker its writable layer.

Every sandbox that depends on this host gets `<cache>/sandboxes/<id>/` holding `labels.json`
(its owner process, backend and snapshot), so a sweep can tell a dead owner's leftovers and
the snapshot cache can tell which snapshots are in use. A Docker sandbox's writable layer is
one size-limited tmpfs mounted at `<id>/layer`: the overlay's upper layer, /tmp, home and
/dev/shm all live on it, as in a bubblewrap sandbox (which mounts its own tmpfs inside its
namespace), so filling the disk stops at `sandbox.disk` and nothing outlives the sandbox.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
from pathlib import Path

from .errors import SandboxError

WRITABLE = ("upper", "work", "tmp", "home", "shm")  # the layer's directories
_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def parse_size(size: str) -> int:
    """Bytes in a Docker-style size: 512m, 2g, 1048576."""
    text = str(size).strip().lower().removesuffix("b")
    scale = 1 << (10 * "kmgt".index(text[-1]) + 10) if text and text[-1] in "kmgt" else 1
    try:
        return int(float(text.rstrip("kmgt")) * scale)
    except ValueError:
        raise SandboxError(f"not a size: {size!r} (write e.g. 512m or 2g)") from None


def overlay_path(path: Path) -> str:
    """`path` as an overlay mount option takes it, or a SandboxError when it cannot."""
    text = str(Path(path).resolve())
    if any(c in text for c in ",:\\"):
        raise SandboxError(f"the path {text} holds a character overlayfs cannot take (, : \\); "
                           "set XDG_CACHE_HOME to a plainer directory")
    return text


def sandbox_dir(cache_dir: Path, sandbox_id: str, labels: dict) -> Path:
    """Make `<cache>/sandboxes/<id>/` with its labels."""
    directory = Path(cache_dir).resolve() / "sandboxes" / sandbox_id
    directory.mkdir(parents=True)
    (directory / "labels.json").write_text(json.dumps(labels))
    return directory


def directories(cache_dir: Path) -> list[tuple[Path, dict]]:
    """Every sandbox directory of this cache with its labels."""
    found = []
    for labels_file in sorted((Path(cache_dir) / "sandboxes").glob("*/labels.json")):
        try:
            found.append((labels_file.parent, json.loads(labels_file.read_text())))
        except (OSError, ValueError):
            continue
    return found


def can_mount() -> str | None:
    """None when this process may mount the layer's tmpfs, else why not."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "mounting a size-limited layer needs root"
    return None


def mount(directory: Path, size: int, uid: int) -> Path:
    """A tmpfs of `size` bytes at `<directory>/layer` holding the writable directories, owned by
    the sandbox user (the overlay's root takes the upper directory's owner)."""
    layer = directory / "layer"
    layer.mkdir()
    if _libc.mount(b"offload", bytes(layer), b"tmpfs", 0, f"size={size},mode=0755".encode()) != 0:
        raise SandboxError(f"could not mount the sandbox's layer at {layer}: {os.strerror(ctypes.get_errno())}")
    for name in WRITABLE:
        (layer / name).mkdir()
        if name != "work":
            os.chown(layer / name, uid, uid)
    for name in ("tmp", "shm"):
        os.chmod(layer / name, 0o1777)
    return layer


def mount_home(layer: Path, lower: Path, uid: int) -> None:
    """Make the layer's home an overlay over `lower` (a cached setup's home): the sandbox sees what
    setup left there, and what it writes still lands on the layer."""
    for name in ("home-upper", "home-work"):
        (layer / name).mkdir()
    os.chown(layer / "home-upper", uid, uid)
    options = f"lowerdir={overlay_path(lower)},upperdir={layer}/home-upper,workdir={layer}/home-work"
    if _libc.mount(b"overlay", bytes(layer / "home"), b"overlay", 0, options.encode()) != 0:
        raise SandboxError(f"could not mount the sandbox's home over {lower}: {os.strerror(ctypes.get_errno())}")


def remove(directory: Path) -> None:
    """Unmount the layer (if mounted) and delete the directory; idempotent."""
    _libc.umount2(bytes(directory / "layer" / "home"), 0)  # a setup's home overlay, if any
    layer = bytes(directory / "layer")
    if _libc.umount2(layer, 0) != 0 and ctypes.get_errno() == errno.EBUSY:
        _libc.umount2(layer, _MNT_DETACH)  # a process still inside: gone from the tree now, freed when it ends
    shutil.rmtree(directory, ignore_errors=True)
