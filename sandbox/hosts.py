"""Several Docker engines behind the Docker backend: each new sandbox goes to the least loaded
engine that answers, and an engine that stops answering fails only the sandboxes on it.

`sandbox.docker_hosts` lists engines by URL:
- `unix:///path/docker.sock`: an engine on this machine;
- `ssh://user@host`: through the `ssh` command, so keys, agents and ~/.ssh/config work as in a shell
  (the docker SDK imports `paramiko` all the same: Offload depends on `docker[ssh]`);
- `tcp://host:2376`: always over TLS with client certificates in Docker's DOCKER_CERT_PATH layout
  (ca.pem, cert.pem, key.pem; default ~/.docker); a directory named after the host under it, such as
  ~/.docker/build1.example.com/, is used for that host instead. Plain TCP is refused: anyone who
  reaches such a port is root on that machine.

What is known of each engine (its client, its last error, when to try it again) is kept once per
process, so every task skips a dead engine until its back-off ends, then tries it again.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import docker
import docker.constants
import docker.errors
import docker.tls

from . import docker_backend, layer
from .channel import ChannelClosed
from .errors import SandboxError

RETRY_AFTER = 10.0  # seconds an engine that failed is skipped by new sandboxes before it is tried again
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
SCHEMES = ("unix", "ssh", "tcp")


def check_url(url: str) -> str:
    """The URL as given, or a SandboxError saying which forms work."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not (parts.path if parts.scheme == "unix" else parts.hostname):
        raise SandboxError(f"sandbox.docker_hosts: {url!r} is not a Docker engine URL; use unix:///path/docker.sock, "
                           "ssh://user@host or tcp://host:2376 (with TLS certificates)")
    return url


def tls_config(url: str) -> docker.tls.TLSConfig:
    """Client TLS for a tcp:// engine, from DOCKER_CERT_PATH (or its per-host directory)."""
    base = Path(os.environ.get("DOCKER_CERT_PATH") or "~/.docker").expanduser()
    host = urlsplit(url).hostname
    directory = base / host if (base / host).is_dir() else base
    files = {name: directory / f"{name}.pem" for name in ("ca", "cert", "key")}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise SandboxError(f"{url} needs TLS: {', '.join(missing)} missing. Put the engine's CA and a client "
                           f"certificate there as ca.pem, cert.pem and key.pem (or in {base / host}/), "
                           "or reach the engine with ssh://user@host")
    return docker.tls.TLSConfig(client_cert=(str(files["cert"]), str(files["key"])), ca_cert=str(files["ca"]),
                                verify=True)


def connect(url: str) -> docker.DockerClient:
    """A client for the engine at `url` ("" is DOCKER_HOST, else the local socket), or a SandboxError."""
    scheme = urlsplit(url).scheme
    if scheme == "tcp":
        return _connect_tls(url)
    if scheme == "ssh" and importlib.util.find_spec("paramiko") is None:
        raise SandboxError(f"{url}: the docker SDK needs the paramiko package for ssh:// engines, even though "
                           "Offload connects through your ssh command: pip install 'docker[ssh]' into Offload's "
                           "environment")
    return docker_backend.connect(url or None, **({"use_ssh_client": True} if scheme == "ssh" else {}))


def _connect_tls(url: str) -> docker.DockerClient:
    """A TLS client that trusts only the engine's CA. requests would let REQUESTS_CA_BUNDLE (or
    CURL_CA_BUNDLE) replace it on every call, so the client ignores the environment: it must be
    set before the first call, which is why the API version is asked for with a first client."""
    tls = tls_config(url)
    try:
        probe = docker.DockerClient(base_url=url, tls=tls, version=docker.constants.MINIMUM_DOCKER_API_VERSION)
        probe.api.trust_env = False
        version = probe.version(api_version=False)["ApiVersion"]
        probe.close()
        client = docker.DockerClient(base_url=url, tls=tls, version=version)
        client.api.trust_env = False
        client.ping()
        return client
    except Exception as e:  # requests' errors as well as Docker's
        raise SandboxError(f"no Docker engine answers at {url} ({e})") from e


