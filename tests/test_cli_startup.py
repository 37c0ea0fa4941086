"""The verbs that only read or mark tasks start without the model's SDK, Docker's, the language
server's or git's: what each loads is checked in the real command's own process."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import offload_cli

HEAVY = ("openai", "docker", "paramiko", "pygls", "lsprotocol", "git", "watchfiles")
VERBS = ("serve", "run", "ask", "tasks", "show", "diff", "apply", "cancel", "followup", "branch", "pr", "doctor",
         "image")
# runs the command in this process, then says how it ended and which heavy packages it loaded
PROBE = """
import json, sys
heavy = set(sys.argv.pop(1).split(","))
from offload.server.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps([code or 0, sorted({m.split(".")[0] for m in sys.modules} & heavy)]), file=sys.stderr)
"""


def loaded(*args: str, cwd=None, code: int = 0) -> list[str]:
    """The heavy packages the command loaded; it must end with `code`."""
    proc = subprocess.run([sys.executable, "-c", PROBE, ",".join(HEAVY), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60)
    ended, packages = json.loads(proc.stderr.splitlines()[-1])
    assert ended == code, proc.stderr
    return packages


def test_help_loads_nothing_heavy():
    assert loaded("--help") == []
    for verb in VERBS:
        assert loaded(verb, "--help") == [], verb


def test_reading_and_cancelling_tasks_loads_nothing_heavy(sample_repo, tmp_path):
    # a real task: `offload run` against a model endpoint that refuses at once, so it ends failed
    proc = offload_cli("run", "Make the failing test pass", "--repo", str(sample_repo), "--json",
                       env={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "k",
                            "OFFLOAD_MODEL_NAME": "m", "OFFLOAD_SANDBOX_BACKEND": "bubblewrap",
                            "OFFLOAD_MODEL_MAX_RETRIES": "0"})
    task = json.loads(proc.stdout.splitlines()[-1])["task"]
    for args in (["tasks"], ["tasks", "--all", "--json"], ["show", task], ["show", task, "--log"],
                 ["show", task, "--json"], ["diff", task]):
        assert loaded(*args, cwd=sample_repo) == [], args
    assert loaded("cancel", task, cwd=sample_repo, code=2) == []  # it has ended: refused, with the reason
