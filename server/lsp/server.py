"""The language server: editor commands and code actions in, progress and edits out.

It only translates between LSP and the task manager: every command answers at once with
what the manager says, tasks run in the background, and `workspace/applyEdit` is sent
from a background task because a client may hold it open until the user decides.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path

from .. import config as cfg
from ..agent.loop import preview
from ..tasks.manager import TaskError, TaskManager
from ..tasks.merge import Merged

log = logging.getLogger(__name__)


class CommandError(Exception):
    """A command's argument is malformed or names something unknown; sent back as the error."""


class OffloadServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("offload", "0.1.0")
        self.manager: TaskManager | None = None
        self.progress_tokens: dict[str, str] = {}
        self.background: set[asyncio.Task] = set()

    def tasks(self) -> TaskManager:
        if self.manager is None:
            self.manager = TaskManager()
            self.manager.listeners.append(self.on_task_event)
        return self.manager

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # ---- tasks → editor ------------------------------------------------------------------
    def on_task_event(self, record: dict, event: dict) -> None:
        self.protocol.notify("offload/taskEvent", {"taskId": record["id"], "event": event})
        if event["type"] == "state":
            self.protocol.notify("offload/taskUpdated", _summary(record))
        token = self.progress_tokens.get(record["id"])
        if token is None:
            return
        message = None
        if event["type"] == "state":
            message = event["state"] + (f": {event['reason']}" if event.get("reason") else "")
        elif event["type"] == "tool.call":
            message = f"{event['name']}: {preview(event['arguments'], 60)}"
        if event["type"] == "state" and event["state"] in ("finished", "failed", "cancelled"):
            self.progress_tokens.pop(record["id"], None)
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))
        elif message:
            self.work_done_progress.report(token, types.WorkDoneProgressReport(message=message))

    async def start_progress(self, record: dict) -> None:
        token = f"offload-{record['id']}"
        if _supports(self, "window", "work_done_progress"):
            try:
                await self.work_done_progress.create_async(token)
            except Exception as e:  # the client refused: tasks run on without progress
                log.warning("progress refused: %s", e)
                return
        self.progress_tokens[record["id"]] = token
        self.work_done_progress.begin(token, types.WorkDoneProgressBegin(
            title=f"Offload: {record['prompt'][:50]}", message=record["state"], cancellable=True))

    # ---- applying ------------------------------------------------------------------------
    def workspace_edit(self, root: Path, merged: list[Merged]) -> types.WorkspaceEdit:
        """One edit for the whole change, in the richest form the client declares."""
        versioned = _supports(self, "workspace", "workspace_edit", "document_changes")
        ops = _supports(self, "workspace", "workspace_edit", "resource_operations") or []
        document_changes: list[Any] = []
        changes: dict[str, list[types.TextEdit]] = {}
        for m in merged:
            if m.unchanged:
                continue
            uri = from_fs_path(str(root / m.path))
            doc = self.workspace.get_text_document(uri)
            exists = uri in self.workspace.text_documents or (root / m.path).exists()
            if m.content is None:
                if versioned and types.ResourceOperationKind.Delete in ops:
                    document_changes.append(types.DeleteFile(uri=uri))
                    continue
                raise TaskError(f"this editor cannot delete files through an edit; run `offload apply` for {m.path}")
            text = m.content.decode("utf-8", errors="replace")
            if not exists:
                if versioned and types.ResourceOperationKind.Create in ops:
                    document_changes.append(types.CreateFile(uri=uri))
                    edit = types.TextEdit(range=_start_range(), new_text=text)
                    document_changes.append(types.TextDocumentEdit(
                        text_document=types.OptionalVersionedTextDocumentIdentifier(uri=uri, version=None),
                        edits=[edit]))
                    continue
                raise TaskError(f"this editor cannot create files through an edit; run `offload apply` for {m.path}")
            edit = types.TextEdit(range=_whole_range(doc.lines, self.workspace.position_codec), new_text=text)
            if versioned:
                version = doc.version if uri in self.workspace.text_documents else None
                document_changes.append(types.TextDocumentEdit(
                    text_document=types.OptionalVersionedTextDocumentIdentifier(uri=uri, version=version),
                    edits=[edit]))
            else:
                changes[uri] = [edit]
        if versioned:
            return types.WorkspaceEdit(document_changes=document_changes)
        return types.WorkspaceEdit(changes=changes)

    async def send_edit(self, task_id: str, edit: types.WorkspaceEdit) -> None:
        try:
            response = await self.workspace_apply_edit_async(
                types.ApplyWorkspaceEditParams(edit=edit, label=f"Offload task {task_id}"))
            applied = bool(response and response.applied)
            self.tasks()._emit(self.tasks().get(task_id), "applied" if applied else "apply.rejected",
                               {"reason": getattr(response, "failure_reason", None)})
        except Exception as e:
            self.window_show_message(types.ShowMessageParams(type=types.MessageType.Error, message=f"Offload: apply failed: {e}"))