def _identity(client: docker.DockerClient) -> tuple[str, str]:
    info = client.info()
    return info.get("ID", ""), info.get("Name", "")


class Engine:
    """One Docker engine and what this process knows of it."""

    def __init__(self, url: str) -> None:
        self.url = url  # "" is the default engine
        self.client: docker.DockerClient | None = None
        self.problem: SandboxError | None = None  # why it is skipped
        self.retry_at = 0.0
        self.local = False  # shares this machine's filesystem (known once it answered)
        self.pending = 0  # sandboxes being created on it by this process, not yet counted by their labels
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.url or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET

    @property
    def error(self) -> str:
        """The last error, short: the engine's own words rather than our advice around them."""
        return str(self.problem.__cause__ or self.problem) if self.problem else ""

    def answering(self) -> bool:
        """Connected, or connects now unless it failed within RETRY_AFTER."""
        with self._lock:
            if self.client is not None:
                return True
            if time.monotonic() < self.retry_at:
                return False
            try:
                client = connect(self.url)
                self.local = urlsplit(self.name).scheme == "unix" or _identity(client) in _local_identities()
            except SandboxError as e:
                self._fail(e)
                return False
            except Exception as e:  # an engine that answers the ping and then breaks
                self._fail(SandboxError(f"the Docker engine at {self.name} failed: {e}"), e)
                return False
            self.client, self.problem = client, None
            return True

    def failed(self, problem: SandboxError, cause: BaseException | None = None) -> None:
        """Skip this engine for new sandboxes until RETRY_AFTER has passed."""
        with self._lock:
            self._fail(problem, cause)

    def _fail(self, problem: SandboxError, cause: BaseException | None = None) -> None:
        if cause is not None:
            problem.__cause__ = cause
        self.client, self.problem, self.retry_at = None, problem, time.monotonic() + RETRY_AFTER

    def still_answers(self) -> bool:
        """Asks the engine now; one that does not answer is skipped from here on."""
        client = self.client
        if client is None:
            return False
        try:
            client.ping()
            return True
        except Exception as e:  # requests' ConnectionError, a timeout, an API error
            self.failed(SandboxError(f"the Docker engine at {self.name} stopped answering"), e)
            return False

    def load(self) -> int:
        """Live Offload sandboxes on the engine (any owner's), by their labels, plus those being made."""
        live = [s for s in docker_backend.list_sandboxes(self.client) if s["status"] in ("created", "running")]
        return len(live) + self.pending


_engines: dict[str, Engine] = {}
_registry_lock = threading.Lock()  # guards _engines
_placement_lock = threading.Lock()  # guards every Engine.pending


def engine_for(url: str) -> Engine:
    """The one Engine of this process for `url`."""
    with _registry_lock:
        return _engines.setdefault(url, Engine(url))


def _local_identities() -> set[tuple[str, str]]:
    """(ID, Name) of the engines on this machine: the default socket's and every unix:// one's known."""
    with _registry_lock:
        local = [e for e in _engines.values() if urlsplit(e.name).scheme == "unix"]
    found = set()
    for e in [engine_for(DEFAULT_SOCKET), *local]:
        client = e.client if e.answering() else None
        try:
            if client is not None:
                found.add(_identity(client))
        except Exception:  # it stopped answering: it identifies nothing
            pass
    return found


