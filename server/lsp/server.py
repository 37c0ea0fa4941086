"""The language server: the task manager's face to editors, and what it tells them of tasks.

It only translates between LSP and the task manager: every command answers at once with what
the manager says, tasks run in the background, and the editor hears of them through progress,
`offload/taskUpdated` and `offload/taskEvent`, and a message when one ends. The features live
beside it: `commands`, `actions` (code actions), `review` (diagnostics, hover, lenses) and
`edits` (what an accepted change sends).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import sys
import threading
from pathlib import Path

import watchfiles
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.io_ import StdoutWriter
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path

from ..agent.loop import preview
from ..tasks.checkout import Checkout, CheckoutError
from ..tasks.manager import TaskManager
from . import edits, wire

log = logging.getLogger(__name__)
SWEEP_SECONDS = 300.0
EVENT_TEXT = 1000  # characters of a text an `offload/taskEvent` carries (`offload.showTask` has it all)


class OffloadServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("offload", "0.1.0", protocol_cls=wire.Protocol)
        self.manager: TaskManager | None = None
        self.progress_tokens: dict[str, str] = {}  # task id → its progress token
        self.edit_timeout = edits.EDIT_TIMEOUT
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

    def after_answer(self, coro) -> None:
        """Run `coro` once the request being handled has been answered. A client that waits for
        that answer before it reads anything else (eglot, synchronously) would never answer a
        request of ours sent before it: `workspace/applyEdit` goes after."""
        request = asyncio.current_task()

        async def later() -> None:
            if request is not None:  # its answer is sent by a callback added before this one's
                await asyncio.wait([request])
            await coro

        self.spawn(later())

    def uri(self, root: str | Path, path: str) -> str:
        return _uri(root, path)

    def show(self, kind: types.MessageType, message: str) -> None:
        self.window_show_message(types.ShowMessageParams(type=kind, message=message))

    # ---- tasks → editor ------------------------------------------------------------------
    def on_task_event(self, record: dict, event: dict) -> None:
        self.forget(record["id"], record, hunks=event["type"] not in _AGENT_EVENTS)
        if event["type"] != "tool.output":  # streamed pieces of what tool.result carries, summarised
            self.protocol.notify("offload/taskEvent", {"taskId": record["id"], "event": _summarised(event)})
        if event["type"] not in ("state", "tool.call", "model.wait", "attempt.chosen"):
            return
        if event["type"] == "attempt.chosen":
            return self.protocol.notify("offload/taskUpdated", summary(record))
        if event["type"] == "state":
            self.protocol.notify("offload/taskUpdated", summary(record))
            if event["state"] in ("finished", "failed"):
                self.spawn(self.ended(record))
        self.report_progress(record, event)

    async def ended(self, record: dict) -> None:
        """Publish an ended task's review and say how it ended. Its hunks are worked out on a
        thread: sixteen tasks finishing together must not keep the editor's requests waiting."""
        if record.get("changes") or record.get("failures"):
            if record["state"] == "finished" and record["kind"] == "code" and not record.get("discarded"):
                await asyncio.to_thread(self.tasks().hunks, record["id"])  # then cached by the manager
            self.publish_review(record["id"])
        self.tell(record)

    def tell(self, record: dict) -> None:
        """Say that a task ended, and how; open an Ask's answer as a Markdown file of the task."""
        from .review import title

        what = f"Offload: “{title(record)}” {record['state']}"
        if record["state"] == "failed":
            return self.show(types.MessageType.Error, f"{what}: {record.get('reason') or 'no reason given'}")
        if record["kind"] == "ask":
            answer = self.tasks().store.dir(record["id"]) / "answer.md"
            answer.write_text(f"# {record['prompt'].strip()}\n\n{record.get('message', '')}\n", encoding="utf-8")
            self.show(types.MessageType.Info, f"{what}: the answer is in {answer}")
            if edits.supports(self, "window", "show_document", "support"):
                self.spawn(self.window_show_document_async(types.ShowDocumentParams(
                    uri=from_fs_path(str(answer)), take_focus=False)))
            return
        pending = sum(1 for _ in self.pending_hunks([record]))
        checks = [c for c in record.get("checks") or [] if isinstance(c, dict)]
        failing = [f"{c.get('check', '?')} ({c['status']})" for c in checks
                   if c.get("status") not in ("passed", "dismissed", None)]
        self.show(types.MessageType.Warning if failing else types.MessageType.Info, f"{what}: "
                  + (f"{pending} change(s) to review" if pending else "no change to review")
                  + (f"; not proven: {', '.join(failing)}" if failing else "")
                  + (f" — {record['reason']}" if record.get("reason") else ""))

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
        if edits.supports(self, "window", "work_done_progress"):
            try:
                await self.work_done_progress.create_async(token)
            except Exception as e:  # the client refused: tasks run on without progress
                log.warning("progress refused: %s", e)
                return
        self.progress_tokens[record["id"]] = token
        self.work_done_progress.begin(token, types.WorkDoneProgressBegin(
            title=f"Offload: {record['prompt'][:50]}", message=record["state"], cancellable=True))

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
                self.protocol.notify("offload/taskUpdated", summary(record))
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
        """Publish the review diagnostics again (see `review.publish`)."""
        review.publish(self, task_id, uri)

    def refresh_code_lens(self) -> None:
        """Ask the editor for lenses again, where it can be asked: once at a time, and once more if
        asked meanwhile."""
        if not edits.supports(self, "workspace", "code_lens", "refresh_support"):
            return
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


