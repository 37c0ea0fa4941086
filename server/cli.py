"""The `offload` command line: the task manager, headless, plus the language server and set-up verbs."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path

from . import config as cfg
from .agent.evidence import checks_passed, checks_problem
from .history import History, follow
from .tasks.manager import FINAL_STATES, TaskError, TaskManager
from .terminal import Out, escape

EXIT_FAILED, EXIT_USAGE = 1, 2


def _progress_line(record: dict, event: dict) -> str | None:
    """One human line for an event worth showing while a task runs."""
    kind = event["type"]
    if kind == "state":
        return f"[{record['id']}] {event['state']}" + (f": {event['reason']}" if event.get("reason") else "")
    if kind == "tool.call":
        from .agent.loop import preview  # the agent loads the model's SDK: only a running task needs it

        attempt = f"#{event['attempt']} " if "attempt" in event else ""
        return f"[{record['id']}]   {attempt}{event['name']}: {preview(event['arguments'])}"
    if kind == "tool.result" and "exit_code" in event:
        return f"[{record['id']}]   → exit {event['exit_code']} in {event.get('duration', 0):.1f}s"
    if kind == "setup" and "text" in event:
        return f"[{record['id']}]   setup: {event['text']}"
    if kind in ("model.error", "model.wait", "error", "note"):
        return f"[{record['id']}]   {event.get('error') or event.get('text')}"
    return None


class LiveDisplay:
    """On a terminal: finished steps scroll by, the current one stays on a status line with a clock."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.started = time.monotonic()
        self.status = ""

    def update(self, record: dict, event: dict) -> None:
        line = _progress_line(record, event)
        if line is None:
            return
        waiting = f"[{record['id']}] thinking"
        if event["type"] == "tool.call":
            self.status = line
        elif event["type"] == "tool.result" and self.status:
            self._line(f"{self.status}  {line.split(']', 1)[1].strip()}")
            self.status = waiting
        else:
            self._line(line)
            final = event["type"] == "state" and event["state"] in FINAL_STATES
            self.status = "" if final else waiting if event.get("state") == "running" else self.status
        self.tick()

    def _line(self, text: str) -> None:
        self.stream.write("\r\033[K" + escape(text) + "\n")

    def tick(self) -> None:
        if self.status:
            self.stream.write(f"\r\033[K{escape(self.status[:100])}  [{time.monotonic() - self.started:.0f}s]")
        self.stream.flush()


async def _run_task(args: argparse.Namespace, kind: str) -> int:
    manager = TaskManager()
    if kind == "followup":
        previous = manager.get(args.id)
        repo, kind = Path(previous["repo"]), previous["kind"]
    else:
        repo = Path(args.repo).expanduser().resolve()
    try:
        cfg.resolve_model(cfg.load_config(repo))  # fail at once, before any sandbox, when no model is set
    except cfg.ConfigError as e:
        _error(e)
        return EXIT_USAGE

    display = LiveDisplay(sys.stderr) if sys.stderr.isatty() and not args.json else None
    out, err = Out(sys.stdout), Out(sys.stderr)

    def show(record: dict, event: dict) -> None:
        if args.json:
            print(json.dumps({"task": record["id"], **event}), flush=True)
        elif display:
            display.update(record, event)
        else:
            line = _progress_line(record, event)
            if line:
                err.line(line)
                err.flush()

    manager.listeners.append(show)
    try:
        if getattr(args, "id", None):
            record = manager.follow_up(args.id, args.prompt)
        else:
            record = manager.submit(args.prompt, repo, kind=kind, attempts=getattr(args, "attempts", None))
    except TaskError as e:
        _error(e)
        return EXIT_USAGE
    job = asyncio.ensure_future(manager.wait(record["id"]))
    while display and not job.done():
        await asyncio.wait({job}, timeout=1)
        display.tick()
    record = await job
    if record["state"] == "finished" and kind == "code" and getattr(args, "apply", False):
        try:
            merged = manager.apply(record["id"])
            err.line(f"applied {len(merged)} file(s) to {record['repo']}")
        except TaskError as e:
            _error(e)
            return EXIT_FAILED
    if args.json:
        print(json.dumps({"task": record["id"], "type": "result", "record": record}), flush=True)
    else:
        if record["message"]:
            out.line(record["message"].rstrip() + "\n")
        if kind == "code":
            out.diff(manager.diff(record["id"]))
        _print_attempts(record, err)
    if record["state"] != "finished":  # said on stderr with --json too: the exit code alone says nothing
        _error(f"task {record['id']} {record['state']}: {record['reason']}")
        return EXIT_FAILED
    if kind == "code" and not checks_passed(record["checks"]):
        _error(f"task {record['id']} finished, but its checks are not proven: {checks_problem(record['checks'])}")
        return EXIT_FAILED
    return 0


