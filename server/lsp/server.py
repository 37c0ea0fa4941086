"""The language server: editor commands and code actions in, progress and edits out.

It only translates between LSP and the task manager: every command answers at once with
what the manager says, tasks run in the background, and `workspace/applyEdit` is sent
from a background task because a client may hold it open until the user decides.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import watchfiles
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.io_ import StdoutWriter
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path

from .. import config as cfg
from ..agent.loop import preview
from ..tasks.manager import TaskError, TaskManager
from ..tasks.checkout import Checkout, CheckoutError
from ..tasks.merge import Merged
from ..tasks.review import locate
from . import wire

log = logging.getLogger(__name__)
SWEEP_SECONDS = 300.0


class CommandError(Exception):
    """A command's argument is malformed or names something unknown; sent back as the error."""


class OffloadServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("offload", "0.1.0", protocol_cls=wire.Protocol)
        self.manager: TaskManager | None = None
        self.progress_tokens: dict[str, str] = {}
        self.published: dict[str, set[str]] = {}  # uri → the tasks with review diagnostics there
        self.background: set[asyncio.Task] = set()
        # what listings, review diagnostics and lenses are computed from: the records as the task
        # events carry them (or as read again after a change on disk), the hunks worked out once
        self._records: dict[str, dict] | None = None
        self._hunks: dict[str, list] = {}
        self._lens_refresh: asyncio.Task | None = None
        self._lens_refresh_again = False

    def start_io(self, stdin=None, stdout=None) -> None:
        """Serve over stdio with our reader, which answers malformed messages (see `wire`)."""
        self.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))

        async def serve() -> None:
            await wire.serve(self._stop_event, await wire.reader_for(stdin or sys.stdin.buffer, self.thread_pool),
                             self.protocol)

        self._serve(serve())

    def start_tcp(self, host: str, port: int) -> None:
        """Serve the first client to connect to host:port (for debugging), with the same reader."""

        async def serve() -> None:
            connected: asyncio.Future = asyncio.get_running_loop().create_future()
            listening = await asyncio.start_server(
                lambda reader, writer: connected.done() or connected.set_result((reader, writer)), host, port)
            log.warning("serving LSP on %s", ", ".join(str(s.getsockname()) for s in listening.sockets))
            async with listening:
                reader, writer = await connected
            self.protocol.set_writer(writer)
            try:
                await wire.serve(self._stop_event, reader, self.protocol)
            finally:
                writer.close()

        self._serve(serve())

    def _serve(self, connection) -> None:
        self._stop_event = threading.Event()
        try:
            asyncio.run(connection)
        except (BrokenPipeError, ConnectionResetError):
            log.error("the client closed the connection")
        finally:
            if self.manager is not None:
                self.manager.close()  # the worker and its warm sandboxes
            self.shutdown()

    def tasks(self) -> TaskManager:
        if self.manager is None:
            self.manager = TaskManager(worker=True)
            self.manager.listeners.append(self.task_listener())
        return self.manager

    def task_listener(self):
        """Task events arrive on the thread reading the task worker's; the editor is served from this loop."""
        loop = asyncio.get_running_loop()

        def listener(record: dict, event: dict) -> None:
            loop.call_soon_threadsafe(self.on_task_event, dict(record), event)

        return listener

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # ---- tasks → editor ------------------------------------------------------------------
    def on_task_event(self, record: dict, event: dict) -> None:
        self.forget(record["id"], record, hunks=event["type"] not in _AGENT_EVENTS)
        self.protocol.notify("offload/taskEvent", {"taskId": record["id"], "event": event})
        if event["type"] not in ("state", "tool.call", "model.wait", "attempt.chosen"):
            return
        if event["type"] == "attempt.chosen":
            return self.protocol.notify("offload/taskUpdated", _summary(record))
        if event["type"] == "state":
            self.protocol.notify("offload/taskUpdated", _summary(record))
            if event["state"] in ("finished", "failed") and (record.get("changes") or record.get("failures")):
                self.publish_review(record["id"])
        self.report_progress(record, event)

    def report_progress(self, record: dict, event: dict) -> None:
        token = self.progress_tokens.get(record["id"])
        if token is None:
            return
        if event["type"] == "tool.call":
            message = (f"attempt {event['attempt']}: " if "attempt" in event else "") + \
                f"{event['name']}: {preview(event['arguments'], 60)}"
        elif event["type"] == "model.wait":
            message = event["text"]
        else:
            message = event["state"] + (f": {event['reason']}" if event.get("reason") else "")
        if event["type"] == "state" and event["state"] in ("finished", "failed", "cancelled"):
            self.progress_tokens.pop(record["id"], None)
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))
        else:
            self.work_done_progress.report(token, types.WorkDoneProgressReport(message=message))

    async def start_progress(self, record: dict) -> None:
        token, run = f"offload-{record['id']}", 1
        while token in self.work_done_progress.tokens:  # a follow-up: a token is never reused
            run += 1
            token = f"offload-{record['id']}-{run}"
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
            uri = _uri(root, m.path)
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

    async def send_edit(self, task_id: str, edit: types.WorkspaceEdit, hunk_ids: list[str] | None = None) -> None:
        """Ask the client to apply `edit`; the hunks count as accepted once it says it did."""
        manager = self.tasks()
        if _supports(self, "workspace", "workspace_edit", "change_annotation_support") and edit.document_changes:
            edit = _annotated(edit, task_id, manager.get(task_id)["prompt"], hunk_ids)
        try:
            response = await self.workspace_apply_edit_async(
                types.ApplyWorkspaceEditParams(edit=edit, label=f"Offload task {task_id}"))
        except Exception as e:
            self.window_show_message(types.ShowMessageParams(
                type=types.MessageType.Error, message=f"Offload: the editor failed to apply the change: {e}"))
            return
        if response and response.applied:
            if hunk_ids is None:
                manager.accepted_all(task_id)
            else:
                manager.decide(task_id, hunk_ids, "accepted")
        else:
            manager._emit(manager.get(task_id), "apply.rejected", {"reason": getattr(response, "failure_reason", None)})
        self.publish_review(task_id)

    async def sweep_sandboxes(self) -> None:
        """At start and every SWEEP_SECONDS: remove what sandboxes of dead processes left behind."""
        while True:
            try:
                await asyncio.to_thread(self.tasks().sweep)
            except Exception as e:  # a sweep that fails is retried at the next tick; it never stops the server
                log.warning("sandbox sweep failed: %s", e)
            await asyncio.sleep(SWEEP_SECONDS)

    async def watch_store(self) -> None:
        """Tasks run by other processes (the CLI, another editor window) show up here too."""
        manager = self.tasks()
        seen = {r["id"]: r["state"] for r in manager.store.all()}
        async for changes in watchfiles.awatch(manager.store.root, debounce=200, recursive=True):
            for task_id, names in _by_task(changes).items():
                record = manager.store.load(task_id)
                if record is None:
                    continue
                if manager.runs_here(record) and names == {"task.json"}:
                    continue  # its events said so already
                self.forget(task_id, record)
                if "review.json" in names and any(task_id in tasks for tasks in self.published.values()):
                    self.publish_review(task_id)  # hunks decided elsewhere (the CLI): withdraw them here
                if "task.json" not in names or manager.runs_here(record) or seen.get(task_id) == record["state"]:
                    continue
                seen[task_id] = record["state"]
                self.protocol.notify("offload/taskUpdated", _summary(record))
                if record["state"] == "finished" and record.get("changes"):
                    self.publish_review(task_id)

    # ---- review --------------------------------------------------------------------------
    def forget(self, task_id: str, record: dict | None = None, hunks: bool = True) -> None:
        """The task changed: its record is now `record` (or read again), and its hunks are worked out
        again when next needed (unless `hunks` is False: an agent's step changes none)."""
        if hunks:
            self._hunks.pop(task_id, None)
        if self._records is not None:
            record = record or self.tasks().store.load(task_id)
            if record is not None:
                self._records[task_id] = record

    def records(self) -> list[dict]:
        return sorted(self._kept().values(), key=lambda r: r["created"])

    def _kept(self) -> dict[str, dict]:
        """Every task's record by id, read from the store once and kept up to date by `forget`."""
        if self._records is None:
            self._records = {r["id"]: r for r in self.tasks().list()}
        return self._records

    def record(self, task_id) -> dict:
        """The task `task_id` names (a whole id, or a prefix of one), from the records kept here."""
        known = self._kept().get(task_id) if isinstance(task_id, str) else None
        return known if known is not None else self.tasks().get(task_id)

    def pending_hunks(self, records: list[dict] | None = None):
        """(task, hunk, change) for every hunk of `records` (default: every task) still waiting for a decision."""
        for record in self.records() if records is None else records:
            if record["state"] != "finished" or record.get("discarded") or record["kind"] != "code":
                continue
            if record["id"] not in self._hunks:
                self._hunks[record["id"]] = self.tasks().hunks(record["id"])
            for hunk, status, change in self._hunks[record["id"]]:
                if status == "pending":
                    yield record, hunk, change

    def current_bytes(self, root: Path, path: str) -> bytes | None:
        uri = _uri(root, path)
        if uri in self.workspace.text_documents:
            return self.workspace.get_text_document(uri).source.encode()
        try:
            with Checkout(root) as checkout:  # never through a symlink of the checkout
                entry = checkout.read(path)
        except CheckoutError:  # a directory, or behind a symlink: the merge names the clash
            return None
        return None if entry is None or entry.symlink else entry.data

    def publish_review(self, task_id: str | None = None, uri: str | None = None) -> None:
        """An Information diagnostic over each pending hunk and a Warning on each check still failing,
        per file. Only the files that may have changed are published again: with `uri`, that one
        (the user typed in it); with `task_id`, that task's, now and before; else every one."""
        records = self.records()
        if uri is not None:
            targets = {uri}
        else:
            targets = {u for u, tasks in self.published.items() if task_id is None or task_id in tasks}
            for record in records:
                if task_id in (None, record["id"]):
                    paths = [c["path"] for c in record.get("changes", [])] + \
                        [f["path"] for f in record.get("failures", [])]
                    targets |= {_uri(record["repo"], p) for p in paths}
        by_uri: dict[str, list[types.Diagnostic]] = {}
        for record, hunk, change in self.pending_hunks(records):
            root = Path(record["repo"])
            hunk_uri = _uri(root, hunk.path)
            if hunk_uri not in targets:
                continue
            span = locate(hunk, change.base, self.current_bytes(root, hunk.path))
            start, end = span if span else (0, 0)
            message = (f"Offload ({record['prompt'][:40]}): proposed change, +{hunk.added} −{hunk.removed} lines"
                       + ("" if span else " — your edits overlap it"))
            by_uri.setdefault(hunk_uri, []).append(types.Diagnostic(
                range=types.Range(types.Position(start, 0), types.Position(max(end, start + 1), 0)),
                message=message, severity=types.DiagnosticSeverity.Information, source="offload",
                code="proposal", data={"taskId": record["id"], "hunkId": hunk.id, "located": span is not None}))
        for record in records:
            if record["kind"] != "code" or record.get("discarded") or record["state"] not in ("finished", "failed"):
                continue
            for failure in record.get("failures", []):
                failure_uri = _uri(record["repo"], failure["path"])
                if failure_uri not in targets:
                    continue
                line = max(failure["line"] - 1, 0)
                by_uri.setdefault(failure_uri, []).append(types.Diagnostic(
                    range=types.Range(types.Position(line, 0), types.Position(line + 1, 0)),
                    message=f"Offload ({record['prompt'][:40]}): a check still fails here: {failure['message']}",
                    severity=types.DiagnosticSeverity.Warning, source="offload", code="check-failed",
                    data={"taskId": record["id"]}))
        for target in targets:
            diagnostics = by_uri.get(target, [])
            self.text_document_publish_diagnostics(types.PublishDiagnosticsParams(uri=target, diagnostics=diagnostics))
            if diagnostics:
                self.published[target] = {d.data["taskId"] for d in diagnostics}
            else:
                self.published.pop(target, None)
        if uri is None and _supports(self, "workspace", "code_lens", "refresh_support"):
            self.refresh_code_lens()  # the lenses of a file being typed in follow from the editor's next request

    def refresh_code_lens(self) -> None:
        """Ask the editor for lenses again: once at a time, and once more if asked meanwhile."""
        if self._lens_refresh is not None and not self._lens_refresh.done():
            self._lens_refresh_again = True
            return

        async def refresh() -> None:
            try:
                await self.workspace_code_lens_refresh_async(None)
            except Exception as e:  # an old client without refresh: lenses update on its next request
                log.info("codeLens refresh failed: %s", e)
            if self._lens_refresh_again:
                self._lens_refresh_again = False
                self._lens_refresh = None
                self.refresh_code_lens()

        self._lens_refresh = asyncio.get_running_loop().create_task(refresh())
        self.background.add(self._lens_refresh)
        self._lens_refresh.add_done_callback(self.background.discard)


