"""Layered configuration: defaults → user file → repository file → OFFLOAD_* → editor.

Every key is `section.name`; its default fixes its type, so values from the environment
and from editors are coerced and a wrong type is a clear error rather than a surprise.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from offload.sandbox.errors import SandboxError
from offload.sandbox.image import DEFAULT_IMAGE, packages

# Where Linux distributions keep the system's CA bundle (Debian/Ubuntu, Fedora/RHEL, openSUSE, Alpine/Arch).
HOST_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/ca-bundle.pem",
                   "/etc/ssl/cert.pem")


def host_ca_bundle() -> str:
    """This host's CA bundle, which sandboxes trust by default (a TLS-intercepting proxy's CA included)."""
    return next((path for path in HOST_CA_BUNDLES if os.path.isfile(path)), "")


DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {
        "name": "",
        "base_url": "",
        "api": "chat",
        "api_key_env": "OPENAI_API_KEY",
        "stream": True,
        "timeout": 120.0,  # seconds the server may stay silent before it is reported as not answering
        "max_retries": 4,
        "freeform_patch": True,
        "api_version": "",  # Azure OpenAI deployment URLs: the api-version query, when the URL has none
    },
    "sandbox": {
        "backend": "auto",
        "image": DEFAULT_IMAGE,
        "env": {},  # variables every command in a sandbox gets, setup included
        "ca_bundle": host_ca_bundle(),  # a PEM file sandboxes trust (SSL_CERT_FILE and the like); "": none
        "setup": "",  # shell text, or a script file of the repository, run once per environment
        "setup_secrets": [],  # names of host environment variables only the setup script gets
        "setup_timeout": 30.0,  # minutes
        "network": "off",
        "memory": "2g",
        "cpus": 2.0,
        "pids": 512,
        "disk": "4g",
        "docker_host": "",
        "snapshot_cache": "20g",
        "docker_hosts": [],  # several engines: unix:///…, ssh://user@host, tcp://host:2376 (TLS)
        "warm": 0,  # started sandboxes kept ready per engine and image by the language server; 0: none
    },
    "tasks": {"concurrency": 4, "attempts": 1},
    "budget": {"max_steps": 60, "max_tokens": 2_000_000, "max_cost_usd": 5.0, "max_minutes": 60.0},
}

# Where a local OpenAI-compatible server usually listens: Ollama, vLLM, llama.cpp, LM Studio.
LOCAL_PORTS = (11434, 8000, 8080, 1234)
DEFAULT_OPENAI_MODEL = "gpt-5-codex"


class ConfigError(Exception):
    """A setting is wrong or missing; the message says what to set."""


CHOICES = {"sandbox.network": ("off", "setup", "on")}


def _check(key: str, value: Any) -> None:
    """Values a key's type lets through but the key does not take."""
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, CHOICES[key]))}, got {value!r}")
    if key == "sandbox.setup_secrets":
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ConfigError(f"{key}: {name!r} is not an environment variable name")
    if key == "sandbox.warm" and (type(value) is not int or value < 0):
        raise ConfigError(f"{key} must be a number of sandboxes, 0 or more, got {value!r}")
    if key == "sandbox.image":
        try:
            packages(value)  # a flavour of the base image must be one there is
        except SandboxError as e:
            raise ConfigError(f"{key}: {e}") from None
    if key == "sandbox.env":
        for name, item in value.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or not isinstance(item, str) or "\0" in item:
                raise ConfigError(f"{key}: {name} = {item!r} is not a variable name with a string value")
    if key == "sandbox.ca_bundle" and value and not os.path.isfile(os.path.expanduser(value)):
        raise ConfigError(f"{key}: {value!r} is not a file; name a PEM bundle of CA certificates, or \"\" for none")
    if key == "sandbox.setup_timeout" and not value > 0:
        raise ConfigError(f"{key} must be a number of minutes above 0, got {value!r}")


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "offload"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "offload"


def _config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"))


def _coerce(key: str, value: Any, default: Any) -> Any:
    try:
        if isinstance(default, dict):
            if isinstance(value, str):  # from the environment: a JSON object, or NAME=value,NAME=value
                value = json.loads(value) if value.lstrip().startswith("{") else \
                    dict(item.strip().split("=", 1) for item in value.split(",") if item.strip())
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a table of variables (NAME = \"value\"), got {value!r}")
            return value
        if isinstance(default, list):
            if isinstance(value, str):  # from the environment: comma-separated
                value = [item.strip() for item in value.split(",") if item.strip()]
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ConfigError(f"{key} must be a list of strings (or one comma-separated string), got {value!r}")
            return value
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(default, (int, float)) and not isinstance(value, (int, float)):
            return type(default)(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, str) and not isinstance(value, str):
            raise ValueError(value)
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a {type(default).__name__}, got {value!r}") from None


class Config:
    """The merged settings, with where each one came from."""

    def __init__(self, values: dict[str, dict[str, Any]], sources: dict[str, str]) -> None:
        self.values = values
        self.sources = sources

    def get(self, key: str) -> Any:
        section, name = key.split(".", 1)
        return self.values[section][name]

    def set(self, key: str, value: Any, source: str) -> None:
        section, name = key.split(".", 1)
        if section not in DEFAULTS or name not in DEFAULTS[section]:
            raise ConfigError(f"unknown setting {key!r} (from {source})")
        value = _coerce(key, value, DEFAULTS[section][name])
        try:
            _check(key, value)
        except ConfigError as e:
            raise ConfigError(f"{e} (from {source})") from None
        self.values[section][name] = value
        self.sources[key] = source

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {section: dict(values) for section, values in self.values.items()}


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from e