def _print_attempts(record: dict, out: Out) -> None:
    """A best-of-N task's attempts in their order, the chosen one marked."""
    for a in record.get("attempt_results") or []:
        mark = "*" if a["attempt"] == record.get("attempt") else " "
        out.line(f"{mark} attempt {a['attempt']}: {a['state']:<9} {a['passed']} passed, {a['failed']} failed, "
                 f"{a['diff_lines']} line(s) changed" + (f" — {a['reason']}" if a["state"] != "finished" else ""))


def _error(message) -> None:
    Out(sys.stderr).line(f"offload: {message}")


def cmd_run(args: argparse.Namespace) -> int:
    return asyncio.run(_run_task(args, "code"))


def cmd_ask(args: argparse.Namespace) -> int:
    return asyncio.run(_run_task(args, "ask"))


def cmd_followup(args: argparse.Namespace) -> int:
    return asyncio.run(_run_task(args, "followup"))


def cmd_tasks(args: argparse.Namespace) -> int:
    manager = TaskManager()
    manager.recover()
    tasks = manager.list(Path.cwd() if not args.all else None)
    out = Out(sys.stdout)
    width = shutil.get_terminal_size().columns if out.tty else 0
    for t in tasks:
        if args.json:
            print(json.dumps(t))
        else:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(t["created"]))
            line = f"{t['id']}  {t['state']:<9}  {when}  {t['kind']:<4}  "
            out.line(line + _one_line(t["prompt"], max(width - len(line), 20) if width else 60))
    if not tasks and not args.json:
        print("no tasks for this repository" + ("" if args.all else " (use --all for every repository)"),
              file=sys.stderr)
    return 0


def _one_line(text: str, width: int) -> str:
    """A prompt of any shape (several lines, a "Context: …" part) as one line of at most `width` characters."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_show(args: argparse.Namespace) -> int:
    manager = TaskManager()
    record = manager.get(args.id)
    if args.json:
        print(json.dumps({**record, "events": manager.events(record["id"])}))
        return 0
    out = Out(sys.stdout)
    out.line(f"task {record['id']} ({record['kind']}) — {record['state']}" + (f": {record['reason']}" if record["reason"] else ""))
    out.line(f"repository: {record['directory']}\nprompt: {record['prompt']}")
    if args.log or args.follow:
        return _show_log(manager, record, out, args)
    out.line(f"steps: {record['steps']}, tokens: {record['input_tokens']} in / {record['output_tokens']} out")
    for change in record["changes"]:
        out.line(f"  {change['status']:<8} {change['path']}")
    _print_attempts(record, out)
    if record["message"]:
        out.line("\n" + record["message"].rstrip())
    return 0


def _show_log(manager: TaskManager, record: dict, out: Out, args: argparse.Namespace) -> int:
    """The task's history; with `--follow`, shown as it grows until the task ends."""
    history = History(out, full=args.full)
    out.line()
    if not args.follow or record["state"] in FINAL_STATES:
        for event in manager.events(record["id"]):
            history.show(event)
        return 0

    def show(event: dict) -> None:
        history.show(event)
        out.flush()

    def ended(event: dict) -> bool:
        return (event["type"] == "state" and event.get("state") in FINAL_STATES and "attempt" not in event
                and manager.get(record["id"])["state"] in FINAL_STATES)

    follow(manager.store.dir(record["id"]) / "events.jsonl", show, ended, idle=manager.recover)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    Out(sys.stdout).diff(TaskManager().diff(args.id, args.attempt))
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    merged = TaskManager().apply(args.id, args.attempt)
    out = Out(sys.stdout)
    for m in merged:
        out.line(f"{m.action:9}  {m.path}" + (f"  ({m.skipped})" if m.skipped else ""))
    return 0


def cmd_branch(args: argparse.Namespace) -> int:
    name, commit = TaskManager().branch(args.id, args.name)
    Out(sys.stdout).line(f"branch {name} at {commit[:12]}: the task's change on the commit it started from; "
                         f"your working tree is untouched. Push it: git push -u origin {name}")
    return 0


