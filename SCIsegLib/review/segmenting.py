"""Segmenting a case without prediction in ``sciseg review``: the worker's warm engine or a ``sciseg segment`` child.

The progress is shown and the run can be cancelled; the prediction is published with ``sciseg segment``'s sidecars
(:func:`session.publish_prediction`) and the case opens; strokes made meanwhile on the open case are kept as a draft.
"""

from __future__ import annotations

import asyncio

from trame_server.utils.asynchronous import create_task

from ..errors import SCIsegError
from .predictions import publish_prediction, start_segmentation


class SegmentingMixin:
    """The segmentation runs of :class:`~.app.ReviewApp` (``self.run``, ``self.session``, ``self.state``)."""

    def _start_segmentation(self, case_id: str) -> None:
        self.run = start_segmentation(self.root, case_id, self.model, engines=self.session.engines)
        self.state.update({"running": True, "progress": 0, "progress_text": f"segmenting {case_id}...", "segmenting_id": case_id})
        create_task(self._watch_segmentation(case_id, self.run))

    async def _watch_segmentation(self, case_id: str, run) -> None:
        while not run.finished:
            events = run.poll()
            with self.state:
                for event in events:
                    if event.get("event") == "progress" and event.get("fraction") is not None:
                        self.state.progress = round(100 * float(event["fraction"]))
                        self.state.progress_text = str(event.get("message") or event.get("stage") or "")
            await asyncio.sleep(0.3)
        run.poll()
        with self.state:
            self.state.running = False
            self.state.segmenting_id = ""
            if run.cancelled:
                self.state.message = f"segmentation of {case_id} cancelled"
                return
            try:
                publish_prediction(self.root, case_id, run)
            except SCIsegError as error:
                self.state.error = str(error)
                return
            kept = self.session.case.case_id if self.session.case is not None and self.save_draft() else None
            self.refresh_cases()
            self._open(case_id, None)  # asked when it was clicked; strokes made since are in the draft
            if kept:
                self.state.message += f"; your strokes on {kept} are kept as your draft"

    def cancel_segmentation(self) -> None:
        if self.run is not None:
            self.run.cancel()
        self.state.running = False
        self.state.segmenting_id = ""