def _summarised(event: dict) -> dict:
    """The event as `offload/taskEvent` carries it: a long text (a command's output, a model's
    reply) cut to its head, with how much there is; the task's log keeps it whole."""
    if not any(isinstance(v, str) and len(v) > EVENT_TEXT for v in event.values()):
        return event
    return {k: f"{v[:EVENT_TEXT]}… ({len(v)} characters in all: offload.showTask has them)"
            if isinstance(v, str) and len(v) > EVENT_TEXT else v for k, v in event.items()}


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


def summary(record: dict) -> dict:
    """A task as `offload/taskUpdated` and `offload.listTasks` show it."""
    keys = ("id", "kind", "state", "reason", "prompt", "repo", "changes", "steps", "input_tokens", "output_tokens",
            "cost_usd", "created", "updated", "discarded", "attempt")
    out = {("taskId" if k == "id" else k): record.get(k) for k in keys}
    out["attempts"] = record.get("attempts", 1)
    out["attemptResults"] = [
        {"attempt": a["attempt"], "state": a["state"], "reason": a["reason"], "passed": a["passed"],
         "failed": a["failed"], "diffLines": a["diff_lines"], "changes": a["changes"], "cost_usd": a["cost_usd"]}
        for a in record.get("attempt_results") or []]
    return out


server = OffloadServer()


@server.feature(types.INITIALIZE)
def initialize(ls: OffloadServer, params: types.InitializeParams) -> None:
    """Editor settings (`initializationOptions`, optionally under "settings") are the top config
    layer; `editTimeout` beside them is how long an edit may wait for the editor, in seconds."""
    options = params.initialization_options
    if isinstance(options, dict):
        timeout = options.get("editTimeout")
        if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
            ls.edit_timeout = float(timeout)
        if isinstance(options.get("settings"), dict):
            options = options["settings"]
        elif "editTimeout" in options:
            options = {k: v for k, v in options.items() if k != "editTimeout"}
    ls.manager = TaskManager(overrides=options if isinstance(options, dict) else None, worker=True)
    ls.manager.listeners.append(ls.task_listener())


@server.feature(types.INITIALIZED)
def initialized(ls: OffloadServer, params: types.InitializedParams) -> None:
    ls.tasks().recover()
    ls.spawn(ls.watch_store())
    ls.spawn(ls.sweep_sandboxes())
    ls.publish_review()  # review left pending before a restart, for the files the editor has or opens
    # What start-up made (modules, lsprotocol's types, cattrs' converters) lives as long as the server:
    # out of the collector's sight, a full collection scans a few objects, not all of them, and stops
    # the editor's requests for a millisecond instead of a tenth of a second.
    gc.freeze()


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def document_opened(ls: OffloadServer, params: types.DidOpenTextDocumentParams) -> None:
    """A document opened (again, after a reload or a restart) shows the review pending in it."""
    ls.publish_review(uri=params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def document_changed(ls: OffloadServer, params: types.DidChangeTextDocumentParams) -> None:
    """Hunk diagnostics follow the user's edits (only files that carry them are worth the work)."""
    if params.text_document.uri in ls.published:
        ls.publish_review(uri=params.text_document.uri)


@server.feature(types.WINDOW_WORK_DONE_PROGRESS_CANCEL)
def progress_cancelled(ls: OffloadServer, params: types.WorkDoneProgressCancelParams) -> None:
    """The Cancel button of a task's progress cancels the task."""
    for task_id, token in list(ls.progress_tokens.items()):
        if token == params.token:
            try:
                ls.tasks().cancel(task_id)
            except Exception as e:  # it ended meanwhile
                log.info("cancel from progress: %s", e)


class _NoRefusalTracebacks(logging.Filter):
    """A refused command (JsonRpcException) is answered with its reason, which the editor shows in
    words: pygls's traceback of it would only fill the editor's log with what is no error of ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], JsonRpcException))


def serve(tcp: str | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pygls.protocol.json_rpc").addFilter(_NoRefusalTracebacks())
    if tcp:
        host, _, port = tcp.rpartition(":")
        server.start_tcp(host or "127.0.0.1", int(port))
    else:
        server.start_io()


from . import actions, commands, configuration, review  # noqa: E402,F401  (they register their features on `server`)
