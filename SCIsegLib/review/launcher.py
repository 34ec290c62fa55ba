"""The decisions of ``sciseg review``'s front: session ids, the worker table, the cap and the idle rule.

One browser tab = one review session = one worker process (its own trame server and MRML scene), because
trame shares one server's state with every tab connected to it. Nothing here does I/O: the front
(:mod:`front`) asks these functions and carries out the answer. Times are ``time.monotonic()`` seconds.

Rules:

* A session id is 16 lowercase hex characters (64 random bits); it lives in the tab's URL (``/s/<id>/``),
  so a reload returns to the same worker and a new tab opening the review address gets a new one.
* At most ``max_sessions`` workers (starting ones included). When the table is full, a worker may be
  reclaimed for a new tab only when no tab has been connected to it for ``reclaim_after_s`` seconds
  and it has no unsaved edits (the front asks the worker); otherwise the new tab gets the "full" page.
  "Unsaved" means strokes held only in the worker's memory: once they are exported or in the rater's draft
  (written after each stroke, :mod:`SCIsegLib.cases`), the session's slot can be released and the rater finds
  the case and the draft again from any new tab.
* A worker is shut down when no tab has been connected to it for ``idle_s`` seconds AND it has no
  unsaved edits; a worker with unsaved edits is kept until the front stops.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

SESSION_ID = re.compile(r"[0-9a-f]{16}")
DEFAULT_MAX_SESSIONS = 4
DEFAULT_IDLE_MINUTES = 60.0
RECLAIM_AFTER_S = 120.0  # a reload reconnects within seconds; two minutes without a tab means the tab is gone


def new_session_id() -> str:
    """16 hex characters from the system's secure random source."""
    return secrets.token_hex(8)


def is_session_id(text: str) -> bool:
    """True for the exact shape :func:`new_session_id` makes (anything else in a URL is refused)."""
    return SESSION_ID.fullmatch(text) is not None


@dataclass
class Worker:
    """One session's worker as the front sees it: process id, local port (0 until ready), tabs connected now."""

    session_id: str
    started_at: float
    pid: int = 0
    port: int = 0
    connections: int = 0
    last_seen: float = field(default=0.0)  # when the last tab disconnected (or the worker started)

    def idle_s(self, now: float) -> float:
        """Seconds without any tab connected (0 while one is)."""
        return 0.0 if self.connections > 0 else max(0.0, now - self.last_seen)


class SessionTable:
    """The workers of one front, by session id; enforces the cap and tells which workers may stop."""

    def __init__(self, max_sessions: int = DEFAULT_MAX_SESSIONS, idle_s: float = DEFAULT_IDLE_MINUTES * 60,
                 reclaim_after_s: float = RECLAIM_AFTER_S) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.max_sessions = max_sessions
        self.idle_s = idle_s
        self.reclaim_after_s = reclaim_after_s
        self.workers: dict[str, Worker] = {}

    def __len__(self) -> int:
        return len(self.workers)

    def get(self, session_id: str) -> Worker | None:
        return self.workers.get(session_id)

    def full(self) -> bool:
        return len(self.workers) >= self.max_sessions

    def add(self, now: float) -> Worker:
        """A new session (fresh random id) with its worker still to start; raises ``RuntimeError`` when full."""
        if self.full():
            raise RuntimeError(f"all {self.max_sessions} review sessions are in use")
        session_id = new_session_id()
        while session_id in self.workers:  # pragma: no cover - 64 random bits
            session_id = new_session_id()
        worker = Worker(session_id, started_at=now, last_seen=now)
        self.workers[session_id] = worker
        return worker

    def remove(self, session_id: str) -> Worker | None:
        return self.workers.pop(session_id, None)

    def connected(self, session_id: str) -> None:
        worker = self.workers.get(session_id)
        if worker is not None:
            worker.connections += 1

    def disconnected(self, session_id: str, now: float) -> None:
        worker = self.workers.get(session_id)
        if worker is not None:
            worker.connections = max(0, worker.connections - 1)
            if worker.connections == 0:
                worker.last_seen = now

    def due_for_shutdown(self, now: float) -> list[str]:
        """Ready workers without a tab for ``idle_s`` seconds, longest idle first (stop them if they have no unsaved edits)."""
        idle = [w for w in self.workers.values() if w.port and w.idle_s(now) >= self.idle_s]
        return [w.session_id for w in sorted(idle, key=lambda w: w.last_seen)]

    def reclaimable(self, now: float) -> list[str]:
        """When full: ready workers without a tab for ``reclaim_after_s`` seconds, longest idle first."""
        idle = [w for w in self.workers.values() if w.port and w.idle_s(now) >= self.reclaim_after_s]
        return [w.session_id for w in sorted(idle, key=lambda w: w.last_seen)]


# ---------------------------------------------------------------------------------------- the worker protocol
READY_PREFIX = "sciseg-review-worker listening on port "  # the worker's stdout line once it accepts connections
STATUS_PATH = "/sciseg/status"  # the worker's JSON: {"unsaved": bool, "running": bool, "case_id": str, "tabs": int}


def ready_port(line: str) -> int | None:
    """The port of a worker's ready line (``READY_PREFIX<port>``), None for any other line."""
    text = line.strip()
    if not text.startswith(READY_PREFIX):
        return None
    value = text[len(READY_PREFIX):]
    return int(value) if value.isdigit() and 0 < int(value) < 65536 else None