class EngineRunner:
    """A sandbox's runner that names its engine when the channel drops, and says whether the
    engine itself went away (then every sandbox on it is lost, and new ones go elsewhere)."""

    def __init__(self, runner, on: Engine) -> None:
        self._runner = runner
        self._engine = on

    def __getattr__(self, name: str):
        attr = getattr(self._runner, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            except ChannelClosed as e:
                raise self._explain(e) from e

        return call

    def _explain(self, closed: ChannelClosed) -> ChannelClosed:
        engine = self._engine
        if engine.still_answers():
            return ChannelClosed(f"{closed} (sandbox on the Docker engine at {engine.name})")
        return ChannelClosed(f"the Docker engine at {engine.name} stopped answering ({engine.error}); the "
                             "sandbox on it is lost with its commands. Other engines' sandboxes are not affected.")


class EngineSandbox:
    """A Docker sandbox that knows its engine (`host`): its commands name the engine when the
    channel drops, and destroying it while the engine is gone is not an error."""

    def __init__(self, sandbox, on: Engine) -> None:
        self._sandbox = sandbox
        self.engine = on
        self.host = on.name
        self.runner = EngineRunner(sandbox.runner, on)

    def __getattr__(self, name: str):
        return getattr(self._sandbox, name)

    def destroy(self) -> None:
        try:
            self._sandbox.destroy()
        except Exception:
            if self.engine.still_answers():
                raise
            # The engine is gone: a restarted engine removes the container itself (it was started with
            # auto-remove); what the sandbox holds on this host goes now.
            if self._sandbox.directory is not None:
                layer.remove(self._sandbox.directory)


class DockerHosts:
    """The configured engines, in list order (ties in load go to the earlier one)."""

    def __init__(self, urls: list[str]) -> None:
        urls = [check_url(url.strip()) for url in urls if url.strip()] or [""]
        self.engines = [engine_for(url) for url in dict.fromkeys(urls)]

    def answering(self) -> list[Engine]:
        return [e for e in self.engines if e.answering()]

    def none_answers(self) -> SandboxError:
        """The error when no engine can take a sandbox: the engine's own with one engine, else each by name."""
        if len(self.engines) == 1:
            engine = self.engines[0]
            return engine.problem or SandboxError(f"the Docker engine at {engine.name} is unusable")
        each = "; ".join(f"{e.name}: {e.error}" for e in self.engines)
        return SandboxError(f"none of the Docker engines in sandbox.docker_hosts answers ({each}). Start them or "
                            "fix sandbox.docker_hosts (`offload doctor` checks each), or set "
                            "sandbox.backend = \"bubblewrap\"")

    def check(self) -> None:
        """Returns when at least one engine answers."""
        if not self.answering():
            raise self.none_answers()

    def _least_loaded(self, tried: set[int]) -> Engine:
        """The engine for the next sandbox, its `pending` raised so that concurrent placements spread."""
        counted = []
        for e in self.answering():
            if id(e) in tried:
                continue
            try:
                counted.append((e, e.load()))
            except Exception as error:  # the engine went away since it last answered
                e.failed(SandboxError(f"the Docker engine at {e.name} stopped answering"), error)
        if not counted:
            raise self.none_answers()
        with _placement_lock:
            chosen = min(counted, key=lambda pair: pair[1] + pair[0].pending)[0]  # min keeps the first of equals
            chosen.pending += 1
        return chosen

    def create(self, image: str, make: Callable[[docker.DockerClient, bool], object]):
        """`make(client, local)` on the least loaded engine that answers; returns its sandbox as an
        EngineSandbox. An engine that fails there because it went away or lacks the image is skipped (its
        error remembered) and the next one tried; any other failure is the sandbox's own and is raised."""
        tried: set[int] = set()
        while True:
            chosen = self._least_loaded(tried)
            client = chosen.client  # None when another task found it gone since
            try:
                if client is None:
                    raise chosen.problem or SandboxError(f"the Docker engine at {chosen.name} stopped answering")
                sandbox = make(client, chosen.local)
            except SandboxError as e:
                missing_image = isinstance(e.__cause__, docker.errors.ImageNotFound)
                if len(self.engines) == 1 or (chosen.still_answers() and not missing_image):
                    raise
                if missing_image:
                    chosen.failed(SandboxError(f"{e}, or load it there: docker save {image} | "
                                               f"docker -H {chosen.name} load"))
                tried.add(id(chosen))
                continue
            finally:
                with _placement_lock:
                    chosen.pending -= 1
            return EngineSandbox(sandbox, chosen)

    def list_sandboxes(self, owner: str | None = None) -> list[dict]:
        """Sandboxes on every engine that answers, each with its engine's URL as `host`."""
        found = []
        for e in self.answering():
            try:
                found += [{**s, "host": e.name} for s in docker_backend.list_sandboxes(e.client, owner)]
            except Exception as error:
                e.failed(SandboxError(f"the Docker engine at {e.name} stopped answering"), error)
        return found
