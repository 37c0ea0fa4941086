"""The VS Code extension's own tests, run from this suite: its unit tests (node's test runner)
and its end-to-end run in real VS Code (code-server in headless Chromium) with the real server,
a real Docker sandbox and the model stand-in. The setup builds the VSIX as users get it, with the
server and its libraries from PyPI in `bundled/libs`. Without node/npm (or Chromium) they skip
locally and fail under CI=true."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import part_missing

EXTENSION = Path(__file__).resolve().parent.parent / "vscode-extension"


def missing(*tools: str) -> None:
    """Skip (locally) or fail (CI) when a tool the extension's tests need is not installed."""
    absent = [tool for tool in tools if shutil.which(tool) is None]
    if absent:
        part_missing(f"{', '.join(absent)} not found: run vscode-extension/scripts/setup-e2e.sh")


def run(*command: str, timeout: float, env: dict | None = None) -> None:
    result = subprocess.run(command, cwd=EXTENSION, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, (f"`{' '.join(command)}` exited {result.returncode}\n"
                                    f"{result.stdout[-8000:]}\n{result.stderr[-4000:]}")


def test_unit_tests_of_the_extension():
    missing("node", "npm")
    if not (EXTENSION / "node_modules").is_dir():
        run("npm", "ci", "--no-audit", "--no-fund", timeout=600)
    run("npm", "test", timeout=300)


@pytest.mark.docker
def test_the_extension_end_to_end_in_vscode(docker_engine):
    missing("node", "npm")
    if not os.environ.get("CI"):
        missing("chromium")  # locally, installing system packages is the developer's call
    run("scripts/setup-e2e.sh", timeout=1200)
    # the interpreter the tests name for the server (which runs the VSIX's bundled Offload on it)
    # and for the model stand-in
    run("npm", "run", "test:e2e", timeout=600, env={"OFFLOAD_PYTHON": sys.executable})
