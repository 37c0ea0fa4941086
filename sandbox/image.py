"""The sandbox base image: Debian with Python and git, and a non-root user.

Built FROM a public image where a registry answers; otherwise offline from Debian's
packages with debootstrap and `docker import`. The recipe's hash is a label on the image,
so an unchanged recipe is never rebuilt, and the rootfs tarball is cached on disk so a
wiped engine is refilled without debootstrap.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors

from .errors import SandboxError

DEFAULT_IMAGE = "offload-base:bookworm"
SANDBOX_UID = 1000
SANDBOX_USER = "offload"
PACKAGES = [
    "python3", "python3-pytest", "python3-venv", "git", "ca-certificates",
    "procps", "ripgrep", "make", "patch", "less",
]
MIRROR = os.environ.get("OFFLOAD_DEBIAN_MIRROR", "http://deb.debian.org/debian")
_RECIPE_VERSION = "1"


def recipe_hash() -> str:
    """Identifies what the image holds; a change rebuilds it."""
    text = "\n".join([_RECIPE_VERSION, "bookworm", *PACKAGES, str(SANDBOX_UID)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def image_is_current(client: docker.DockerClient, name: str = DEFAULT_IMAGE) -> bool:
    try:
        image = client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return (image.labels or {}).get("offload.recipe") == recipe_hash()


def build_image(
    client: docker.DockerClient,
    name: str = DEFAULT_IMAGE,
    cache_dir: Path | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> str:
    """Build the base image unless a current one exists; returns how it was obtained."""
    if not force and image_is_current(client, name):
        return "up to date"
    if _registry_answers(client):
        _build_from_registry(client, name, log)
        return "built from debian:bookworm-slim"
    rootfs_tar = (cache_dir or Path(tempfile.gettempdir())) / "images" / f"rootfs-{recipe_hash()}.tar"
    if force or not rootfs_tar.exists():
        _debootstrap(rootfs_tar, log)
    log(f"importing {rootfs_tar.name} as {name}")
    changes = [
        f"USER {SANDBOX_UID}:{SANDBOX_UID}",
        "WORKDIR /workspace",
        "ENV PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 HOME=/home/offload",
        f'LABEL offload.recipe="{recipe_hash()}"',
        'LABEL offload.owner="offload"',
        'CMD ["sleep", "infinity"]',
    ]
    repository, _, tag = name.partition(":")
    try:
        client.api.import_image_from_file(str(rootfs_tar), repository=repository, tag=tag or "latest", changes=changes)
    except docker.errors.DockerException as e:
        raise SandboxError(f"importing the base image failed: {e}") from e
    return "built offline with debootstrap"


def _registry_answers(client: docker.DockerClient) -> bool:
    try:
        client.images.pull("debian", tag="bookworm-slim")
        return True
    except docker.errors.DockerException:
        return False


def _build_from_registry(client: docker.DockerClient, name: str, log: Callable[[str], None]) -> None:
    dockerfile = f"""FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends {' '.join(PACKAGES)} \\
 && rm -rf /var/lib/apt/lists/* \\
 && useradd -m -u {SANDBOX_UID} -s /bin/bash {SANDBOX_USER} \\
 && mkdir /workspace && chown {SANDBOX_UID}:{SANDBOX_UID} /workspace
USER {SANDBOX_UID}:{SANDBOX_UID}
WORKDIR /workspace
ENV LANG=C.UTF-8 HOME=/home/{SANDBOX_USER}
LABEL offload.recipe="{recipe_hash()}" offload.owner="offload"
CMD ["sleep", "infinity"]
"""
    log(f"building {name} from debian:bookworm-slim")
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=name, rm=True)


def _debootstrap(rootfs_tar: Path, log: Callable[[str], None]) -> None:
    """A minimal Debian rootfs from Debian's packages, as a tarball ready for `docker import`."""
    if shutil.which("debootstrap") is None:
        raise SandboxError(
            "no container registry answers and debootstrap is missing: "
            "install it (apt-get install -y debootstrap) and run `offload image build` again"
        )
    rootfs_tar.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="offload-rootfs-") as tmp:
        root = Path(tmp) / "root"
        log(f"debootstrap bookworm from {MIRROR} (about a minute)")
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "bookworm", str(root), MIRROR],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise SandboxError(f"debootstrap failed: {(proc.stdout + proc.stderr)[-2000:]}")
        _add_user(root)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / cache).iterdir():
                if entry.is_file():
                    entry.unlink()
        partial = rootfs_tar.with_suffix(".partial")
        with tarfile.open(partial, "w") as tar:
            tar.add(root, arcname=".")
        os.replace(partial, rootfs_tar)


def _add_user(root: Path) -> None:
    """The sandbox's non-root user, its home and the workspace it owns."""
    uid = SANDBOX_UID
    with open(root / "etc/passwd", "a") as f:
        f.write(f"{SANDBOX_USER}:x:{uid}:{uid}:Offload:/home/{SANDBOX_USER}:/bin/bash\n")
    with open(root / "etc/group", "a") as f:
        f.write(f"{SANDBOX_USER}:x:{uid}:\n")
    for rel in (f"home/{SANDBOX_USER}", "workspace"):
        path = root / rel
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, uid, uid)
