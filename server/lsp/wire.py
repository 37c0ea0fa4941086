"""The JSON-RPC wire: framed messages in, a clear error out for every malformed one.

pygls's own reader drops what it cannot parse (the client waits forever for an answer) and
loses its place in the stream after a header without a valid `Content-Length`, after which
nothing more is read. This reader finds the next header again, answers a request whose
params do not fit its method with `InvalidParams` under the request's id, answers a body
that is not JSON-RPC with `ParseError` or `InvalidRequest`, and logs a malformed
notification without acting on it. A client's bad message never stops the server.

Where the OS can poll the input (a pipe, a socket), it is read on the event loop itself:
pygls's stdin reader hands every line to a thread and back, and under load each hop waits
for the interpreter lock, which is what an editor's request should never wait for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO
from urllib.parse import unquote

import cattrs
from lsprotocol import types
from lsprotocol.types import ErrorCodes
from pygls.io_ import StdinAsyncReader
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.json_rpc import ResponseErrorMessage
from pygls.protocol.language_server import lsp_method

log = logging.getLogger(__name__)

_LENGTH = re.compile(rb"Content-Length:[ \t]*(\d+)[ \t]*\r?\n$", re.IGNORECASE)
_HEADER = re.compile(rb"[A-Za-z][\w-]*:.*\r?\n$")
_LINE_LIMIT = 1 << 20  # a longer "header" line is noise, skipped


class Protocol(LanguageServerProtocol):
    """pygls's protocol, with document notifications about documents never opened ignored (and
    logged) instead of failing with a KeyError shown to the user, and plain JSON sent as it is."""

    def _serialize_message(self, data):
        """pygls has cattrs turn every outgoing message into JSON, walking each value of a plain
        payload in Python. Ours mostly are plain (task events, command results): they go to
        `json.dumps` as they are, which calls back here for any lsprotocol object inside them."""
        method = getattr(data, "method", None)
        payload = getattr(data, "params" if method else "result", None)
        if isinstance(payload, (dict, list)) and hasattr(data, "jsonrpc") and not hasattr(data, "error"):
            message = {"jsonrpc": data.jsonrpc}
            if getattr(data, "id", None) is not None:
                message["id"] = data.id
            if method:
                message.update(method=method, params=payload)
            else:
                message["result"] = payload
            return message
        return super()._serialize_message(data)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams):
        if unquote(params.text_document.uri) not in self.workspace.text_documents:
            log.warning("ignored textDocument/didChange for %s: the document was never opened",
                        params.text_document.uri)
            return None
        return (yield from super().lsp_text_document__did_change(params))


async def reader_for(stream: BinaryIO, thread_pool: ThreadPoolExecutor) -> asyncio.StreamReader | StdinAsyncReader:
    """A reader of `stream` on the running loop, or, for a stream the OS cannot poll (a regular
    file), pygls's reader through `thread_pool`."""
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    try:
        await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stream)
    except (OSError, ValueError):
        return StdinAsyncReader(stream, thread_pool)
    return reader


async def serve(stop: threading.Event, reader: asyncio.StreamReader | StdinAsyncReader,
                protocol: LanguageServerProtocol) -> None:
    """Read framed messages until the stream ends, handing each well-formed one to `protocol`."""
    length: int | None = None
    reported = False  # the bytes being skipped were already answered with an error
    while not stop.is_set():
        try:
            line = await reader.readline()
        except ValueError:  # over the line limit: the reader dropped it
            _skip(protocol, b"(a line over %d bytes)" % _LINE_LIMIT, reported)
            length, reported = None, True
            continue
        if not line:
            break
        if match := _LENGTH.search(line):
            if skipped := line[:match.start()]:
                _skip(protocol, skipped, reported)
            length, reported = int(match[1]), False
        elif b"content-length" in line.lower():
            _error(protocol, None, ErrorCodes.ParseError,
                   f"Parse error: invalid header {line.strip()[:80]!r}; the message was skipped")
            length, reported = None, True
        elif line.strip():
            if not _HEADER.fullmatch(line):
                _skip(protocol, line, reported)
                reported = True
        elif length is None:
            if not reported:
                _error(protocol, None, ErrorCodes.ParseError,
                       "Parse error: a message came without a Content-Length header; it was skipped")
                reported = True
        else:
            try:
                body = await reader.readexactly(length)
            except asyncio.IncompleteReadError:  # the stream ended mid-message
                break
            if len(body) < length:  # the same, from pygls's reader
                break
            length, reported = None, not _handle(protocol, body)


def _skip(protocol: LanguageServerProtocol, data: bytes, reported: bool) -> None:
    """Bytes outside any frame: the rest of a malformed message, or noise."""
    log.warning("skipped %d bytes outside any message: %r", len(data), data[:80])
    if not reported:
        _error(protocol, None, ErrorCodes.ParseError,
               f"Parse error: {len(data)} bytes outside any message were skipped")


def _handle(protocol: LanguageServerProtocol, body: bytes) -> bool:
    """Hand one body to the protocol, or answer why not; True when it was a message."""
    try:
        data = json.loads(body)
    except ValueError as e:
        _error(protocol, None, ErrorCodes.ParseError, f"Parse error: the message is not JSON: {e}")
        return False
    msg_id = data.get("id") if isinstance(data, dict) else None
    msg_id = msg_id if isinstance(msg_id, (int, str)) and not isinstance(msg_id, bool) else None
    if not isinstance(data, dict) or data.get("jsonrpc") != "2.0" or not (
            isinstance(data.get("method"), str) or msg_id is not None):
        _error(protocol, msg_id, ErrorCodes.InvalidRequest,
               'Invalid request: a message is one JSON object with "jsonrpc": "2.0" and a "method" or an "id"')
        return False
    try:
        message = protocol.structure_message(data)
    except Exception as e:  # params that do not fit the method's types
        _bad_params(protocol, data, msg_id, e.__cause__ or e)
        return True
    try:
        protocol.handle_message(message)
    except Exception:  # a bug of ours: logged, and the next message is read as usual
        log.exception("failed to handle %s", data.get("method") or f"the response to {msg_id}")
    return True


def _bad_params(protocol: LanguageServerProtocol, data: dict, msg_id, error: BaseException) -> None:
    if isinstance(error, cattrs.BaseValidationError):
        details = "; ".join(cattrs.transform_error(error))
    else:
        details = f"{type(error).__name__}: {error}"
    method = data.get("method")
    if method is None:  # the client's answer to one of our requests: fail the request waiting for it
        log.warning("the client's response %s has the wrong shape: %s", msg_id, details)
        protocol.handle_message(ResponseErrorMessage(id=msg_id, error=types.ResponseError(
            code=ErrorCodes.InvalidParams, message=f"the client's response has the wrong shape: {details}")))
    elif msg_id is None:
        log.warning("ignored notification %s: its params have the wrong shape: %s", method, details)
    else:
        _error(protocol, msg_id, ErrorCodes.InvalidParams, f"Invalid params for {method}: {details}")


def _error(protocol: LanguageServerProtocol, msg_id, code: int, message: str) -> None:
    log.warning("answered %s with error %d: %s", msg_id, code, message)
    # a plain dict, so that an unknown id goes out as "id": null, as JSON-RPC asks
    protocol._send_data({"jsonrpc": "2.0", "id": msg_id, "error": {"code": int(code), "message": message}})
