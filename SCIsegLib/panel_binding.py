"""Which case a segmentation node of the panel belongs to: the node attributes that bind it, and the tests on them.

A segmentation made for a case carries the case's :attr:`~SCIsegLib.cases.scan.Scan.key` (:data:`DRAWN_ON_ATTRIBUTE`);
one that a newer segmentation of the case replaced is marked :data:`SUPERSEDED_ATTRIBUTE` (its value: the file its
unexported edits were kept in, or ""). Only a segmentation that is the case's (:func:`is_bound`) is drafted and
exported. Both :mod:`SCIsegLib.panel_case` and :mod:`SCIsegLib.panel_grey_matter_case` use these (the first imports
the second, so they live here).
"""

from __future__ import annotations

DRAWN_ON_ATTRIBUTE = "SCIseg.DrawnOn"
SUPERSEDED_ATTRIBUTE = "SCIseg.Superseded"


def made_for_scan(segmentation_node, case) -> bool:
    """True when the segmentation was made for ``case``'s scan, superseded or not."""
    return segmentation_node is not None and segmentation_node.GetAttribute(DRAWN_ON_ATTRIBUTE) == case.scan.key


def is_superseded(segmentation_node) -> bool:
    return segmentation_node is not None and segmentation_node.GetAttribute(SUPERSEDED_ATTRIBUTE) is not None


def is_bound(segmentation_node, case) -> bool:
    """True when the segmentation is the case's: made for ``case`` (it carries the case's scan key) and not
    superseded since (:func:`SCIsegLib.panel_case.supersede`)."""
    return made_for_scan(segmentation_node, case) and not is_superseded(segmentation_node)
