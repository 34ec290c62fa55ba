"""Drafts written off the app's event loop, one at a time, in the order they were asked for.

A draft after each stroke (a compressed label map, its digests and the grey matter's) took 20-40 ms of the event loop
on a full field-of-view scan, time the views and the lesion table waited for. :class:`DraftWriter` runs such writes
in one background thread: a write asked for later never lands before one asked for earlier, and whoever reads or
changes what the drafts depend on (open another case, export, discard, write a draft now) first calls
:meth:`DraftWriter.wait`, so it sees every draft asked for before it. Each job carries its own copies of the arrays
and the case it is for (see :meth:`ReviewSession.save_draft_later`): a draft never lands under another case.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class DraftWriter:
    """One background thread running draft writes first in, first out; :meth:`wait` returns once all asked are done."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sciseg-draft")
        self._last: Future | None = None

    def submit(self, write: Callable[[], T]) -> Future[T]:
        """Run ``write`` after every write submitted before it (its exceptions stay in the returned future)."""
        self._last = self._executor.submit(write)
        return self._last

    def wait(self) -> None:
        """Block until every write submitted so far has finished (its outcome is its future's)."""
        last = self._last
        if last is not None:
            last.exception()  # waits; an error belongs to the caller that holds the future

    @property
    def busy(self) -> bool:
        return self._last is not None and not self._last.done()
