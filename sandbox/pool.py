"""Warm sandboxes (`sandbox.warm`): started before a task needs one, so that a task's sandbox is
ready in a fraction of a sandbox's start.

A sandbox's workspace is bound when it starts, but the snapshot is known only when the task
comes. So a warm sandbox starts with everything but its workspace: its layer mounted, its runner
started and answering, and /workspace bound, with slave propagation, from an empty directory of
its layer. Claiming it mounts the overlay over the task's snapshot onto that directory (on this
host for Docker, in the sandbox's own namespace for bubblewrap); the mount propagates into the
sandbox, and the runner's next command sees the repository. A warm sandbox is claimed once.

This module only keeps the count: `size` started, unclaimed sandboxes for each key asked for,
refilled one at a time on a thread of its own after each claim. What a key means, and how a
sandbox is started and stopped, is the manager's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)

RETRY_AFTER = 30.0  # seconds a key whose sandbox failed to start waits before the next try


class WarmPool:
    """Started, unclaimed sandboxes by key. Thread-safe: each sandbox is handed out once."""

    def __init__(self, size: int, start: Callable[[Hashable], object],
                 stop: Callable[[Hashable, object], None]) -> None:
        self.size = size
        self._start = start
        self._stop = stop
        self._ready: dict[Hashable, list] = {}  # the keys asked for, each with its unclaimed sandboxes
        self._retry_at: dict[Hashable, float] = {}
        self._dropped: set[Hashable] = set()
        self._changed = threading.Condition()
        self._closed = False
        self._filler: threading.Thread | None = None

    def want(self, key: Hashable) -> None:
        """Keep `size` sandboxes of this key started from now on."""
        with self._changed:
            if self._closed or key in self._dropped:
                return
            self._ready.setdefault(key, [])
            if self._filler is None:
                self._filler = threading.Thread(target=self._fill, name="offload-warm-pool", daemon=True)
                self._filler.start()
            self._changed.notify_all()

    def take(self, key: Hashable):
        """An unclaimed sandbox of this key, or None when none is ready; either way one more is
        started in its place."""
        with self._changed:
            ready = self._ready.get(key)
            sandbox = ready.pop(0) if ready else None
        self.want(key)
        return sandbox

    def drop(self, key: Hashable, why: str) -> None:
        """Stop keeping sandboxes of this key for good (claiming one failed: the next would fail alike)."""
        with self._changed:
            self._dropped.add(key)
            unclaimed = self._ready.pop(key, [])
        log.warning("no more warm sandboxes for %s: %s", key, why)
        for sandbox in unclaimed:
            self._discard(key, sandbox)

    def ready(self) -> int:
        """How many sandboxes are started and unclaimed, all keys together."""
        with self._changed:
            return sum(len(ready) for ready in self._ready.values())

    def close(self, timeout: float = 120.0) -> None:
        """Stop refilling and destroy every unclaimed sandbox, one being started included."""
        with self._changed:
            self._closed = True
            unclaimed = [(key, s) for key, ready in self._ready.items() for s in ready]
            self._ready.clear()
            self._changed.notify_all()
            filler = self._filler
        for key, sandbox in unclaimed:
            self._discard(key, sandbox)
        if filler is not None:
            filler.join(timeout)

    def _next(self) -> Hashable | None:
        """The key short of sandboxes that may be tried now, waiting for one; None once closed."""
        with self._changed:
            while not self._closed:
                now = time.monotonic()
                short = [key for key, ready in self._ready.items() if len(ready) < self.size]
                due = [key for key in short if self._retry_at.get(key, 0.0) <= now]
                if due:
                    return due[0]
                later = [self._retry_at[key] - now for key in short]
                self._changed.wait(min(later) if later else None)
            return None

    def _fill(self) -> None:
        """Start sandboxes, one at a time, for every key short of `size`, until closed."""
        while (key := self._next()) is not None:
            try:
                sandbox = self._start(key)
            except Exception as e:  # the engine went away, the image is missing: try again later
                log.warning("a warm sandbox for %s did not start: %s", key, e)
                with self._changed:
                    self._retry_at[key] = time.monotonic() + RETRY_AFTER
                continue
            with self._changed:
                keep = not self._closed and key in self._ready
                if keep:
                    self._ready[key].append(sandbox)
                    self._retry_at.pop(key, None)
            if not keep:
                self._discard(key, sandbox)

    def _discard(self, key: Hashable, sandbox) -> None:
        try:
            self._stop(key, sandbox)
        except Exception as e:  # what is left goes with the sweep
            log.warning("a warm sandbox for %s was not destroyed: %s", key, e)
