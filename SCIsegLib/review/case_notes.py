"""The review app's binding of a case's flags, note and presence (decisions in :mod:`SCIsegLib.cases.notes` and
:mod:`SCIsegLib.cases.leases`, reached through :class:`.session.ReviewSession`).

* Flags (accept as is, artifact, unsure) and a note per rater and case: shown when a case opens or the rater's name
  changes, kept on disk as they change (atomic, nothing written when unchanged), in the case list at once and in
  the sidecars of the next export.
* Presence: the session holds a lease on its open case, refreshed every :data:`HEARTBEAT_S` seconds; the tools
  panel says who else has the open case open, and the case list who has each case open (refreshed with the
  heartbeat).

State keys: ``flags`` (list of :data:`FLAGS` keys), ``note`` (text), ``open_elsewhere`` (a sentence or "").
"""

from __future__ import annotations

import asyncio

from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_server.utils.asynchronous import create_task

from ..cases import FLAGS, HEARTBEAT_S, others_sentence
from ..errors import SCIsegError
from .cases import case_status


def bind_case_notes(app) -> None:
    """Add the state keys and their handlers to a :class:`.app.ReviewApp`, and start the heartbeat once served."""
    app.state.update({"flags": [], "note": "", "open_elsewhere": "", "flag_words": FLAGS})
    app.state.change("case_id")(lambda **_: show_case_notes(app))
    app.state.change("rater")(lambda **_: show_case_notes(app, keep_typed=True))
    app.state.change("flags", "note")(lambda **_: keep_case_notes(app))
    app.server.controller.on_server_ready.add(lambda **_: create_task(_heartbeats(app)))


def show_case_notes(app, keep_typed: bool = False) -> None:
    """The rater's flags and note on the open case, and who else has it open, into the state.

    ``keep_typed`` (the rater's name changed): flags and a note set before the name was typed (refused then) are kept
    under the new name when it has none, instead of being replaced by nothing."""
    rater = str(app.state.rater or "")
    kept = app.session.note_of(rater)
    if keep_typed and kept.empty and (app.state.flags or str(app.state.note or "").strip()):
        keep_case_notes(app)
    else:
        app.state.flags, app.state.note = list(kept.flags), kept.note
    app.state.open_elsewhere = others_sentence(app.session.heartbeat(rater)) if app.session.case is not None else ""


def keep_case_notes(app) -> None:
    """Keep the flags and note as they are now in the state (when they changed) and show them in the case list."""
    if app.session.case is None:
        return
    try:
        written = app.session.set_note(str(app.state.rater or ""), list(app.state.flags or []), str(app.state.note or ""))
    except SCIsegError as error:
        app.state.error = str(error)
        return
    if written is not None:
        _refresh_list_entry(app, app.session.case.case_id)


def _refresh_list_entry(app, case_id: str) -> None:
    entry = case_status(app.root, case_id, app.session.holder).as_dict()
    app.state.cases = [{**entry, "score": item["score"]} if item["case_id"] == case_id else item for item in app.state.cases]


async def _heartbeats(app, interval_s: float = HEARTBEAT_S) -> None:
    """Every ``interval_s``: the lease again, who else has the open case open, and the case list (others' leases)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            with app.state:
                if app.session.case is not None:
                    app.state.open_elsewhere = others_sentence(app.session.heartbeat(str(app.state.rater or "")))
                app.refresh_cases()
        except (SCIsegError, OSError) as error:  # a folder gone for a moment: the next beat tries again
            with app.state:
                app.state.error = f"the case list could not be refreshed ({error})"


def case_notes_ui() -> None:
    """The tools panel's part: who else has the case open, the flags and the note (only with a case open)."""
    v3.VAlert(v_if=("open_elsewhere",), type="info", density="compact", id="open-elsewhere", classes="mb-2 text-caption",
              text=("open_elsewhere",))
    with html.Div(v_if=("case_id",), id="case-notes", classes="mb-2"):
        with html.Div(classes="d-flex flex-wrap"):
            for key, words in FLAGS.items():
                v3.VCheckbox(v_model=("flags",), value=key, label=words, hide_details=True, density="compact",
                             id=f"flag-{key}", classes="mr-2")
        v3.VTextarea(v_model=("note",), label="Note on this case", rows=2, auto_grow=True, density="compact",
                     hide_details=True, id="case-note")


def case_list_item_ui() -> None:
    """Inside a case list item (``item``): its flags, notes and who has it open elsewhere."""
    html.Div("{{ item.flags.map((f) => flag_words[f]).join(' · ') }}", v_if=("item.flags.length",),
             classes="text-caption text-warning case-flags")
    html.Div("{{ item.notes.join(' | ') }}", v_if=("item.notes.length",), classes="text-caption case-notes")
    html.Div("open by {{ item.open_by.join(', ') }}", v_if=("item.open_by.length",), classes="text-caption text-info case-open-by")
