"""`workspace/didChangeConfiguration`: the editor's settings changed. They replace the ones sent at
`initialize` (the same shape, optionally under "settings") for the tasks started from now on; a
running task keeps the settings it started with. No restart, so nothing running is lost."""

from __future__ import annotations

from lsprotocol import types

from .server import OffloadServer, server


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
def configuration_changed(ls: OffloadServer, params: types.DidChangeConfigurationParams) -> None:
    settings = params.settings
    if isinstance(settings, dict) and isinstance(settings.get("settings"), dict):
        settings = settings["settings"]
    if not isinstance(settings, dict) or not settings:
        return  # a client that sends only "something changed" (settings null, or eglot's {}): nothing to take
    manager = ls.tasks()
    manager.overrides.clear()  # in place: the task worker's settings hold the same table
    manager.overrides.update(settings)
    if manager._worker is not None:
        manager._worker.configure()
