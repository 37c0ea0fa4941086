"""`offload doctor`: what works here, and for each thing that does not, the fix."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from offload.sandbox.errors import SandboxError
from offload.sandbox.image import DEFAULT_IMAGE

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
    system = ("the base image's root filesystem, as Docker sandboxes have" if bwrap_backend.system() != Path("/") else
              "this host's system directories (`offload image build` makes the base image's, as Docker sandboxes have)")
    return f"a sandbox answered in {ready * 1000:.0f} ms; limits by {limits}; programs from {system}"


def _check_engines(config: cfg.Config, check) -> None:
    """`docker` and `image` for the one engine; with sandbox.docker_hosts, the same per engine (named by
    URL) and then over all of them: Docker works when one engine answers and holds the image."""
    from offload.sandbox.docker_backend import overlay_problem
    from offload.sandbox.hosts import DockerHosts
    from offload.sandbox.image import image_is_current, is_ours

    image = config.get("sandbox.image")
    try:
        engines = DockerHosts(config.get("sandbox.docker_hosts") or [config.get("sandbox.docker_host")]).engines
    except SandboxError as e:
        return check("docker", False, str(e), "correct sandbox.docker_hosts")
    several = len(engines) > 1
    answering = usable = 0
    for engine in engines:
        suffix = f" {engine.name}" if several else ""
        if not engine.answering():
            check("docker" + suffix, False, engine.error if several else str(engine.problem),
                  f"start the engine at {engine.name} (or fix the ssh or TLS access to it), or remove it from "
                  "sandbox.docker_hosts" if several else
                  "install and start a Docker engine: apt-get install -y docker.io && dockerd &")
            continue
        answering += 1
        where = overlay_problem(engine.client, engine.local) or \
            "local: workspaces are overlays of this machine's snapshot cache, their disk capped by sandbox.disk"
        check("docker" + suffix, True, f"engine {engine.client.version().get('Version', '?')} answers"
              + ("" if several else f" at {engine.name}") + f" ({where})")
        ours = is_ours(engine.client, image)
        if ours is False:  # the user's: checked by running it, never rebuilt
            usable += _check_own_image(engine, image, check, suffix)
            continue
        current = image_is_current(engine.client, image)
        usable += current
        fix = f"pull or build {image} on this engine, or set sandbox.image = {DEFAULT_IMAGE!r} and run " \
              "`offload image build`" if ours is None and image != DEFAULT_IMAGE else "run `offload image build`"
        check("image" + suffix, current, f"{image} is {'current' if current else 'missing or outdated'}",
              f"run `OFFLOAD_SANDBOX_DOCKER_HOST={engine.name} offload image build`, or copy it from an engine "
              f"that has it: docker save {image} | docker -H {engine.name} load" if several else fix)
    if several:
        check("docker", answering > 0, f"{answering} of {len(engines)} engines in sandbox.docker_hosts answer",
              "start at least one of the engines above")
        if answering:
            check("image", usable > 0, f"{image} is current on {usable} of the {answering} engines that answer; "
                  "sandboxes go only to those", "build or copy the image to an engine, as above")


def _check_own_image(engine, image: str, check, suffix: str) -> bool:
    """`image` for a user's image: what Offload needs inside, tried in it."""
    from offload.sandbox.toolset import SHELL, missing

    lacking = missing(engine.client, image, engine.local)
    check("image" + suffix, not lacking, f"{image} is your own image" + (
        f"; it lacks {', '.join(lacking)}, which Offload runs inside" if lacking else
        ": it runs Offload's runner and git (its own, or Offload's lent from the base image)"),
        f"add {SHELL} to {image}" if SHELL in lacking else
        f"add {' and '.join(lacking)} to {image}, or let Offload lend its own: on an engine on this machine, run "
        f"`OFFLOAD_SANDBOX_IMAGE={DEFAULT_IMAGE} offload image build` once")
    return not lacking


PROBE = [{"role": "system", "content": "You are checking that tool calls work. Answer only with a tool call."},
         {"role": "user", "content": "Call the shell tool with the command [\"true\"]."}]
CONTEXT_KEYS = ("max_model_len", "context_length", "context_window", "loaded_context_length", "max_context_length")


