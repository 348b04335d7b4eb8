"""Follows every node's `events.jsonl` while a run goes, for event-triggered faults.

Why tail files rather than ask nodes: the event log is written by the node at the
moment something happens (the marker proposed, applied, a restart), it survives kills,
and reading it costs the node nothing. A thread polls the files every few milliseconds;
`wait_for` blocks a nemesis until an event matching a predicate has been seen.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

Event = dict[str, Any]

POLL_S = 0.002


class EventWatch:
    """Tails `<data_dir>/events.jsonl` of each node (files may appear late)."""

    def __init__(self, data_dirs: dict[str, str]) -> None:
        self.paths = {n: os.path.join(d, "events.jsonl") for n, d in data_dirs.items()}
        self._offsets = dict.fromkeys(self.paths, 0)
        self._partial = dict.fromkeys(self.paths, b"")
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._listeners: list[Callable[[Event], None]] = []
        self._thread = threading.Thread(target=self._loop, name="event-watch", daemon=True)

    def start(self) -> EventWatch:
        # Start from the current end: events of an earlier life of the directory are old.
        for n, p in self.paths.items():
            try:
                self._offsets[n] = os.path.getsize(p)
            except OSError:
                self._offsets[n] = 0
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)

    def listen(self, fn: Callable[[Event], None]) -> None:
        """Call `fn(event)` from the watch thread for every new event (keep it quick)."""
        self._listeners.append(fn)

    def _loop(self) -> None:
        while not self._stop.is_set():
            got = self.poll_once()
            if not got:
                time.sleep(POLL_S)

    def poll_once(self) -> int:
        new: list[Event] = []
        for n, p in self.paths.items():
            try:
                with open(p, "rb") as fh:
                    fh.seek(self._offsets[n])
                    chunk = fh.read()
            except OSError:
                continue
            if not chunk:
                continue
            self._offsets[n] += len(chunk)
            data = self._partial[n] + chunk
            lines = data.split(b"\n")
            self._partial[n] = lines.pop()  # an incomplete last line waits for the rest
            for line in lines:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if isinstance(ev, dict):
                    ev.setdefault("node", n)
                    new.append(ev)
        if new:
            with self._cond:
                self.events.extend(new)
                self._cond.notify_all()
            for ev in new:
                for fn in self._listeners:
                    try:
                        fn(ev)
                    except Exception:  # noqa: BLE001 - a listener must not stop the watch
                        pass
        return len(new)

    def wait_for(self, pred: Callable[[Event], bool], timeout: float,
                 since: int = 0, cancel: threading.Event | None = None) -> Event | None:
        """The first event at position >= `since` that matches, or None at the timeout."""
        return self.scan(pred, timeout, since, cancel)[0]

    def scan(self, pred: Callable[[Event], bool], timeout: float, since: int = 0,
             cancel: threading.Event | None = None) -> tuple[Event | None, int]:
        """Like `wait_for`, and the position after the last event looked at: a caller
        that scans again from there sees every event exactly once."""
        deadline = time.monotonic() + timeout
        pos = since
        with self._cond:
            while True:
                while pos < len(self.events):
                    ev = self.events[pos]
                    pos += 1
                    if pred(ev):
                        return ev, pos
                left = deadline - time.monotonic()
                if left <= 0 or (cancel is not None and cancel.is_set()):
                    return None, pos
                self._cond.wait(min(left, 0.05))

    def mark(self) -> int:
        """A position for `wait_for(since=...)`: only events after now."""
        with self._cond:
            return len(self.events)
