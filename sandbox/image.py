"""The sandbox base image: Debian trixie with the toolchains real projects expect, and a non-root user.

Flavours add heavier toolchains on request, named in the image's tag: `offload-base:trixie-go`,
`…-rust`, `…-java`, or several (`offload-base:trixie-go-rust`); the default stays lean.

Built FROM a public image where a registry answers; otherwise offline from Debian's packages
with debootstrap and `docker import`. Either way the image's root filesystem is also kept as a
directory on this host (`rootfs`): bubblewrap sandboxes run on it, so both backends hold the
same programs, and a Docker sandbox of a user's image borrows Offload's own tools from it
(toolset.py). The recipe's hash is a label on the image and the directory's name, so an
unchanged recipe is never rebuilt, and a wiped engine is refilled from the directory without
debootstrap.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import SandboxError

RELEASE = "trixie"  # Python 3.13, Node.js 20, GCC 14
DEFAULT_IMAGE = f"offload-base:{RELEASE}"
SANDBOX_UID = 1000
SANDBOX_USER = "offload"
PACKAGES = [
    # languages and their package managers
    "python3", "python3-pip", "python3-venv", "python3-dev", "nodejs", "npm",
    # a C/C++ toolchain
    "build-essential", "pkg-config",
    # what an agent reaches for
    "git", "curl", "ca-certificates", "openssl", "ripgrep", "jq", "unzip", "zip", "xz-utils", "bzip2",
    "file", "patch", "less", "procps", "psmisc", "tree", "bc",
]
FLAVOURS = {"go": ["golang-go"], "rust": ["rustc", "cargo"], "java": ["default-jdk-headless", "maven"]}
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MIRROR = os.environ.get("OFFLOAD_DEBIAN_MIRROR", "http://deb.debian.org/debian")
IMAGE_LABEL = "offload.image"  # the name Offload built an image as: only that image may it rebuild
_RECIPE_VERSION = "2"
# Run in the new root filesystem, as root: the sandbox user, its home and workspace; pip may install
# into the system Python (a sandbox is the project's own machine, so PEP 668's guard only gets in the way).
_FINISH = f"""set -e
useradd -m -u {SANDBOX_UID} -U -s /bin/bash -c Offload {SANDBOX_USER}
mkdir -p /workspace && chown {SANDBOX_UID}:{SANDBOX_UID} /workspace
rm -f /usr/lib/python3*/EXTERNALLY-MANAGED
apt-get clean
rm -rf /var/lib/apt/lists/* /var/log/*.log /usr/share/doc/* /usr/share/man/*
"""


def packages(name: str = DEFAULT_IMAGE) -> list[str]:
    """The Debian packages of the image `name`: the base's, and its flavours' when its name asks for
    some (`offload-base:trixie-go-rust`). Any other name is built as the base."""
    repository, _, tag = name.partition(":")
    if repository != DEFAULT_IMAGE.partition(":")[0] or not tag.startswith(f"{RELEASE}-"):
        return PACKAGES
    wanted = tag.removeprefix(f"{RELEASE}-").split("-")
    if unknown := [f for f in wanted if f not in FLAVOURS]:
        raise SandboxError(f"{name}: no flavour {', '.join(unknown)}; the flavours are {', '.join(FLAVOURS)} "
                           f"(e.g. {DEFAULT_IMAGE}-go-rust)")
    return PACKAGES + [p for flavour in FLAVOURS if flavour in wanted for p in FLAVOURS[flavour]]


def recipe_hash(name: str = DEFAULT_IMAGE) -> str:
    """Identifies what the image holds; a change rebuilds it."""
    text = "\n".join([_RECIPE_VERSION, RELEASE, *packages(name), str(SANDBOX_UID), _FINISH])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rootfs(name: str = DEFAULT_IMAGE) -> Path | None:
    """The root filesystem of image `name`'s recipe on this host, or None until `offload image build` makes it."""
    path = _rootfs_path(name)
    return path if (path / "usr/bin/python3").exists() else None


def _rootfs_path(name: str) -> Path:
    """Under $XDG_DATA_HOME/offload: the image's files, kept until the recipe changes (not a cache)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "offload" / "images" / f"rootfs-{recipe_hash(name)}"


def image_is_current(client, name: str = DEFAULT_IMAGE) -> bool:
    import docker.errors

    try:
        image = client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return (image.labels or {}).get("offload.recipe") == recipe_hash(name)


def is_ours(client, name: str) -> bool | None:
    """Whether the image `name` is one Offload built as that name (None: there is no such image);
    an image built FROM it inherits its labels but not its name. Offload never builds over an
    image it did not build."""
    import docker.errors

    try:
        image = client.images.get(name)
    except docker.errors.ImageNotFound:
        return None
    return (image.labels or {}).get(IMAGE_LABEL) == name


def build_image(client, name: str = DEFAULT_IMAGE, force: bool = False, log: Callable[[str], None] = print) -> str:
    """Build the base image unless a current one exists, and its root filesystem on this host;
    returns how it was obtained. Without a Docker client, only the root filesystem is made."""
    root = _rootfs_path(name)
    _remove_outdated(root.parent, log)
    if client is not None and is_ours(client, name) is False:
        raise SandboxError(f"{name} is an image Offload did not build (or an older Offload, before images carried "
                           f"their name); it is left as it is. Set sandbox.image to another name (the default is "
                           f"{DEFAULT_IMAGE}) to build Offload's image, or remove it (docker rmi {name}) if it is "
                           f"Offload's old one")
    if client is not None and not force and image_is_current(client, name):
        if rootfs(name) is None:
            _export(client, name, root, log)
        return "up to date"
    if client is not None and (force or rootfs(name) is None) and _registry_answers(client):
        _build_from_registry(client, name, log)
        _export(client, name, root, log)
        return f"built from debian:{RELEASE}-slim"
    made = force or rootfs(name) is None
    if made:
        _debootstrap(root, packages(name), log)
    if client is None:
        return f"no Docker engine, so no image; the root filesystem of bubblewrap's sandboxes is " \
               f"{'made' if made else 'up to date'} at {root}"
    _import(client, root, name, log)
    return "built offline with debootstrap"


def _remove_outdated(images: Path, log: Callable[[str], None]) -> None:
    """Delete the root filesystems (about 1 GB each) of recipes no image name gives any more: an
    upgrade of Offload changed them, and nothing starts on them again."""
    repository = DEFAULT_IMAGE.partition(":")[0]
    current = {f"rootfs-{recipe_hash(f'{repository}:{RELEASE}-' + '-'.join(chosen) if chosen else DEFAULT_IMAGE)}"
               for n in range(len(FLAVOURS) + 1) for chosen in itertools.combinations(FLAVOURS, n)}
    for path in sorted(images.glob("rootfs-*")) if images.is_dir() else []:
        if path.name not in current:
            log(f"removing {path.name}, the root filesystem of an older recipe")
            shutil.rmtree(path, ignore_errors=True)


def _labels(name: str) -> list[str]:
    return [f"ENV PATH={PATH} LANG=C.UTF-8 HOME=/home/{SANDBOX_USER}",
            f'LABEL offload.recipe="{recipe_hash(name)}" offload.owner="offload" {IMAGE_LABEL}="{name}"']


def _registry_answers(client) -> bool:
    import docker.errors

    try:
        client.images.pull("debian", tag=f"{RELEASE}-slim")
        return True
    except docker.errors.DockerException:
        return False


def _build_from_registry(client, name: str, log: Callable[[str], None]) -> None:
    lines = "\n".join(_labels(name))
    dockerfile = f"""FROM debian:{RELEASE}-slim
RUN apt-get update && apt-get install -y --no-install-recommends {' '.join(packages(name))}
RUN {' && '.join(line for line in _FINISH.splitlines()[1:])}
USER {SANDBOX_UID}:{SANDBOX_UID}
WORKDIR /workspace
{lines}
CMD ["sleep", "infinity"]
"""
    log(f"building {name} from debian:{RELEASE}-slim")
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=name, rm=True)


def _debootstrap(root: Path, wanted: list[str], log: Callable[[str], None]) -> None:
    """A Debian root filesystem from Debian's packages, at `root`, whole or not at all."""
    if shutil.which("debootstrap") is None:
        raise SandboxError(
            "no container registry answers and debootstrap is missing: "
            "install it (apt-get install -y debootstrap) and run `offload image build` again"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".new-", dir=root.parent))
    try:
        log(f"debootstrap {RELEASE} from {MIRROR} (about a minute)")
        _run(["debootstrap", "--variant=minbase", RELEASE, str(partial), MIRROR], "debootstrap")
        # apt, not debootstrap, resolves the packages' dependencies: debootstrap's resolver misses some (npm's)
        log(f"installing {len(wanted)} packages and what they need (a few minutes)")
        _run(["chroot", str(partial), "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
              "--no-install-recommends", *wanted], "installing the packages")
        _run(["chroot", str(partial), "sh", "-c", _FINISH], "finishing the root filesystem")
        partial.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)
        os.rename(partial, root)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, env={"PATH": PATH, "LANG": "C.UTF-8"})
    if proc.returncode != 0:
        raise SandboxError(f"{what} failed: {(proc.stdout + proc.stderr)[-2000:]}")


def _import(client, root: Path, name: str, log: Callable[[str], None]) -> None:
    import docker.errors

    log(f"importing {root.name} as {name}")
    changes = [f"USER {SANDBOX_UID}:{SANDBOX_UID}", "WORKDIR /workspace", *_labels(name), 'CMD ["sleep", "infinity"]']
    repository, _, tag = name.partition(":")
    with tempfile.TemporaryDirectory(prefix="offload-import-", dir=root.parent) as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tarball), "."], check=True)
        try:
            client.api.import_image_from_file(str(tarball), repository=repository, tag=tag or "latest",
                                              changes=changes)
        except docker.errors.DockerException as e:
            raise SandboxError(f"importing the base image failed: {e}") from e


def _export(client, name: str, root: Path, log: Callable[[str], None]) -> None:
    """The image's root filesystem as a directory on this host, for bubblewrap and the toolset."""
    log(f"copying {name}'s root filesystem to {root}")
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".new-", dir=root.parent))
    container = client.containers.create(name, ["true"])
    try:
        tar = subprocess.Popen(["tar", "-C", str(partial), "--numeric-owner", "-xf", "-",
                                "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*"],
                               stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        for chunk in container.export():
            tar.stdin.write(chunk)
        tar.stdin.close()
        if tar.wait() != 0:
            raise SandboxError(f"unpacking {name}'s root filesystem failed: {tar.stderr.read().decode()[-2000:]}")
        partial.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)
        os.rename(partial, root)
    finally:
        container.remove(force=True)
        shutil.rmtree(partial, ignore_errors=True)