def _apply(config: Config, data: dict, source: str) -> None:
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        for name, value in values.items():
            config.set(f"{section}.{name}", value, source)


def load_config(repo: Path | None = None, overrides: dict | None = None, env: dict | None = None) -> Config:
    """Merge every layer; `overrides` are the editor's settings, as nested tables."""
    env = os.environ if env is None else env
    config = Config({s: dict(v) for s, v in DEFAULTS.items()}, {})
    _apply(config, _read_toml(_config_home() / "offload" / "config.toml"), "user config")
    if repo is not None:
        repo_file = Path(repo) / ".offload" / "config.toml"
        if repo_file.exists():
            _apply(config, _read_toml(repo_file), str(repo_file))
        else:
            pyproject = _read_toml(Path(repo) / "pyproject.toml")
            _apply(config, pyproject.get("tool", {}).get("offload", {}), "pyproject.toml [tool.offload]")
    for section, values in DEFAULTS.items():
        for name in values:
            var = f"OFFLOAD_{section}_{name}".upper()
            if var in env:
                config.set(f"{section}.{name}", env[var], var)
    _apply(config, overrides or {}, "editor settings")
    model_keys = {"OPENAI_API_KEY", config.get("model.api_key_env")}
    if leaked := model_keys.intersection(config.get("sandbox.setup_secrets")):
        raise ConfigError(f"sandbox.setup_secrets names {', '.join(sorted(leaked))}: the model's API key never enters "
                          f"a sandbox (from {config.sources.get('sandbox.setup_secrets')})")
    return config


def fetch_json(url: str, timeout: float, body: dict | None = None):
    """The JSON a URL answers (POSTing `body` when given), or None when nothing sensible answers."""
    import urllib.error  # HTTP loads only when a model is looked for: the CLI's queries start faster
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout) as response:
            return json.load(response)
    except (OSError, ValueError, urllib.error.URLError):
        return None


def _probe(base_url: str, timeout: float = 0.4) -> list[str] | None:
    """The model ids an OpenAI-compatible server lists, or None when nothing answers."""
    data = fetch_json(f"{base_url}/models", timeout)
    if not isinstance(data, dict):
        return None
    return [m["id"] for m in data.get("data") or [] if isinstance(m, dict) and "id" in m]


# Names of models that cannot chat: embeddings, rerankers, speech.
NOT_CHAT = re.compile(r"embed|rerank|whisper|tts|bge-|\be5-|clip", re.I)


def pick_model(base_url: str, models: list[str]) -> str:
    """The first listed model that can chat and call tools, or "" when there is none.

    Servers list models in no useful order (Ollama newest first, so an embedding model just
    pulled comes first): names that cannot chat are passed over, and where the server is
    Ollama, which says what each model can do (/api/show), only models with "tools" count.
    """
    chat = [m for m in models if not NOT_CHAT.search(m)]
    root = base_url.rstrip("/").removesuffix("/v1")
    capable = []
    for name in chat:
        shown = fetch_json(f"{root}/api/show", 2.0, {"model": name})
        if not isinstance(shown, dict) or not isinstance(shown.get("capabilities"), list):
            return chat[0] if chat else ""  # not Ollama: the names are all there is to go by
        if "tools" in shown["capabilities"]:
            capable.append(name)
    return capable[0] if capable else ""


def resolve_model(config: Config, env: dict | None = None) -> dict[str, Any]:
    """The endpoint, key, model and client settings a task uses (ModelClient's arguments),
    finding a local server when none is set.

    Raises ConfigError saying exactly what to set when there is no model to talk to.
    """
    env = os.environ if env is None else env
    api_key = env.get(config.get("model.api_key_env"), "")
    base_url = config.get("model.base_url") or env.get("OPENAI_BASE_URL", "")
    name = config.get("model.name")
    listed: list[str] = []
    if not base_url and not api_key:
        for port in LOCAL_PORTS:
            models = _probe(f"http://127.0.0.1:{port}/v1")
            if models is not None:
                base_url, listed = f"http://127.0.0.1:{port}/v1", models
                break
    if not base_url and not api_key:
        raise ConfigError(
            "No model is configured. Either set OPENAI_API_KEY (and optionally OFFLOAD_MODEL_NAME, "
            f"default {DEFAULT_OPENAI_MODEL}) to use OpenAI, or point Offload at any OpenAI-compatible "
            "server with OPENAI_BASE_URL (or model.base_url in ~/.config/offload/config.toml) and "
            "OFFLOAD_MODEL_NAME, e.g. OPENAI_BASE_URL=http://127.0.0.1:11434/v1 OFFLOAD_MODEL_NAME=qwen2.5-coder "
            "for Ollama. No local server answered on ports " + ", ".join(map(str, LOCAL_PORTS)) + "."
        )
    if not name and base_url:
        listed = listed or _probe(base_url.rstrip("/"), timeout=2.0) or []
        name = pick_model(base_url, listed)
        if listed and not name:
            raise ConfigError(f"the server at {base_url} lists no model that can chat and call tools (it lists: "
                              f"{', '.join(listed[:10])}); set OFFLOAD_MODEL_NAME (model.name) to one, or get one, "
                              "e.g. for Ollama: ollama pull qwen2.5-coder:7b")
    return {"base_url": base_url.rstrip("/"), "api_key": api_key or "not-needed", "name": name or DEFAULT_OPENAI_MODEL,
            **{key: config.get(f"model.{key}") for key in ("api", "stream", "timeout", "max_retries",
                                                           "freeform_patch", "api_version")}}
