"""Time is real: a model step of minutes and a command silent for minutes leave the sandbox working.

docker-py gives every socket a 60 s timeout by default, the runner's exec socket included; a
channel quiet that long used to die and end the task. Both backends run the same task at once
(with their own prompts: the stand-in counts its faults per prompt), each through the real
`offload run`.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import make_repo

pytestmark = pytest.mark.docker


def test_a_long_model_step_and_a_silent_command_leave_the_sandbox_working(docker_engine, fake_model, tmp_path):
    runs = {}
    for backend in ("docker", "bubblewrap"):
        repo = make_repo(tmp_path / backend)
        env = {**os.environ, "OPENAI_BASE_URL": fake_model.base_url, "OPENAI_API_KEY": "test-key",
               "OFFLOAD_MODEL_NAME": "fix-slowly-and-quietly", "OFFLOAD_MODEL_TIMEOUT": "300",
               "OFFLOAD_SANDBOX_BACKEND": backend}
        runs[backend] = subprocess.Popen(
            [sys.executable, "-m", "offload.server.cli", "run", f"Make the failing test pass ({backend})", "--repo", str(repo)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for backend, proc in runs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{backend}: {err}"
        assert "+    return a + b" in out, backend
        assert "sleep 70" in err and "exit 0 in 70" in err, backend
    # each conversation went on after the silent command, with its output
    assert {r.prompt.rsplit("(", 1)[1] for r in fake_model.requests if "quiet-done" in str(r.body)} == {
        "docker)", "bubblewrap)"}