# Events of an agent at work: frequent, and nothing the review shows depends on them.
_AGENT_EVENTS = frozenset({"tool.call", "tool.output", "tool.result", "model.reply", "model.call.failed",
                           "model.wait", "model.error", "note", "context", "plan", "loop", "commit", "citations",
                           "agent.end"})


@functools.lru_cache(maxsize=4096)
def _uri(root: str | Path, path: str) -> str:
    """The file: URI of `path` in the repository at `root`: asked for every hunk at every keystroke."""
    return from_fs_path(str(Path(root) / path))


def _by_task(changes: set[tuple[watchfiles.Change, str]]) -> dict[str, set[str]]:
    """The store's changed files, by task: {task id: {"task.json", "review.json", ...}}."""
    names: dict[str, set[str]] = {}
    for _, path in changes:
        name = Path(path).name
        if name in ("task.json", "review.json", "changes.json"):
            names.setdefault(Path(path).parent.name, set()).add(name)
    return names


def _supports(ls: LanguageServer, *path: str):
    node: Any = ls.client_capabilities
    for name in path:
        node = getattr(node, name, None)
        if node is None:
            return None
    return node


def _annotated(edit: types.WorkspaceEdit, task_id: str, prompt: str,
               hunk_ids: list[str] | None) -> types.WorkspaceEdit:
    """`edit` with every change under one annotation naming the task. Applying a whole task
    needs the user's confirmation (VS Code shows its refactor preview first): it may touch many
    files the user has not looked at. Accepting hunks does not: the user has just read each one
    where it is and clicked Accept on it, so a preview would only ask the same question twice."""
    annotation_id = f"offload-{task_id}"
    first_line = prompt.strip().splitlines()[0] if prompt.strip() else "change"
    label = "Offload: " + (first_line if len(first_line) <= 50 else first_line[:49] + "…")
    what = "the whole change" if hunk_ids is None else "hunk " + ", ".join(hunk_ids)
    changes: list[Any] = []
    for change in edit.document_changes:
        if isinstance(change, types.TextDocumentEdit):
            change = types.TextDocumentEdit(text_document=change.text_document, edits=[
                types.AnnotatedTextEdit(range=e.range, new_text=e.new_text, annotation_id=annotation_id)
                for e in change.edits])
        else:  # CreateFile, DeleteFile
            change = type(change)(uri=change.uri, options=change.options, annotation_id=annotation_id)
        changes.append(change)
    return types.WorkspaceEdit(document_changes=changes, change_annotations={annotation_id: types.ChangeAnnotation(
        label=label, needs_confirmation=hunk_ids is None, description=f"Offload task {task_id}: {what}")})


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
    keys = ("id", "kind", "state", "reason", "prompt", "repo", "changes", "steps", "input_tokens", "output_tokens",
            "cost_usd", "created", "updated", "discarded", "attempt")
    summary = {("taskId" if k == "id" else k): record.get(k) for k in keys}
    summary["attempts"] = record.get("attempts", 1)
    summary["attemptResults"] = [
        {"attempt": a["attempt"], "state": a["state"], "reason": a["reason"], "passed": a["passed"],
         "failed": a["failed"], "diffLines": a["diff_lines"], "changes": a["changes"], "cost_usd": a["cost_usd"]}
        for a in record.get("attempt_results") or []]
    return summary


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


