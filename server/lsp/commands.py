"""The `offload.*` commands (`workspace/executeCommand`): each takes one JSON object and answers
at once. A bad argument is InvalidParams, a request the task's state refuses is RequestFailed,
both naming the command. An accepted change is sent to the editor after the answer (`edits`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from urllib.parse import unquote, urlparse

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.uris import from_fs_path

from .. import config as cfg
from ..tasks.manager import TaskError
from ..tasks.review import follow
from . import edits, review
from .server import OffloadServer, server, summary


class CommandError(Exception):
    """A command's argument is malformed or names something unknown; sent back as the error."""


def _path_from_uri(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise CommandError(f"only file: URIs are supported, not {uri!r}")
    return Path(unquote(parsed.path))


def _args(args: tuple, *required: str) -> dict:
    """The single JSON object a command takes, with its required string fields present."""
    if len(args) != 1 or not isinstance(args[0], dict):
        raise CommandError("the command takes exactly one JSON object as its argument")
    arg = args[0]
    for key in required:
        if not isinstance(arg.get(key), str) or not arg[key].strip():
            raise CommandError(f"the argument needs a non-empty string {key!r}")
    return arg


def _command(name: str):
    """Register a command whose bad input becomes a clear JSON-RPC error, never a crash: a malformed
    argument is InvalidParams, a request the task's state or the config refuses is RequestFailed."""

    def register(func):
        @server.command(name)
        @functools.wraps(func)
        async def handler(ls: OffloadServer, *args):
            try:
                return await func(ls, *args)
            except CommandError as e:
                raise JsonRpcException(f"{name}: {e}", int(types.ErrorCodes.InvalidParams)) from None
            except (TaskError, cfg.ConfigError) as e:
                raise JsonRpcException(f"{name}: {e}", int(types.LSPErrorCodes.RequestFailed)) from None

        return handler

    return register




def _task_directory(ls: OffloadServer, arg: dict) -> Path:
    if isinstance(arg.get("uri"), str):
        path = _path_from_uri(arg["uri"])
        return path if path.is_dir() else path.parent
    if ls.workspace.root_path:
        return Path(ls.workspace.root_path)
    raise CommandError("no 'uri' given and the editor opened no workspace folder")


def _prompt_with_context(ls: OffloadServer, arg: dict) -> str:
    prompt = arg["prompt"]
    if isinstance(arg.get("uri"), str):
        path = _path_from_uri(arg["uri"])
        rng = arg.get("range")
        if isinstance(rng, dict) and isinstance(rng.get("start"), dict) and isinstance(rng.get("end"), dict):
            start, end = rng["start"].get("line", 0) + 1, rng["end"].get("line", 0) + 1
            prompt += f"\n\nContext: {path.name} lines {start}-{end}"
        else:
            prompt += f"\n\nContext: {path.name}"
    return prompt


async def _start(ls: OffloadServer, args: tuple, kind: str) -> dict:
    arg = _args(args, "prompt")
    record = ls.tasks().submit(_prompt_with_context(ls, arg), _task_directory(ls, arg), kind=kind,
                               attempts=arg.get("attempts") if kind == "code" else None)
    ls.spawn(ls.start_progress(record))
    return {"taskId": record["id"]}


@_command("offload.code")
async def code(ls: OffloadServer, *args):
    return await _start(ls, args, "code")


@_command("offload.ask")
async def ask(ls: OffloadServer, *args):
    return await _start(ls, args, "ask")


@_command("offload.cancel")
async def cancel(ls: OffloadServer, *args):
    record = ls.tasks().cancel(_args(args, "taskId")["taskId"])
    return {"taskId": record["id"], "state": "cancelling"}


@_command("offload.followUp")
async def follow_up(ls: OffloadServer, *args):
    arg = _args(args, "taskId", "prompt")
    record = ls.tasks().follow_up(arg["taskId"], arg["prompt"])
    ls.publish_review(record["id"])  # its old hunks are withdrawn until the follow-up ends
    ls.spawn(ls.start_progress(record))
    return {"taskId": record["id"]}


@_command("offload.listTasks")
async def list_tasks(ls: OffloadServer, *args):
    if args and not (len(args) == 1 and isinstance(args[0], dict)):
        raise CommandError("the command takes one JSON object ({} for all tasks)")
    return {"tasks": [summary(t) for t in ls.records()]}


@_command("offload.showTask")
async def show_task(ls: OffloadServer, *args):
    manager = ls.tasks()
    arg = _args(args, "taskId")
    record = ls.record(arg["taskId"])
    if arg.get("attempt") not in (None, record.get("attempt")):  # another attempt, to look at
        attempt = manager.attempt(record["id"], arg["attempt"])
        return {**summary(record), "attempt": attempt["attempt"], "message": attempt["message"],
                "checks": attempt["checks"], "diff": manager.diff(record["id"], attempt["attempt"]), "hunks": [],
                "events": [e for e in manager.events(record["id"]) if e.get("attempt") in (None, attempt["attempt"])]}
    hunks = [{**h.as_dict(), "status": status} for h, status, _ in manager.hunks(record["id"])]
    return {**summary(record), "message": record["message"], "checks": record["checks"],
            "diff": manager.store.diff(record["id"]), "hunks": hunks, "events": manager.store.events(record["id"])}


@_command("offload.apply")
async def apply(ls: OffloadServer, *args):
    manager = ls.tasks()
    arg = _args(args, "taskId")
    record = manager.get(arg["taskId"])
    root = Path(record["repo"])
    if arg.get("attempt") not in (None, record.get("attempt")):
        manager.choose_attempt(record["id"], arg["attempt"])
        ls.publish_review(record["id"])  # the chosen attempt's hunks replace the old ones

    def compute(error=TaskError):
        merged = manager.merge(record["id"], lambda path: ls.current_bytes(root, path))
        if conflicts := [m.clash or m.path for m in merged if m.conflict]:
            raise error("your files changed where the task changed them; nothing was applied. "
                        "Conflicts: " + ", ".join(conflicts))
        return merged

    merged = compute(CommandError)
    _send(ls, record["id"], root, merged, compute, None)
    return {"taskId": record["id"], "files": [m.path for m in merged if not m.unchanged]}


def _send(ls: OffloadServer, task_id: str, root: Path, merged, compute, hunk_ids: list[str] | None) -> None:
    """Write what no text edit can carry (binary files, symlinks, exec bits, files the editor can't
    create), then, once the command is answered, send the rest as an edit."""
    disk, text = [], []
    for m in merged:
        if not m.skipped:
            (text if edits.carried(ls, root, m) else disk).append(m)
    if disk:
        ls.tasks().write(task_id, disk)

    def again():
        return [m for m in compute() if not m.skipped and edits.carried(ls, root, m)]

    ls.after_answer(edits.send_edit(ls, task_id, root, again, text, edits.opened(ls, root, text), hunk_ids))


def _hunk_args(args: tuple) -> tuple[str, list[str]]:
    """`{taskId, hunkId}` or `{taskId, hunkIds: [...]}`: one hunk, or several decided as one."""
    arg = _args(args, "taskId")
    ids = arg.get("hunkIds", [arg.get("hunkId")])
    if not (isinstance(ids, list) and ids and all(isinstance(i, str) and i for i in ids)):
        raise CommandError("the argument needs a string 'hunkId' or a non-empty list of strings 'hunkIds'")
    return arg["taskId"], ids


@_command("offload.acceptHunk")
async def accept_hunk(ls: OffloadServer, *args):
    task_id, hunk_ids = _hunk_args(args)
    manager = ls.tasks()
    record = manager.get(task_id)
    root = Path(record["repo"])

    def compute():
        return manager.merge_hunks(record["id"], hunk_ids, lambda path: ls.current_bytes(root, path))

    merged = compute()
    _send(ls, record["id"], root, merged, compute, hunk_ids)
    return {"taskId": record["id"], "hunkIds": hunk_ids, "paths": [m.path for m in merged]}


@_command("offload.previewHunk")
async def preview_hunk(ls: OffloadServer, *args):
    """A hunk's whole diff, opened as a file where the editor opens documents, and answered."""
    task_id, hunk_ids = _hunk_args(args)
    record = ls.record(task_id)
    known = {h.id: h for h, _, _ in ls.tasks().hunks(record["id"])}
    if missing := [i for i in hunk_ids if i not in known]:
        raise TaskError(f"task {record['id']} has no hunk {missing[0]!r}")
    diff = "\n".join(f"--- {h.path}\n+++ {h.path}\n@@ -{h.base_start + 1},{h.removed} @@\n"
                     + "\n".join(review.diff_lines(h)) for h in (known[i] for i in hunk_ids)) + "\n"
    shown = ls.tasks().store.dir(record["id"]) / "preview.diff"
    shown.write_text(diff, encoding="utf-8")
    if edits.supports(ls, "window", "show_document", "support"):
        ls.after_answer(ls.window_show_document_async(types.ShowDocumentParams(uri=from_fs_path(str(shown)),
                                                                               take_focus=True)))
    return {"taskId": record["id"], "hunkIds": hunk_ids, "diff": diff}


@_command("offload.openCitation")
async def open_citation(ls: OffloadServer, *args):
    """`{taskId, path, line, endLine?}`: a task's citation (1-based lines of its result) as the lines
    they mean in the file as it is now, which the user may have edited since; opened where the
    editor opens documents, and answered as `{uri, range}`."""
    arg = _args(args, "taskId", "path")
    line, end = arg.get("line"), arg.get("endLine", arg.get("line"))
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in (line, end)):
        raise CommandError("the argument needs a 1-based whole number 'line' (and 'endLine')")
    record = ls.record(arg["taskId"])
    root = Path(record["repo"])
    changed = {c.path: c for _, _, c in ls.tasks().hunks(record["id"])} if record["kind"] == "code" else {}
    now = ls.current_bytes(root, arg["path"])
    result = changed[arg["path"]].result if arg["path"] in changed else now
    start, stop = follow(line - 1, result, now), follow(end - 1, result, now)
    where = types.Range(types.Position(start, 0), types.Position(max(stop, start) + 1, 0))  # the last line whole
    uri = ls.uri(root, arg["path"])
    if edits.supports(ls, "window", "show_document", "support"):
        ls.after_answer(ls.window_show_document_async(types.ShowDocumentParams(uri=uri, take_focus=True,
                                                                               selection=where)))
    return {"uri": uri, "range": ls.protocol._converter.unstructure(where)}


@_command("offload.rejectHunk")
async def reject_hunk(ls: OffloadServer, *args):
    task_id, hunk_ids = _hunk_args(args)
    manager = ls.tasks()
    record = manager.get(task_id)
    manager.reject(record["id"], hunk_ids)
    ls.publish_review(record["id"])
    return {"taskId": record["id"], "hunkIds": hunk_ids, "decision": "rejected"}


@_command("offload.discard")
async def discard(ls: OffloadServer, *args):
    record = ls.tasks().discard(_args(args, "taskId")["taskId"])
    ls.publish_review(record["id"])
    return {"taskId": record["id"], "discarded": True}


