"""`offload doctor`: what works here, and for each thing that does not, the fix."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from offload.sandbox.errors import SandboxError

from . import config as cfg

BWRAP_FIX = (
    "apt-get install -y bubblewrap util-linux python3, and allow unprivileged user namespaces "
    "(sysctl -w kernel.unprivileged_userns_clone=1; on Ubuntu 23.10+ "
    "kernel.apparmor_restrict_unprivileged_userns=0); or set sandbox.backend = \"docker\""
)


def probe_bubblewrap() -> str:
    """Start a real bubblewrap sandbox over an empty directory and run one command in it."""
    from offload.sandbox import bwrap_backend

    bwrap_backend.available()
    with tempfile.TemporaryDirectory(prefix="offload-doctor-") as tmp:
        lower = Path(tmp, "lower")
        lower.mkdir()
        start = time.perf_counter()
        sandbox = bwrap_backend.create(Path(tmp), lower, f"doctor-{os.getpid()}", {}, memory="256m", cpus=1.0, pids=64,
                                       disk="16m", network=False)
        try:
            result = sandbox.runner.run(["true"], timeout=30)
            if result.exit_code != 0:
                raise SandboxError(f"a command in the sandbox failed: {result.output.strip()}")
            ready = time.perf_counter() - start
        finally:
            sandbox.destroy()
    limits = {"cgroup": "cgroups (memory, pids, cpu)",
              "rlimit": "rlimits only (no cgroup could be made: RLIMIT_AS per process, RLIMIT_NPROC "
                        "per sandbox, which does not bind root)"}[sandbox.limits]
    return f"a sandbox answered in {ready * 1000:.0f} ms; limits by {limits}"


def _checks() -> list[dict]:
    results = []

    def check(name: str, ok: bool, detail: str, fix: str = "") -> None:
        results.append({"check": name, "ok": ok, "detail": detail, "fix": "" if ok else fix})

    try:
        config = cfg.load_config(Path.cwd())
        check("config", True, "settings from: " + (", ".join(sorted(set(config.sources.values()))) or "defaults"))
    except cfg.ConfigError as e:
        check("config", False, str(e), "correct the setting named above")
        return results
    client = None
    try:
        from offload.sandbox.docker_backend import connect

        client = connect(config.get("sandbox.docker_host") or None)
        check("docker", True, f"engine {client.version().get('Version', '?')} answers")
    except SandboxError as e:
        check("docker", False, str(e), "install and start a Docker engine: apt-get install -y docker.io && dockerd &")
    if client is not None:
        from offload.sandbox.image import image_is_current

        name = config.get("sandbox.image")
        current = image_is_current(client, name)
        check("image", current, f"{name} is {'current' if current else 'missing or outdated'}",
              "run `offload image build`")
    try:
        check("bubblewrap", True, probe_bubblewrap())
    except SandboxError as e:
        check("bubblewrap", False, str(e), BWRAP_FIX)
    ok = {r["check"]: r["ok"] for r in results}
    backend = config.get("sandbox.backend")
    docker_works = ok["docker"] and ok.get("image", False)
    auto = ("docker" if docker_works else None) if ok["docker"] else ("bubblewrap" if ok["bubblewrap"] else None)
    chosen = {"docker": "docker" if docker_works else None, "bubblewrap": "bubblewrap" if ok["bubblewrap"] else None,
              "auto": auto}.get(backend)
    check("sandbox", chosen is not None, f"sandbox.backend = {backend!r}" + (f": tasks run on {chosen}" if chosen else
          ": no backend it allows works here"), "fix a backend above, or set sandbox.backend to one that works")
    try:
        model = cfg.resolve_model(config)
        check("model", True, f"{model['name']} at {model['base_url'] or 'api.openai.com'} ({config.get('model.api')} API)")
    except cfg.ConfigError as e:
        check("model", False, str(e), "set OPENAI_API_KEY, or OPENAI_BASE_URL and OFFLOAD_MODEL_NAME")
    return results


def doctor(json_output: bool = False) -> int:
    results = _checks()
    if json_output:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(f"{'ok  ' if r['ok'] else 'FAIL'}  {r['check']:<10} {r['detail']}")
            if r["fix"]:
                print(f"      fix: {r['fix']}")
    # The backends are alternatives: only the one sandbox.backend picks has to work.
    return 0 if all(r["ok"] for r in results if r["check"] not in ("docker", "image", "bubblewrap")) else 1