def _llamacpp_context(base_url: str) -> int | None:
    """The window a llama.cpp server runs with (its /props), which its model list does not say."""
    props = cfg.fetch_json(base_url.rstrip("/").removesuffix("/v1") + "/props", 2.0) if base_url else None
    n_ctx = props.get("default_generation_settings", {}).get("n_ctx") if isinstance(props, dict) else None
    return n_ctx if isinstance(n_ctx, int) else None


async def _check_model(settings: dict, check) -> None:
    """`model`, `tools`, `streaming`: a real, tiny request with Offload's own tools, as a task sends it."""
    from .agent.model import ModelClient, ModelError
    from .agent.tools import tool_specs

    where = f"{settings['name']} at {settings['base_url'] or 'api.openai.com'} ({settings['api']} API)"
    quick = {**settings, "timeout": min(settings["timeout"], 30.0), "max_retries": 1}
    client = ModelClient(**{**quick, "stream": False})
    try:
        cards = await client.listed()
        card = next((c for c in cards if c.get("id") == settings["name"]), None)
        if cards and card is None:
            return check("model", False, f"{where}: the server does not list this model (it lists: "
                         f"{', '.join(c.get('id', '?') for c in cards[:10])})", "set model.name (OFFLOAD_MODEL_NAME) "
                         "to one it lists")
        context = next((card[k] for k in CONTEXT_KEYS if isinstance((card or {}).get(k), int)), None) \
            or _llamacpp_context(settings["base_url"])
        tools = tool_specs(freeform=client.freeform_patch)
        try:
            reply = await client.step(PROBE, tools)
        except ModelError as e:
            return check("model", False, f"{where}: {e}")  # the message names the fix
        check("model", True, f"{where} answers" + (f"; context window {context} tokens" if context else ""))
        if not reply.calls:
            check("tools", False, f"asked for a tool call, the model answered in text: {reply.text[:160]!r}",
                  "set model.name to a model that can call tools, or turn on the server's tool parser (see "
                  "docs/models.md)")
        else:
            written = reply.calls[0].written
            check("tools", True, "the model calls tools" + (" by writing them as text, which Offload reads; the "
                  "server's own tool parser is more reliable (docs/models.md)" if written else ""))
    finally:
        await client.close()
    if settings["stream"]:
        streamed = ModelClient(**{**quick, "stream": True})
        try:
            await streamed.step(PROBE, tools)
            check("streaming", True, "streamed replies work")
        except ModelError as e:
            check("streaming", False, str(e), "set model.stream = false, or update the server")
        finally:
            await streamed.close()


def _check_setup(config: cfg.Config, check) -> None:
    """`setup`: whether sandbox.setup can run here (its secrets are set) and what it has cached."""
    from offload.sandbox.setup import cached_results

    if not config.get("sandbox.setup").strip():
        return check("setup", True, "no sandbox.setup")
    missing = [name for name in config.get("sandbox.setup_secrets") if name not in os.environ]
    network = "with" if config.get("sandbox.network") in ("setup", "on") else "without"
    detail = (f"sandbox.setup runs {network} network; {len(cached_results(cfg.cache_dir()))} result(s) cached "
              f"on this host" + (f"; sandbox.setup_secrets names {', '.join(missing)}, not set here" if missing else ""))
    check("setup", not missing, detail, f"set {', '.join(missing)} in the environment Offload runs in")


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
    _check_engines(config, check)
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
    warm = config.get("sandbox.warm")
    check("sandbox", chosen is not None, f"sandbox.backend = {backend!r}" + (f": tasks run on {chosen}" if chosen else
          ": no backend it allows works here") + (f"; the language server keeps {warm} started for its next tasks "
                                                  "(sandbox.warm)" if chosen and warm else ""),
          "fix a backend above, or set sandbox.backend to one that works")
    try:
        model = cfg.resolve_model(config)
    except cfg.ConfigError as e:
        check("model", False, str(e), "set OPENAI_API_KEY, or OPENAI_BASE_URL and OFFLOAD_MODEL_NAME")
    else:
        asyncio.run(_check_model(model, check))
    _check_setup(config, check)
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
    return 0 if all(r["ok"] for r in results if r["check"].split()[0] not in ("docker", "image", "bubblewrap")) else 1
