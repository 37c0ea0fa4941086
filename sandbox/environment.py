"""What every command in a sandbox gets: Offload's fixed environment, the image's own, the CA bundle's
variables and `sandbox.env`, in that order (later wins). Nothing of the host's environment."""

from __future__ import annotations

# Where the CA bundle (`sandbox.ca_bundle`) is bound, read-only, in every sandbox.
CA_PATH = "/run/offload/ca-certificates.crt"
# The variables through which OpenSSL, Python (ssl, requests, pip), Node.js, git and curl find it.
CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO",
                "CURL_CA_BUNDLE")
# The image's variables that would break the sandbox: its user's home is Offload's.
_IMAGE_KEEPS_OUT = ("HOME",)


def image_env(entries: list[str] | None) -> dict[str, str]:
    """An image's `ENV` (Docker's NAME=value list), less what Offload must set itself."""
    pairs = (entry.partition("=") for entry in entries or [])
    return {name: value for name, _, value in pairs if name and name not in _IMAGE_KEEPS_OUT}


def command_env(base: dict[str, str], image: dict[str, str], ca_bundle: str, extra: dict[str, str]) -> dict[str, str]:
    """The environment of a sandbox's commands."""
    ca = {name: CA_PATH for name in CA_VARIABLES} if ca_bundle else {}
    return {**base, **image, **ca, **extra}