server = OffloadServer()


@server.feature(types.INITIALIZE)
def initialize(ls: OffloadServer, params: types.InitializeParams) -> None:
    """Editor settings (`initializationOptions`, optionally under "settings") are the top config layer."""
    options = params.initialization_options
    if isinstance(options, dict) and isinstance(options.get("settings"), dict):
        options = options["settings"]
    ls.manager = TaskManager(overrides=options if isinstance(options, dict) else None, worker=True)
    ls.manager.listeners.append(ls.task_listener())


@server.feature(types.INITIALIZED)
def initialized(ls: OffloadServer, params: types.InitializedParams) -> None:
    ls.tasks().recover()
    ls.spawn(ls.watch_store())
    ls.spawn(ls.sweep_sandboxes())
    # What start-up made (modules, lsprotocol's types, cattrs' converters) lives as long as the server:
    # out of the collector's sight, a full collection scans a few objects, not all of them, and stops
    # the editor's requests for a millisecond instead of a tenth of a second.
    gc.freeze()


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
    return {"tasks": [_summary(t) for t in ls.records()]}


@_command("offload.showTask")
async def show_task(ls: OffloadServer, *args):
    manager = ls.tasks()
    arg = _args(args, "taskId")
    record = ls.record(arg["taskId"])
    if arg.get("attempt") not in (None, record.get("attempt")):  # another attempt, to look at
        attempt = manager.attempt(record["id"], arg["attempt"])
        return {**_summary(record), "attempt": attempt["attempt"], "message": attempt["message"],
                "checks": attempt["checks"], "diff": manager.diff(record["id"], attempt["attempt"]), "hunks": [],
                "events": [e for e in manager.events(record["id"]) if e.get("attempt") in (None, attempt["attempt"])]}
    hunks = [{**h.as_dict(), "status": status} for h, status, _ in manager.hunks(record["id"])]
    return {**_summary(record), "message": record["message"], "checks": record["checks"],
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
    merged = manager.merge(record["id"], lambda path: ls.current_bytes(root, path))
    conflicts = [m.clash or m.path for m in merged if m.conflict]
    if conflicts:
        raise CommandError("your files changed where the task changed them; nothing was applied. "
                           "Conflicts: " + ", ".join(conflicts))
    if disk := [m for m in merged if m.disk]:  # binary files, symlinks, exec bits: no text edit carries them
        manager.write(record["id"], disk)
    edit = ls.workspace_edit(root, [m for m in merged if not m.disk and not m.skipped])
    ls.spawn(ls.send_edit(record["id"], edit))
    return {"taskId": record["id"], "files": [m.path for m in merged if not m.unchanged]}


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
    merged = manager.merge_hunks(record["id"], hunk_ids, lambda path: ls.current_bytes(root, path))
    if disk := [m for m in merged if m.disk]:  # binary files, symlinks, exec bits: no text edit carries them
        manager.write(record["id"], disk)
    ls.spawn(ls.send_edit(record["id"], ls.workspace_edit(root, [m for m in merged if not m.disk and not m.skipped]),
                          hunk_ids))
    return {"taskId": record["id"], "hunkIds": hunk_ids, "paths": [m.path for m in merged]}


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


@server.feature(types.TEXT_DOCUMENT_CODE_ACTION, types.CodeActionOptions(
    code_action_kinds=[types.CodeActionKind.QuickFix, types.CodeActionKind.Refactor]))
def code_actions(ls: OffloadServer, params: types.CodeActionParams) -> list[types.CodeAction]:
    """Quick fixes on diagnostics (fix this; accept or reject a proposed hunk), and on a selection,
    tasks about it: write tests, explain, and "do…" with a prompt the editor asks the user for."""
    actions = [*_diagnostic_actions(ls, params), *_selection_actions(ls, params)]
    only = params.context.only
    return [a for a in actions if not only or any(a.kind == k or a.kind.startswith(f"{k}.") for k in only)]


# The experimental client capability that says the editor asks the user for an `offload.code`
# prompt when a command comes without one (the VS Code extension does): then "do…" is offered.
PROMPT_CAPABILITY = "offloadPrompt"


def _selection_actions(ls: OffloadServer, params: types.CodeActionParams) -> list[types.CodeAction]:
    if params.range.start == params.range.end:
        return []
    where = {"uri": params.text_document.uri, "range": ls.protocol._converter.unstructure(params.range)}
    tasks = [("Offload: write tests for this", "offload.code",
              "Write tests for the selected code, beside the project's existing tests and in their style, "
              "covering its edge cases; run them and make them pass without changing the code under test."),
             ("Offload: explain this", "offload.ask",
              "Explain what the selected code does, how, and why it is written this way, citing the lines.")]
    actions = [types.CodeAction(title=title, kind=types.CodeActionKind.Refactor, command=types.Command(
        title=title, command=command, arguments=[{"prompt": prompt, **where}])) for title, command, prompt in tasks]
    experimental = ls.client_capabilities.experimental
    if isinstance(experimental, dict) and experimental.get(PROMPT_CAPABILITY):
        actions.append(types.CodeAction(title="Offload: do…", kind=types.CodeActionKind.Refactor, command=types.Command(
            title="Offload: do…", command="offload.code", arguments=[where])))  # the editor adds the prompt
    return actions


def _diagnostic_actions(ls: OffloadServer, params: types.CodeActionParams) -> list[types.CodeAction]:
    actions = []
    for diagnostic in params.context.diagnostics:
        data = diagnostic.data if isinstance(diagnostic.data, dict) else {}
        if diagnostic.source == "offload":
            if "taskId" in data and "hunkId" in data:
                for verb, command in (("Accept", "offload.acceptHunk"), ("Reject", "offload.rejectHunk")):
                    actions.append(types.CodeAction(
                        title=f"Offload: {verb.lower()} this change", kind=types.CodeActionKind.QuickFix,
                        diagnostics=[diagnostic], is_preferred=verb == "Accept",
                        command=types.Command(title=f"{verb} change", command=command,
                                              arguments=[{"taskId": data["taskId"], "hunkId": data["hunkId"]}])))
                actions.append(types.CodeAction(
                    title="Offload: accept the whole task", kind=types.CodeActionKind.QuickFix,
                    command=types.Command(title="Accept task", command="offload.apply",
                                          arguments=[{"taskId": data["taskId"]}])))
            continue
        line = diagnostic.range.start.line + 1
        prompt = f"Fix this problem reported at line {line}: {diagnostic.message}"
        actions.append(types.CodeAction(
            title="Offload: fix this", kind=types.CodeActionKind.QuickFix, diagnostics=[diagnostic],
            command=types.Command(title="Offload: fix this", command="offload.code", arguments=[
                {"prompt": prompt, "uri": params.text_document.uri,
                 "range": ls.protocol._converter.unstructure(diagnostic.range)}])))
    return actions


@server.feature(types.TEXT_DOCUMENT_CODE_LENS)
def code_lens(ls: OffloadServer, params: types.CodeLensParams) -> list[types.CodeLens]:
    lenses = []
    for record, hunk, change in ls.pending_hunks():
        root = Path(record["repo"])
        if _uri(root, hunk.path) != params.text_document.uri:
            continue
        span = locate(hunk, change.base, ls.current_bytes(root, hunk.path))
        if span is None:
            continue
        at = types.Range(types.Position(span[0], 0), types.Position(span[0], 0))
        arg = {"taskId": record["id"], "hunkId": hunk.id}
        lenses += [types.CodeLens(range=at, command=types.Command(title="Offload: Accept", command="offload.acceptHunk",
                                                                  arguments=[arg])),
                   types.CodeLens(range=at, command=types.Command(title="Reject", command="offload.rejectHunk",
                                                                  arguments=[arg]))]
    return lenses


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def document_changed(ls: OffloadServer, params) -> None:
    """Hunk diagnostics follow the user's edits (only files that carry them are worth the work)."""
    if params.text_document.uri in ls.published:
        ls.publish_review(uri=params.text_document.uri)


def serve(tcp: str | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    if tcp:
        host, _, port = tcp.rpartition(":")
        server.start_tcp(host or "127.0.0.1", int(port))
    else:
        server.start_io()