def _supports(ls: LanguageServer, *path: str):
    node: Any = ls.client_capabilities
    for name in path:
        node = getattr(node, name, None)
        if node is None:
            return None
    return node


def _start_range() -> types.Range:
    return types.Range(types.Position(0, 0), types.Position(0, 0))


def _whole_range(lines: list[str], codec) -> types.Range:
    if not lines:
        return _start_range()
    last = lines[-1]
    if last.endswith("\n"):
        end = types.Position(len(lines), 0)
    else:
        end = types.Position(len(lines) - 1, codec.client_num_units(last))
    return types.Range(types.Position(0, 0), end)


def _summary(record: dict) -> dict:
    keys = ("id", "kind", "state", "reason", "prompt", "repo", "changes", "steps", "input_tokens", "output_tokens")
    return {("taskId" if k == "id" else k): record.get(k) for k in keys}


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
    """Register a command whose bad input becomes a clear JSON-RPC error, never a crash."""

    def register(func):
        @server.command(name)
        @functools.wraps(func)
        async def handler(ls: OffloadServer, *args):
            try:
                return await func(ls, *args)
            except (CommandError, TaskError, cfg.ConfigError) as e:
                raise ValueError(f"{name}: {e}") from None

        return handler

    return register


server = OffloadServer()


@server.feature(types.INITIALIZE)
def initialize(ls: OffloadServer, params: types.InitializeParams) -> None:
    """Editor settings (`initializationOptions`, optionally under "settings") are the top config layer."""
    options = params.initialization_options
    if isinstance(options, dict) and isinstance(options.get("settings"), dict):
        options = options["settings"]
    ls.manager = TaskManager(overrides=options if isinstance(options, dict) else None)
    ls.manager.listeners.append(ls.on_task_event)


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
    record = ls.tasks().submit(_prompt_with_context(ls, arg), _task_directory(ls, arg), kind=kind)
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


@_command("offload.listTasks")
async def list_tasks(ls: OffloadServer, *args):
    if args and not (len(args) == 1 and isinstance(args[0], dict)):
        raise CommandError("the command takes one JSON object ({} for all tasks)")
    return {"tasks": [_summary(t) for t in ls.tasks().list()]}


@_command("offload.showTask")
async def show_task(ls: OffloadServer, *args):
    manager = ls.tasks()
    record = manager.get(_args(args, "taskId")["taskId"])
    return {**_summary(record), "message": record["message"], "checks": record["checks"],
            "diff": manager.diff(record["id"]), "events": manager.events(record["id"])}


@_command("offload.apply")
async def apply(ls: OffloadServer, *args):
    manager = ls.tasks()
    record = manager.get(_args(args, "taskId")["taskId"])

    def read_current(path: str) -> bytes | None:
        uri = from_fs_path(str(Path(record["repo"]) / path))
        if uri in ls.workspace.text_documents:
            return ls.workspace.get_text_document(uri).source.encode()
        file = Path(record["repo"]) / path
        return file.read_bytes() if file.is_file() else None

    merged = manager.merge(record["id"], read_current)
    conflicts = [m.path for m in merged if m.conflict]
    if conflicts:
        raise CommandError("your files changed where the task changed them; nothing was applied. "
                           "Conflicts: " + ", ".join(conflicts))
    edit = ls.workspace_edit(Path(record["repo"]), merged)
    ls.spawn(ls.send_edit(record["id"], edit))
    return {"taskId": record["id"], "files": [m.path for m in merged if not m.unchanged]}


@server.feature(types.TEXT_DOCUMENT_CODE_ACTION,
                types.CodeActionOptions(code_action_kinds=[types.CodeActionKind.QuickFix]))
def code_actions(ls: OffloadServer, params: types.CodeActionParams) -> list[types.CodeAction]:
    actions = []
    for diagnostic in params.context.diagnostics:
        if diagnostic.source == "offload":
            continue
        line = diagnostic.range.start.line + 1
        prompt = f"Fix this problem reported at line {line}: {diagnostic.message}"
        actions.append(types.CodeAction(
            title="Offload: fix this", kind=types.CodeActionKind.QuickFix, diagnostics=[diagnostic],
            command=types.Command(title="Offload: fix this", command="offload.code", arguments=[
                {"prompt": prompt, "uri": params.text_document.uri,
                 "range": ls.protocol._converter.unstructure(diagnostic.range)}])))
    return actions


def serve(tcp: str | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    if tcp:
        host, _, port = tcp.rpartition(":")
        server.start_tcp(host or "127.0.0.1", int(port))
    else:
        server.start_io()
