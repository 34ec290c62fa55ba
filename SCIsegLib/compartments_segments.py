"""What the Slicer panel and the review app decide about cord compartments, without Qt or a browser.

* :func:`segments_offered`: the segments a model gives the rater (SCIseg: spinal cord and lesion; a grey-matter
  model: grey matter, and white matter when a cord mask is at hand), each with its Slicer terminology entry (SNOMED
  CT codes of DICOM CID 7153: 12958003 spinal cord grey matter, 27088001 spinal cord white matter), colour, label value
  and the file suffix its export carries (``_label-GM_seg``, ``_label-WM_seg``, as ``_label-SC_seg``).
* :func:`engine_for_model`: the inference engine a model runs on (a 2D model goes to the plain nnU-Net engine).
* :func:`gm_output_names`: the files ``sciseg segment --model graymatter`` writes for one scan (SCT's names).
"""

from __future__ import annotations

from dataclasses import dataclass

from .models import ModelInfo, is_grey_matter

#: SCIseg's terminology context (``Resources/Terminology/SCIseg.term.json``).
TERMINOLOGY_CONTEXT = "SCIseg"


@dataclass(frozen=True)
class SegmentOffer:
    """One segment a UI creates: fixed id, display name, 0-1 RGB colour, Slicer terminology entry string (the
    format of ``vtkSlicerTerminologiesModuleLogic``), SNOMED CT type code, label value in the model's output, and the
    suffix of its exported file (``<stem><suffix>.nii.gz``)."""

    segment_id: str
    name: str
    color: tuple[float, float, float]
    terminology: str
    snomed_code: str
    export_suffix: str
    derived: bool = False  # computed from other segments (WM = cord - GM), not predicted


def _anatomy(code: str, meaning: str) -> str:
    return f"{TERMINOLOGY_CONTEXT}~SCT^123037004^Anatomical Structure~SCT^{code}^{meaning}~^^~~^^~^^"


SPINAL_CORD = SegmentOffer("spinal_cord", "Spinal cord", (1.0, 244 / 255, 209 / 255), _anatomy("2748008", "Spinal cord"),
                           "2748008", "_label-SC_seg")
LESION = SegmentOffer(
    "lesion", "Lesion", (220 / 255, 55 / 255, 40 / 255),
    f"{TERMINOLOGY_CONTEXT}~SCT^49755003^Morphologically Altered Structure~SCT^52988006^Lesion~^^"
    "~Anatomic codes - DICOM master list~SCT^2748008^Spinal cord~^^",
    "52988006", "_label-lesion_seg")
GREY_MATTER = SegmentOffer("grey_matter", "Grey matter", (200 / 255, 200 / 255, 215 / 255),
                           _anatomy("12958003", "Spinal cord gray matter"), "12958003", "_label-GM_seg")
WHITE_MATTER = SegmentOffer("white_matter", "White matter", (250 / 255, 250 / 255, 225 / 255),
                            _anatomy("27088001", "Spinal cord white matter"), "27088001", "_label-WM_seg", derived=True)


def segments_offered(model: ModelInfo, *, cord_available: bool = False) -> list[SegmentOffer]:
    """The segments a UI shows for ``model``'s prediction, in export order.

    A SCIseg model: spinal cord and lesion (what it has of them). A grey-matter model: grey matter, and white matter
    (= cord - GM) when ``cord_available`` (a cord segment or mask of the same scan is loaded).
    """
    offers: list[SegmentOffer] = []
    for structure in model.structures:
        if structure == "sc":
            offers.append(SPINAL_CORD)
        elif structure == "lesion":
            offers.append(LESION)
        elif is_grey_matter(structure):
            offers.append(GREY_MATTER)
            if cord_available:
                offers.append(WHITE_MATTER)
    return offers


def has_grey_matter(model: ModelInfo) -> bool:
    """Whether the model segments grey matter (the UIs then offer the GM segment and the GM/WM areas)."""
    return any(is_grey_matter(structure) for structure in model.structures)


def engine_for_model(model: ModelInfo, requested: str) -> str:
    """The engine setting to run ``model`` with: ``requested`` for a 3D model; for a 2D model, ``"reference"`` (the
    plain nnU-Net predictor, SCT's call) unless a fast engine was asked for by name.

    Why: the fast engines and their cord crop are built and measured for 3D patches (the crop already falls back to
    the whole image for a 2D configuration); SCT runs its 2D grey-matter model with nnU-Net's own predictor.
    """
    if model.is_2d and requested == "auto":
        return "reference"
    return requested


def gm_output_names(stem: str) -> dict[str, str]:
    """The files written for one scan ``<stem>``: SCT's ``_gmseg`` (``sct_deepseg_gm``) and ``_wmseg`` (the tutorial's
    ``sct_maths -sub``) masks and the per-slice area table."""
    return {"gm": f"{stem}_gmseg.nii.gz", "wm": f"{stem}_wmseg.nii.gz", "areas": f"{stem}_gmseg_areas.csv"}
