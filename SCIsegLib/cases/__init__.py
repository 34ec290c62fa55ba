"""The case: one scan bound to the segmentation being edited. Qt-free and web-free; the Slicer panel and the review app bind to it.

A case knows which scan it is about (:class:`Scan`: resolved path, sha256, BIDS subject/session, :class:`Grid`:
size (i, j, k) voxels, spacing mm, origin mm LPS, direction), what it was opened from (a :class:`Base`: an
exported version with rater, date and parent, the model's prediction, or empty masks), whether the label map
being edited has unsaved edits, the rater's draft, and how it is exported. Label maps are 0 background,
1 cord only, 2 lesion; arrays are (z, y, x) uint8, images SimpleITK.

API (everything else is detail)::

    case = Case.open(root, image)                       # latest version, else prediction, else empty
    case = Case.open(root, image, choice="v001")        # or "prediction", "empty", any name in case.bases
    case = Case.open(root, image, draft_of="alice")     # alice's draft restored over its base (when she has one)
    case = Case.open(root, image, prediction=labels_path, subject="01")  # the prediction as one label map
                                                        # (or (cord, lesion)); subject/session for non-BIDS names
    case.bases, case.base, case.opening_sentence()      # the choices (newest version first) and what was opened
    case.labels                                         # the label map opened, (z, y, x) uint8
    case.scan.key                                       # bind a segmentation to it when you make one
    case.check(labels_image, drawn_on=key)              # refuse (CaseRefused, one sentence) another scan or grid
    case.unsaved(labels_zyx), case.safe(labels_zyx)     # edits not exported / nothing that can be lost
    case.save_draft(labels_zyx, rater)                  # after each stroke: atomic, only when something changed
    case.drafts(), case.discard_draft(rater)            # every rater's drafts of this case, newest first
    outcome = case.export(labels_image, rater, drawn_on=key, model=...)   # a new version with its parent
    outcome.result.version, outcome.warning             # warning: started from an older base than the latest
    case.set_note(rater, ["artifact"], "motion at C3")  # flags and note kept per rater (atomic), in the next export
    case.note_of(rater), case.notes()                   # one rater's, every rater's (newest first)
    case.hold(holder, rater), case.release(holder)      # this session has the case open (heartbeat: hold again)
    case.open_elsewhere(holder)                         # the other sessions that have it open now (stale ignored)

Rules it keeps:

* Export, measure and compare call :meth:`Case.check` first: a segmentation made on another scan (its ``drawn_on``
  key differs) or lying on another grid is refused with one sentence and nothing is written.
* Every export records its parent (the base: ``{"Kind": "version", "Version": 2}``, ``prediction`` or ``empty``),
  and warns when versions newer than that base existed (a correction of the prediction while v001 existed).
  After an export the case's base is the new version and the rater's draft is removed.
* Drafts live in ``derivatives/labels/.drafts/sub-X/[ses-Y/]anat/<stem>/<rater key>.nrrd``, one per rater and
  case, each written whole (temporary file + rename); a draft of another content of the scan (sha256) is refused.
* Notes live in ``derivatives/labels/.notes/.../<stem>/<rater key>.json`` (:mod:`.notes`), leases in
  ``derivatives/labels/.leases/.../<stem>/<holder>.json`` (:mod:`.leases`); both written whole.
* ``<root>/derivatives`` may itself be a link (another disk): it is resolved once, and every path below it
  (prediction, labels, versions, drafts) must resolve inside it, else that case is refused (:func:`inside_derivatives`).
"""

from .bases import EMPTY, Base, base_labels, prediction_of, versions_of
from .case import Case, ExportOutcome, default_prediction_paths, derivatives_folder, inside_derivatives
from .drafts import DRAFTS, Draft, draft_folder, drafts_in, rater_key
from .leases import HEARTBEAT_S, STALE_S, Lease, lease_folder, live_leases, new_holder, others_sentence
from .notes import FLAGS, CaseNote, notes_folder, notes_in
from .scan import CaseRefused, Grid, Scan, scan_of

__all__ = [
    "DRAFTS", "EMPTY", "Base", "Case", "CaseRefused", "Draft", "drafts_in", "ExportOutcome", "Grid", "Scan", "base_labels",
    "default_prediction_paths", "derivatives_folder", "draft_folder", "inside_derivatives", "prediction_of",
    "rater_key", "scan_of", "versions_of", "FLAGS", "CaseNote", "notes_folder", "notes_in", "HEARTBEAT_S", "STALE_S",
    "Lease", "lease_folder", "live_leases", "new_holder", "others_sentence",
]