def cmd_pr(args: argparse.Namespace) -> int:
    import shlex

    said, commands = TaskManager().pull_request(args.id, args.name)
    out = Out(sys.stdout)
    out.line(said)
    for argv in commands:
        out.line("  " + shlex.join(argv))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    record = TaskManager().cancel(args.id)
    print(f"cancelling {record['id']}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .lsp.server import serve

    serve(tcp=args.tcp)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import doctor

    return doctor(json_output=args.json)


def cmd_image_build(args: argparse.Namespace) -> int:
    from offload.sandbox.docker_backend import connect
    from offload.sandbox.errors import SandboxError
    from offload.sandbox.image import build_image

    config = cfg.load_config(Path.cwd())
    try:
        client = connect(config.get("sandbox.docker_host") or None)
    except SandboxError:
        if config.get("sandbox.backend") == "docker":
            raise
        client = None  # bubblewrap alone: the root filesystem its sandboxes run on
    how = build_image(client, config.get("sandbox.image"), force=args.force,
                      log=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"{config.get('sandbox.image')}: {how}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="offload", description="A local software-engineering agent: "
                                     "tasks run in isolated sandboxes and come back as reviewable diffs.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    def verb(name: str, help_text: str, func, json_flag: bool = False) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        if json_flag:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    p = verb("serve", "run the language server (stdio by default)", cmd_serve)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--stdio", action="store_true", help="talk LSP over stdin/stdout (default)")
    group.add_argument("--tcp", metavar="HOST:PORT", help="listen for one LSP client over TCP (for debugging)")
    p = verb("run", "run a Code task headless: progress on stderr, summary and diff on stdout", cmd_run, True)
    p.add_argument("prompt", help="what to do, in plain language")
    p.add_argument("--repo", default=".", help="the repository (or a directory in it); default: here")
    p.add_argument("--apply", action="store_true", help="apply the change to the checkout when the task finishes")
    p.add_argument("--attempts", type=int, metavar="N",
                   help="run N independent attempts in parallel and keep the best (default: tasks.attempts)")
    p = verb("ask", "ask a question about the code: a read-only task that answers with citations", cmd_ask, True)
    p.add_argument("prompt", metavar="question")
    p.add_argument("--repo", default=".", help="the repository (or a directory in it); default: here")
    p = verb("tasks", "list the tasks of this repository", cmd_tasks, True)
    p.add_argument("--all", action="store_true", help="tasks of every repository")
    p = verb("show", "show a task: state, changes, summary; with --log, its whole history", cmd_show, True)
    p.add_argument("id")
    p.add_argument("--log", action="store_true",
                   help="the task's history: each step, command (exit code, time, output), patch, plan and check")
    p.add_argument("-f", "--follow", action="store_true", help="follow a running task's history until it ends")
    p.add_argument("--full", action="store_true", help="whole outputs, not their head and tail")
    p = verb("diff", "print a task's diff against its base", cmd_diff)
    p.add_argument("id")
    p.add_argument("--attempt", type=int, metavar="K", help="attempt K of a best-of-N task (default: the chosen one)")
    p = verb("apply", "apply a finished task's change to the checkout (three-way merge)", cmd_apply)
    p.add_argument("id")
    p.add_argument("--attempt", type=int, metavar="K",
                   help="apply attempt K of a best-of-N task instead of the chosen one (it becomes the chosen one)")
    p = verb("branch", "put a finished task's change on a new branch of your repository (working tree untouched)",
             cmd_branch)
    p.add_argument("id")
    p.add_argument("name", nargs="?", help="the branch's name (default: offload/<prompt words>-<id>)")
    p = verb("pr", "push the task's branch and open a pull request with gh (or print the commands)", cmd_pr)
    p.add_argument("id")
    p.add_argument("name", nargs="?", help="the branch's name (default: the one `offload branch` made, or a new one)")
    p = verb("cancel", "cancel a queued or running task", cmd_cancel)
    p.add_argument("id")
    p = verb("followup", "continue an ended task with a new instruction (rejected hunks go along)", cmd_followup, True)
    p.add_argument("id")
    p.add_argument("prompt")
    p.add_argument("--apply", action="store_true", help="apply the change to the checkout when the task finishes")
    verb("doctor", "check what works here: sandbox backends, image, model endpoint, config", cmd_doctor, True)
    p = verb("image", "manage the sandbox image", lambda a: (p.print_help(), EXIT_USAGE)[1])
    image_verbs = p.add_subparsers(dest="image_verb", metavar="ACTION")
    b = image_verbs.add_parser("build", help="build the sandbox base image (offline-capable)",
                               description="build the sandbox base image (offline-capable)")
    b.add_argument("--force", action="store_true", help="rebuild even when the image is current")
    b.set_defaults(func=cmd_image_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (TaskError, cfg.ConfigError) as e:
        _error(e)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader left (`offload show ID --log | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor at exit, when Python flushes
        return EXIT_FAILED
    except Exception as e:
        from offload.sandbox.errors import SandboxError

        if isinstance(e, SandboxError):
            _error(e)
            return EXIT_FAILED
        raise


if __name__ == "__main__":
    sys.exit(main())
