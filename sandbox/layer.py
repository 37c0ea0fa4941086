"""A sandbox's directory on this host: its labels, and for Docker its writable layer.

Every sandbox that depends on this host gets `<cache>/sandboxes/<id>/` holding `labels.json`
(its owner process, backend and snapshot), so a sweep can tell a dead owner's leftovers and
the snapshot cache can tell which snapshots are in use. A Docker sandbox's writable layer is
one size-limited tmpfs mounted at `<id>/layer`: the overlay's upper layer, /tmp, home and
/dev/shm all live on it, as in a bubblewrap sandbox (which mounts its own tmpfs inside its
namespace), so filling the disk stops at `sandbox.disk` and nothing outlives the sandbox. The
workspace's overlay is mounted on it too, by Offload, from options that name only its own
directories: the container's mount table then shows no path of this host's.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import threading
from pathlib import Path

from . import idmap
from .errors import SandboxError

WRITABLE = ("upper", "work", "tmp", "home", "shm")  # the layer's directories
_PLACES = ("ws", "lower", "empty")  # the workspace's mount point, the snapshot's, an empty lower layer
_MNT_DETACH = 2
_MS_SHARED = 1 << 20
_CLONE_FS = 0x200
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
    if kernel_version() < (5, 19):
        return f"an overlay over an idmapped snapshot needs Linux 5.19 or later (this is {os.uname().release})"
    return None


def kernel_version() -> tuple[int, ...]:
    """This kernel's version, as numbers: `6.1.0-18-amd64` is (6, 1)."""
    return tuple(int(n) for n in re.findall(r"\d+", os.uname().release)[:2])


def mount(directory: Path, size: int, uid: int) -> Path:
    """A tmpfs of `size` bytes at `<directory>/layer` holding the writable directories, owned by
    the sandbox user (the overlay's root takes the upper directory's owner), and the places the
    workspace is mounted from (see `mount_workspace`)."""
    layer = directory / "layer"
    layer.mkdir()
    if _libc.mount(b"offload", bytes(layer), b"tmpfs", 0, f"size={size},mode=0755".encode()) != 0:
        raise SandboxError(f"could not mount the sandbox's layer at {layer}: {os.strerror(ctypes.get_errno())}")
    for name in (*WRITABLE, *_PLACES):
        (layer / name).mkdir()
        if name in WRITABLE and name != "work":
            os.chown(layer / name, uid, uid)
    for name in ("tmp", "shm"):
        os.chmod(layer / name, 0o1777)
    return layer


def _relative(path: Path, layer: Path) -> str:
    """`path` relative to the layer, as an overlay option names it: a mount table that shows the
    option then names no directory of this host's."""
    text = os.path.relpath(Path(path).resolve(), layer)
    if any(c in text for c in ",:\\"):
        raise SandboxError(f"the path {text} holds a character overlayfs cannot take (, : \\)")
    return text


def _mount_overlay(layer: Path, target: str, options: str) -> None:
    """Mount an overlay at `<layer>/<target>`, its options' paths relative to the layer: resolved on a
    thread with a working directory of its own (unshare CLONE_FS), as other threads keep theirs."""
    failed: list[str] = []

    def mount() -> None:
        try:
            if _libc.unshare(_CLONE_FS) != 0:
                raise OSError(ctypes.get_errno(), "unshare")
            os.chdir(layer)
            if _libc.mount(b"overlay", os.fsencode(target), b"overlay", 0, os.fsencode(options)) != 0:
                raise OSError(ctypes.get_errno(), "mount")
        except Exception as e:
            failed.append(os.strerror(e.errno) if isinstance(e, OSError) and e.errno else str(e))

    thread = threading.Thread(target=mount, name="offload-mount")
    thread.start()
    thread.join()
    if failed:
        raise SandboxError(f"could not mount the overlay at {layer / target}: {failed[0]}")


def mount_home(layer: Path, lower: Path, uid: int) -> None:
    """Make the layer's home an overlay over `lower` (a cached setup's home): the sandbox sees what
    setup left there, and what it writes still lands on the layer."""
    for name in ("home-upper", "home-work"):
        (layer / name).mkdir()
    os.chown(layer / "home-upper", uid, uid)
    _mount_overlay(layer, "home", f"lowerdir={_relative(lower, layer)},upperdir=home-upper,workdir=home-work")


def share(layer: Path) -> None:
    """Make the layer a shared mount: its `ws`, bound into a warm sandbox with slave propagation,
    then shows the workspace mounted on it later."""
    if _libc.mount(None, bytes(layer), None, _MS_SHARED, None) != 0:
        raise SandboxError(f"could not share the sandbox's layer at {layer}: {os.strerror(ctypes.get_errno())}")


def mount_workspace(layer: Path, snapshot: Path, lowers: list[Path], read_only: bool, uid: int) -> None:
    """Mount the workspace on the layer's `ws`: an overlay over the snapshot, then `lowers` (top
    first), with its upper layer on the layer. The snapshot comes in as a read-only bind at
    `lower`, idmapped so its files are `uid`'s (idmap.py), and is unbound once the overlay holds
    it. Read-only has no upper layer and the snapshot's own owners (an overlay without an upper
    layer needs two lowers: an empty directory goes last); it is the overlay's own, as a bind's
    read-only flag does not propagate."""
    idmap.bind(snapshot, layer / "lower", None if read_only else uid)
    try:
        below = ":".join(["lower", *(_relative(p, layer) for p in lowers)])
        _mount_overlay(layer, "ws", f"lowerdir={below}:empty" if read_only
                       else f"lowerdir={below},upperdir=upper,workdir=work")
    finally:
        _libc.umount2(bytes(layer / "lower"), _MNT_DETACH)


def mount_tools(layer: Path, root: Path) -> Path:
    """The toolset's root filesystem (toolset.py) read-only at the layer's `tools`: an overlay over
    a bind of it that is unbound at once, so the overlay's options name only `tools-lower`."""
    for name in ("tools", "tools-lower"):
        (layer / name).mkdir()
    idmap.bind(root, layer / "tools-lower")
    try:
        _mount_overlay(layer, "tools", "lowerdir=tools-lower:empty")
    finally:
        _libc.umount2(bytes(layer / "tools-lower"), _MNT_DETACH)
    return layer / "tools"


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
    _libc.umount2(bytes(directory / "layer" / "ws"), 0)  # the workspace, if mounted
    _libc.umount2(bytes(directory / "layer" / "tools"), 0)  # the toolset lent to a user's image, if any
    layer = bytes(directory / "layer")
    if _libc.umount2(layer, 0) != 0 and ctypes.get_errno() == errno.EBUSY:
        _libc.umount2(layer, _MNT_DETACH)  # a process still inside: gone from the tree now, freed when it ends
    shutil.rmtree(directory, ignore_errors=True)
