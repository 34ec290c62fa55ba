"""Draining a queue of progress events without blocking (the runner's children, the warm engine's requests)."""

from __future__ import annotations

import queue


def drain(events: queue.Queue) -> list:
    """Every item in ``events`` now, oldest first; never blocks."""
    items = []
    while True:
        try:
            items.append(events.get_nowait())
        except queue.Empty:
            return items
