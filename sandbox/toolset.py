"""Offload's own tools in a user's Docker image: the runner's Python, git and bash, lent by the base image.

A user's image needs only a POSIX shell. What Offload itself runs inside (the runner, a Python
program, and git for the task's commits) comes from the base image's root filesystem on this
host (image.rootfs), read-only at /opt/offload/root (an overlay Offload mounts on the container's
layer, so the mount table names no host path; a bind where it cannot mount) and started through
that filesystem's own dynamic loader, so nothing of the user's image (its libc included) is
needed or changed. Git and bash (which runs `sandbox.setup`) are on the commands' PATH after the
image's own directories, so the image's own win where it has them; Offload's own commands around
the setup script put the lent GNU tools first (`LENT`), whatever the image's are (busybox's lack
options they use). Images built from Offload's base (they carry its recipe label) have all this
themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from docker.types import Mount

from .image import rootfs

MOUNT = "/opt/offload"
ROOT = f"{MOUNT}/root"
BIN = f"{MOUNT}/bin"
LENT = ("git", "bash", "cp", "find", "xargs", "chown", "grep", "mkdir", "tar")
_LOADERS = ("usr/lib64/ld-linux-x86-64.so.2", "usr/lib/ld-linux-aarch64.so.1", "usr/lib/ld-linux-armhf.so.3")


@dataclass(frozen=True)
class Toolset:
    """The base root filesystem on this host, and how programs in it start inside a container."""

    root: Path
    loader: str  # the root filesystem's dynamic loader, as seen inside
    libraries: str  # its library directories, as seen inside

    def command(self, program: str) -> list[str]:
        """The argv prefix that runs `program` of the root filesystem inside the container."""
        return [self.loader, "--library-path", self.libraries, f"{ROOT}{program}"]

    def mounts(self) -> list[Mount]:
        return [Mount(ROOT, str(self.root), type="bind", read_only=True),
                Mount(BIN, str(self.wrappers()), type="bind", read_only=True)]

    def wrappers(self) -> Path:
        """A directory of shell scripts that start the root filesystem's programs, next to it."""
        directory = self.root.parent / f"{self.root.name}.bin"
        directory.mkdir(mode=0o755, exist_ok=True)
        for name in LENT:
            options = f" --exec-path={ROOT}/usr/lib/git-core" if name == "git" else ""
            text = f'#!/bin/sh\nexec {" ".join(self.command(f"/usr/bin/{name}"))}{options} "$@"\n'
            path = directory / name
            if not path.exists() or path.read_text() != text:
                partial = directory / f".{name}.new"
                partial.write_text(text)
                partial.chmod(0o755)
                partial.replace(path)
        return directory


def needed(image_attrs: dict) -> bool:
    """Whether an image lacks Offload's tools: it was not built from Offload's base image."""
    return "offload.recipe" not in ((image_attrs.get("Config") or {}).get("Labels") or {})


def toolset() -> Toolset | None:
    """The toolset of this host's base root filesystem, or None until `offload image build` made it."""
    root = rootfs()
    if root is None:
        return None
    loader = next((name for name in _LOADERS if (root / name).exists()), None)
    if loader is None:
        return None
    libraries = sorted(str(p.relative_to(root)) for p in (root / "usr/lib").glob("*-linux-gnu*") if p.is_dir())
    return Toolset(root, f"{ROOT}/{loader}", ":".join(f"{ROOT}/{lib}" for lib in [*libraries, "usr/lib"]))


SHELL = "a POSIX shell at /bin/sh"
# Run in an image as the sandbox user: prints what it lacks of what Offload runs inside.
_PROBE = ('command -v git >/dev/null 2>&1 || echo git; '
          'python3 -c "import sys; sys.exit(sys.version_info < (3, 9))" >/dev/null 2>&1 || echo "python3 3.9 or newer"')


def missing(client, image: str, local: bool) -> list[str]:
    """What Offload needs inside that the image lacks, found by running it: a POSIX shell, and
    python3 and git unless Offload lends its own (an engine on this machine, the base built)."""
    import docker.errors

    container = client.containers.create(image, ["-c", _PROBE], entrypoint="/bin/sh", user="1000:1000",
                                         network_mode="none")
    try:
        container.start()
        container.wait(timeout=60)
        out = container.logs(stdout=True, stderr=False).decode()
    except docker.errors.APIError:  # nothing at /bin/sh to start
        return [SHELL]
    finally:
        container.remove(force=True)
    lent = local and needed(client.images.get(image).attrs) and toolset() is not None
    return [] if lent else [line for line in out.splitlines() if line]
