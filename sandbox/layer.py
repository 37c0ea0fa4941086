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
_MS_SHARED = 1 << 20
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


def share(layer: Path) -> Path:
    """Make the layer a shared mount with an empty `ws` directory on it (and `empty`, see
    `workspace_options`), and return `ws`: bound into a warm sandbox with slave propagation, it
    shows the workspace mounted on it later."""
    for name in ("ws", "empty"):
        (layer / name).mkdir()
    if _libc.mount(None, bytes(layer), None, _MS_SHARED, None) != 0:
        raise SandboxError(f"could not share the sandbox's layer at {layer}: {os.strerror(ctypes.get_errno())}")
    return layer / "ws"


def workspace_options(layer: Path, lowers: list[Path], read_only: bool) -> str:
    """Overlay options for a claimed warm sandbox's workspace: `lowers` top first, its upper layer on
    `layer`; read-only without one (an overlay without an upper layer needs two lowers: an empty
    directory goes last). Read-only is the overlay's own: a bind's read-only flag does not propagate."""
    if read_only:
        return f"lowerdir={':'.join(overlay_path(p) for p in [*lowers, layer / 'empty'])}"
    return (f"lowerdir={':'.join(overlay_path(p) for p in lowers)},"
            f"upperdir={overlay_path(layer / 'upper')},workdir={overlay_path(layer / 'work')}")


def mount_workspace(layer: Path, lowers: list[Path], read_only: bool) -> None:
    """Mount a claimed warm sandbox's workspace on the layer's `ws` (see `share`), on this host."""
    options = workspace_options(layer, lowers, read_only)
    if _libc.mount(b"overlay", bytes(layer / "ws"), b"overlay", 0, options.encode()) != 0:
        raise SandboxError(f"could not mount the workspace at {layer / 'ws'}: {os.strerror(ctypes.get_errno())}")


def relabel(directory: Path, labels: dict) -> dict:
    """Add `labels` to a sandbox directory's labels (a claimed warm sandbox's tree and task); returns them all."""
    merged = {**json.loads((directory / "labels.json").read_text()), **labels}
    staged = directory / "labels.json.new"
    staged.write_text(json.dumps(merged))
    os.replace(staged, directory / "labels.json")
    return merged


def remove(directory: Path) -> None:
    """Unmount the layer (if mounted) and delete the directory; idempotent."""
    _libc.umount2(bytes(directory / "layer" / "home"), 0)  # a setup's home overlay, if any
    _libc.umount2(bytes(directory / "layer" / "ws"), 0)  # a claimed warm sandbox's workspace, if any
    layer = bytes(directory / "layer")
    if _libc.umount2(layer, 0) != 0 and ctypes.get_errno() == errno.EBUSY:
        _libc.umount2(layer, _MNT_DETACH)  # a process still inside: gone from the tree now, freed when it ends
    shutil.rmtree(directory, ignore_errors=True)
