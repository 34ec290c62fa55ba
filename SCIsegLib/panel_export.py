"""``python -m SCIsegLib.panel_export ...``: the Slicer panel's Export, as a child process, through the case model.

The panel writes the rater's label map (0, 1 cord only, 2 lesion, on the volume's grid) to a temporary file and
starts this child, so Slicer's UI never waits on the export. A grey-matter segment comes as its own mask
(``--grey-matter``, with the model's mask and name) and is written as ``<stem>_label-GM_seg.nii.gz``. The child
opens the case on the base the segmentation started from (``--base``: ``v002``, ``prediction`` or ``empty``; a prediction made in Slicer is
passed as ``--prediction-cord/--prediction-lesion``) and calls :meth:`SCIsegLib.cases.Case.export`: refused with
one sentence (exit 2, nothing written) when the label map was drawn on another scan (``--drawn-on``, the case
key the segmentation carries) or grid; else a new version recording its parent, and the rater's draft removed
(unless it was written after ``--labels`` and holds other labels: edits made while the export ran).

Prints one JSON line: ``{"version": 3, "folder": ".../v003", "parent": "v002", "warning": null | sentence}``.
Exit codes: 0 done, 2 refused or bad input (the sentence on stderr, ``sciseg: ...``), 130 cancelled, 1 a bug.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cancel import install
from .errors import CancelledError, InputError


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m SCIsegLib.panel_export", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="BIDS dataset (the panel's export folder)")
    parser.add_argument("--image", type=Path, required=True, help="the scan's file (the case)")
    parser.add_argument("--labels", type=Path, required=True, help="the rater's label map on the scan's grid")
    parser.add_argument("--rater", required=True)
    parser.add_argument("--base", default=None, help="what the segmentation started from (v002, prediction, empty)")
    parser.add_argument("--drawn-on", default=None, help="the case key the segmentation carries (Scan.key)")
    parser.add_argument("--prediction-cord", type=Path, default=None)
    parser.add_argument("--prediction-lesion", type=Path, default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--subject", default=None, help="BIDS subject when the file name has none")
    parser.add_argument("--draft-rater", default=None, help="the rater whose draft to remove, when not --rater")
    parser.add_argument("--grey-matter", type=Path, default=None, help="the rater's grey-matter mask on the scan's grid")
    parser.add_argument("--predicted-grey-matter", type=Path, default=None, help="the grey-matter model's mask")
    parser.add_argument("--grey-matter-model", default=None)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """Export through the case; returns what is printed."""
    import SimpleITK as sitk

    from .cases import Case
    from .panel_grey_matter import discard_drafts, export_masks

    prediction = None
    if args.prediction_cord is not None and args.prediction_lesion is not None:
        prediction = (args.prediction_cord, args.prediction_lesion)
    case = Case.open(args.root, args.image, choice=args.base, prediction=prediction, subject=args.subject)
    parent = case.base.name
    taken = args.labels.stat().st_mtime  # the panel wrote them as it started this child: later drafts are later edits
    masks = export_masks(args.grey_matter, args.predicted_grey_matter, args.grey_matter_model)
    outcome = case.export(sitk.ReadImage(str(args.labels)), args.rater, drawn_on=args.drawn_on, model=args.model,
                          draft_rater=args.draft_rater, extra_masks=masks, labels_taken=taken)
    grey_matter = None
    if masks:
        [(mask, _fields)] = masks.values()
        grey_matter = sitk.GetArrayFromImage(case.check(mask, args.drawn_on, "the grey matter"))
    discard_drafts(case, {args.rater, args.draft_rater or args.rater}, grey_matter, taken)  # the grey matter's too
    return {"version": outcome.result.version, "folder": str(outcome.result.version_folder), "parent": parent,
            "warning": outcome.warning}


def main(argv: list[str] | None = None) -> int:
    install()
    try:
        print(json.dumps(run(arguments(argv))), flush=True)
        return 0
    except CancelledError as error:
        sys.stderr.write(f"sciseg: {error}\n")
        return 130
    except (InputError, OSError) as error:
        sys.stderr.write(f"sciseg: {error}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
