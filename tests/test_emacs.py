"""A real Emacs with eglot (Debian's emacs-nox and elpa-eglot), configured as docs/editors.md says,
reviews a task from start to restart: eglot waits for each command's answer before it reads
anything else, checks the version of every edit, and keeps what the user typed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import part_missing
from tests.test_neovim import doc_block, editor_env

pytestmark = pytest.mark.docker
SCRIPT = Path(__file__).parent / "editors" / "eglot_review.el"


def emacs() -> str:
    found = shutil.which("emacs")
    if not found:
        part_missing("emacs is missing: apt-get install emacs-nox elpa-eglot (scripts/install.sh does)")
    return found


def test_review_in_emacs_eglot_from_a_code_action_to_a_restart(docker_engine, fake_model, sample_repo, tmp_path):
    result = tmp_path / "result.json"
    before = (sample_repo / "calc.py").read_text()
    env = {**editor_env(fake_model, sample_repo, result, tmp_path), "HOME": str(tmp_path),
           "OFFLOAD_CONFIG": str(doc_block("eglot", tmp_path))}
    proc = subprocess.run([emacs(), "--batch", "-l", str(SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert result.exists(), proc.stderr[-3000:]
    out = json.loads(result.read_text())
    assert out["errors"] is None, (out, proc.stderr[-3000:])
    assert [state for _, state in reversed(out["states"])][:4] == ["queued", "preparing", "running", "finished"]
    assert any("2 change(s) to review" in m for m in out["messages"]), out["messages"]
    assert out["first_review"] == [4, 8]
    assert "-    return a - b\n+    return a + b" in out["preview"]
    assert out["after_accept"] == before.replace("a - b", "a + b") + "# typed while accepting\n"
    assert out["point_after"] == out["point_before"]
    assert "+1 −0 at line 5" in out["review_after_restart"]
    assert out["buffer"] == before.replace("    return a - b\n", '    """Sum of a and b."""\n    return a + b\n') \
        + "# typed while accepting\n"
    assert (sample_repo / "calc.py").read_text() == before  # the buffer took it; saving is the user's
