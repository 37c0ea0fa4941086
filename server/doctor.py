"""`offload doctor`: what works here, and for each thing that does not, the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from offload.sandbox.errors import SandboxError

from . import config as cfg


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
    bwrap = shutil.which("bwrap")
    check("bubblewrap", bwrap is not None, bwrap or "bwrap not found", "apt-get install -y bubblewrap")
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
    return 0 if all(r["ok"] for r in results if r["check"] != "bubblewrap") else 1
