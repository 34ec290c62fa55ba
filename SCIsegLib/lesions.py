"""Lesion morphometrics computed the way SCT's ``sct_analyze_lesion -m LESION -s CORD`` computes them.

All measures are taken in SCT's RPI orientation with arrays indexed (x, y, z) = (R->L, P->A, I->S)
and voxel sizes (px, py, pz) in mm, whatever the input orientation; sagittal slice numbers in
the output are those of the input file. Column names and units are SCT's:

* ``volume [mm3]``: voxels x px*py*pz.
* ``length [mm]``: sum over the axial slices holding the lesion of pz / cos(3D cord angle). Where the cord mask is
  broken up the angle nears 90 degrees and the length explodes, in SCT as here; a warning names those lesions.
* ``width [mm]``: max over axial slices of the A-P extent (voxels) x py x cos(sagittal angle).
* ``max_equivalent_diameter [mm]``: 2 sqrt(max over slices of area x cos(3D angle) / pi).
* ``max_axial_damage_ratio []``: max over slices of lesion area / cord area (no angle correction).
* the interpolated midsagittal slice (mean cord centre of mass in x over 5 slices around the largest
  lesion), the lesion's length and width on it, and the tissue bridges (spared cord dorsal and
  ventral to the lesion) on it and on every sagittal slice holding the lesion.

Lesions are the 18-connected components (skimage ``label``, connectivity 2) of the lesion mask,
labelled on the whole mask and then restricted to the cord mask, as SCT 7.3's ``label_lesion`` and ``measure`` do
(where a lesion lies wholly outside the cord SCT stops on an assertion; here it is dropped with a warning).

Sources: SCT 7.3 ``spinalcordtoolbox/scripts/sct_analyze_lesion.py`` for the measures and the
midsagittal interpolation, and the pull requests that changed them in 7.3: #5179 (a parasagittal lesion and ``-nli-slice`` report the cord A-P diameter, half of it per
bridge), #5202 and issue #5184 (the midsagittal bridges interpolate the two sagittal slices' minimum bridges,
or use the one slice holding the lesion).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy.ndimage import center_of_mass
from skimage.measure import label as label_components

from .centerline import CordAngles, cord_angles
from .errors import InputError
from .volume import orientation_of, reorient, reorient_like, same_grid, sct_to_itk_orientation

RPI = sct_to_itk_orientation("RPI")  # ITK "LAS"
#: Above this 3D cord angle (degrees) an axial slice counts for more than ~3 slice thicknesses in SCT's length;
#: a real cord hardly ever lies that flat in axial slices, a broken-up cord mask does (see :func:`_steep_angle_warning`).
STEEP_ANGLE_DEG = 70.0
BASE_COLUMNS = ["label", "volume [mm3]", "length [mm]", "width [mm]", "max_equivalent_diameter [mm]", "max_axial_damage_ratio []"]
MIDSAGITTAL_COLUMNS = [
    "interpolated_midsagittal_slice",
    "length_interpolated_midsagittal_slice [mm]",
    "width_interpolated_midsagittal_slice [mm]",
    "interpolated_dorsal_bridge_width [mm]",
    "interpolated_ventral_bridge_width [mm]",
    "interpolated_total_bridge_width [mm]",
    "dorsal_bridge_ratio [%]",
    "ventral_bridge_ratio [%]",
]


@dataclass
class LesionAnalysis:
    """Result of :func:`analyze_lesions`.

    Attributes:
        table: one row per lesion, SCT's columns.
        labels: the lesions numbered 1..N (after restriction to the cord) on the input grid.
        summary: total volume (mm3), total length (mm), max width (mm), lesion count.
        warnings: sentences about lesions that could not be measured.
    """

    table: pd.DataFrame
    labels: sitk.Image
    summary: dict
    warnings: list[str] = field(default_factory=list)


def _binary_xyz(image: sitk.Image, name: str) -> np.ndarray:
    """The image in RPI as an (x, y, z) array; refuses values other than 0 and 1."""
    array = sitk.GetArrayFromImage(reorient(image, RPI)).transpose(2, 1, 0)
    values = np.unique(array)
    if not set(values.tolist()) <= {0, 1}:
        shown = ", ".join(str(v) for v in values[:6])
        raise InputError(f"{name} is not a binary mask with 0 and 1 values (found {shown}).")
    return array.astype(bool)


def _stored_index(rpi_index: float, size: int, image: sitk.Image) -> float:
    """Convert an RPI x (R->L) index to the input file's index along the same axis."""
    code = orientation_of(image)
    axis = next(i for i, letter in enumerate(code) if letter in "LR")
    flipped = code[axis] == "R"  # RPI's x runs towards Left; this file's axis runs towards Right
    return (size - 1 - rpi_index) if flipped else rpi_index


def analyze_lesions(
    lesion: sitk.Image,
    cord: sitk.Image | None = None,
    image: sitk.Image | None = None,
    image_name: str = "image",
    nli_slice: int | None = None,
) -> LesionAnalysis:
    """Measure every lesion of a binary lesion mask (and its cord mask, on the same grid).

    Args:
        lesion: binary lesion mask (0/1), any orientation.
        cord: binary cord mask on the same grid; without it only the volume is computed (NaN elsewhere), as in SCT.
        image: optional image on the same grid: mean and std of its nonzero voxels inside each lesion.
        image_name: names the ``mean_<name>`` and ``std_<name>`` columns.
        nli_slice: axial slice of the neurological level of injury, numbered I->S as SCT's ``Slice (I->S)``
            (index along RPI z). Used only when the mask holds no lesion (SCT's ``-nli-slice``): the table then has
            one row, label 0, whose tissue bridges are the cord A-P diameter on the interpolated midsagittal slice
            at that level (total) and half of it (dorsal, ventral); the lesion measures are NaN.
    """
    for other, what in ((cord, "the cord mask"), (image, "the image")):
        if other is not None and not same_grid(other, lesion, tolerance_mm=1e-3):
            raise InputError(f"{what} and the lesion mask do not lie on the same grid (size, spacing, origin, direction).")
    lesion_xyz = _binary_xyz(lesion, "the lesion mask")
    cord_xyz = _binary_xyz(cord, "the cord mask") if cord is not None else None
    px, py, pz = reorient(lesion, RPI).GetSpacing()
    nx = lesion_xyz.shape[0]

    labelled = label_components(lesion_xyz, connectivity=2)
    all_labels = int(labelled.max())
    warnings: list[str] = []
    if cord_xyz is not None:
        labelled = np.where(cord_xyz, labelled, 0)
    found = [int(v) for v in np.unique(labelled) if v]
    for missing in sorted(set(range(1, all_labels + 1)) - set(found)):
        warnings.append(f"lesion {missing} lies entirely outside the cord mask and was not measured.")

    if nli_slice is not None and found:
        warnings.append("the NLI slice is used only when the mask holds no lesion; it was ignored.")
    if nli_slice is not None and not found:
        if cord_xyz is None:
            raise InputError("--nli-slice needs the cord mask (--cord): the tissue bridges are measured on it.")
        return _analysis_at_nli(lesion, cord_xyz, int(nli_slice), (px, py, pz), warnings)

    image_columns = [f"mean_{image_name}", f"std_{image_name}"] if image is not None else []
    rows: list[dict] = [{"label": value, "volume [mm3]": float(np.sum(labelled == value) * px * py * pz)} for value in found]
    slice_columns: list[str] = []

    if cord_xyz is not None and found:
        angles = cord_angles(cord_xyz, (px, py, pz))
        largest = found[int(np.argmax([row["volume [mm3]"] for row in rows]))]
        midsagittal = _interpolated_midsagittal_slice(cord_xyz, int(round(center_of_mass(labelled == largest)[2])))
        for row in rows:
            lesion_mask = labelled == row["label"]
            per_sagittal = _bridges_per_sagittal_slice(lesion_mask, cord_xyz, angles, py)
            row.update(_lesion_measures(lesion_mask, cord_xyz, angles, midsagittal, (px, py, pz), per_sagittal))
            steep = _steep_angle_warning(row["label"], lesion_mask, angles, pz, row["length [mm]"])
            if steep:
                warnings.append(steep)
            row["interpolated_midsagittal_slice"] = _stored_index(midsagittal, nx, lesion)
            for sagittal, (dorsal, ventral) in per_sagittal.items():
                prefix = f"slice_{int(_stored_index(sagittal, nx, lesion))}"
                for suffix, value in (("dorsal", dorsal), ("ventral", ventral), ("total", dorsal + ventral)):
                    column = f"{prefix}_{suffix}_bridge_width [mm]"
                    row[column] = value
                    if column not in slice_columns:
                        slice_columns.append(column)
    if image is not None:
        reference = sitk.GetArrayFromImage(reorient(image, RPI)).transpose(2, 1, 0).astype(float)
        for row in rows:
            inside = (labelled == row["label"]) & (reference != 0)
            row[image_columns[0]] = float(np.mean(reference[inside])) if inside.any() else np.nan
            row[image_columns[1]] = float(np.std(reference[inside])) if inside.any() else np.nan

    columns = BASE_COLUMNS + image_columns + (MIDSAGITTAL_COLUMNS if cord_xyz is not None else []) + slice_columns
    table = pd.DataFrame(rows, columns=columns)
    table["label"] = table["label"].astype(int)
    summary = {
        "lesion_count": len(rows),
        "total_volume_mm3": float(table["volume [mm3]"].sum()) if rows else 0.0,
        "total_length_mm": float(table["length [mm]"].sum()) if rows and cord_xyz is not None else None,
        "max_width_mm": float(table["width [mm]"].max()) if rows and cord_xyz is not None else None,
    }
    labels_rpi = sitk.GetImageFromArray(labelled.transpose(2, 1, 0).astype(np.uint16))
    labels_rpi.CopyInformation(reorient(lesion, RPI))
    return LesionAnalysis(table=table, labels=reorient_like(labels_rpi, lesion), summary=summary, warnings=warnings)


def _analysis_at_nli(
    lesion: sitk.Image, cord_xyz: np.ndarray, nli_slice: int, spacing: tuple[float, float, float], warnings: list[str]
) -> LesionAnalysis:
    """A mask without lesion and an NLI slice: the cord A-P diameter as tissue bridges (SCT 7.3 ``-nli-slice``)."""
    cord_slices = np.nonzero(cord_xyz.any(axis=(0, 1)))[0]
    if not (0 <= nli_slice < cord_xyz.shape[2]) or not cord_xyz[:, :, nli_slice].any():
        span = f"{cord_slices[0]}-{cord_slices[-1]}" if len(cord_slices) else "none"
        raise InputError(
            f"the NLI slice {nli_slice} is outside the cord mask (axial slices numbered I->S; the cord spans slices {span})."
        )
    _, py, _ = spacing
    angles = cord_angles(cord_xyz, spacing)
    midsagittal = _interpolated_midsagittal_slice(cord_xyz, nli_slice)
    bridges = _cord_diameter_as_bridges(cord_xyz, angles, midsagittal, py, [nli_slice])
    if bridges is None:
        raise InputError(f"no cord A-P diameter could be measured at the NLI slice {nli_slice}: the cord misses the midsagittal slice there.")
    row = {"label": 0, "interpolated_midsagittal_slice": _stored_index(midsagittal, cord_xyz.shape[0], lesion), **bridges}
    table = pd.DataFrame([row], columns=BASE_COLUMNS + MIDSAGITTAL_COLUMNS)
    table["label"] = table["label"].astype(int)
    summary = {
        "lesion_count": 0,
        "total_volume_mm3": 0.0,
        "total_length_mm": None,
        "max_width_mm": None,
        "nli_slice": nli_slice,
        "nli_cord_ap_diameter_mm": bridges["interpolated_total_bridge_width [mm]"],
    }
    labels = sitk.Image(lesion.GetSize(), sitk.sitkUInt16)
    labels.CopyInformation(lesion)
    return LesionAnalysis(table=table, labels=labels, summary=summary, warnings=warnings)


def per_slice_profile(lesion: sitk.Image, cord: sitk.Image) -> pd.DataFrame:
    """Per axial slice (RPI z, I->S): cord and lesion areas (mm2, no angle correction) and their ratio.

    The lesion is restricted to the cord, as in :func:`analyze_lesions`; slices without cord are left out.
    """
    if not same_grid(cord, lesion, tolerance_mm=1e-3):
        raise InputError("the cord mask and the lesion mask do not lie on the same grid.")
    lesion_xyz = _binary_xyz(lesion, "the lesion mask")
    cord_xyz = _binary_xyz(cord, "the cord mask")
    px, py, _ = reorient(lesion, RPI).GetSpacing()
    cord_area = cord_xyz.sum(axis=(0, 1)) * px * py
    lesion_area = (lesion_xyz & cord_xyz).sum(axis=(0, 1)) * px * py
    slices = np.nonzero(cord_area)[0]
    return pd.DataFrame(
        {
            "slice (I->S)": slices,
            "cord_area [mm2]": cord_area[slices],
            "lesion_area [mm2]": lesion_area[slices],
            "axial_damage_ratio []": lesion_area[slices] / cord_area[slices],
        }
    )


def _steep_angle_warning(label: int, lesion_xyz: np.ndarray, angles: CordAngles, pz: float, length_mm: float) -> str | None:
    """A sentence when the lesion lies on axial slices where the fitted cord centerline is steeper than
    :data:`STEEP_ANGLE_DEG` to the slice normal, else None.

    SCT's length is the sum over the lesion's axial slices of pz / cos(3D angle) (mm), the angle taken from the
    bspline centerline of the cord mask (``minmax=False``). Where the cord mask is broken up (fragments at the
    edge of the field of view, a jagged end), the centre of mass jumps from slice to slice and the spline, fitted
    almost through every point, rings: the angle nears 90 degrees and one slice can add metres. SCT gives the same
    number (this is its algorithm, kept for compatibility); the warning says which slices and why.
    Slices are numbered I->S (RPI z, SCT's ``Slice (I->S)``).
    """
    slices = np.unique(np.nonzero(lesion_xyz)[2])
    degrees = np.degrees(angles.angle_3d[slices])
    steep = slices[degrees > STEEP_ANGLE_DEG]
    if len(steep) == 0:
        return None
    shown = ", ".join(f"{int(z)} ({np.degrees(angles.angle_3d[z]):.1f} deg)" for z in steep[:5])
    return (
        f"lesion {label}: the cord centerline is almost parallel to the axial slices on slice(s) (I->S) {shown}, so "
        f"SCT's angle correction (slice thickness / cos(angle)) gives a length of {length_mm:.1f} mm for "
        f"{len(slices)} slice(s) of {pz:g} mm (and inflates its midsagittal length, shrinks its widths, diameter and "
        "bridges); SCT gives the same numbers. "
        "The cord mask is probably broken up there (fragments, field-of-view edge): check or correct it."
    )


def _interpolated_midsagittal_slice(cord_xyz: np.ndarray, z_center: int) -> float:
    """Mean cord centre of mass in x over the 5 axial slices z_center - 2 .. z_center + 2 that hold cord (RPI x, voxels)."""
    centres = [
        center_of_mass(cord_xyz[:, :, z])[0]
        for z in range(z_center - 2, z_center + 3)
        if 0 <= z < cord_xyz.shape[2] and np.any(cord_xyz[:, :, z])
    ]
    return float(np.mean(centres))


def _interpolate(first, second, position: float):
    """SCT's ``_interpolate_values``: (1 - f) * first + f * second with f the fractional part of ``position``."""
    factor = position - int(position)
    return (1 - factor) * first + factor * second


def _lesion_measures(
    lesion_xyz: np.ndarray,
    cord_xyz: np.ndarray,
    angles: CordAngles,
    midsagittal: float,
    spacing: tuple[float, float, float],
    per_sagittal: dict[int, tuple[float, float]],
) -> dict:
    """SCT's measures of one lesion; ``per_sagittal`` is :func:`_bridges_per_sagittal_slice` of it."""
    px, py, pz = spacing
    x, y, z = np.nonzero(lesion_xyz)
    slices = np.unique(z)
    area_per_slice = lesion_xyz.sum(axis=(0, 1))
    cord_per_slice = cord_xyz.sum(axis=(0, 1))
    widths = [(y[z == s].max() - y[z == s].min() + 1) * py * np.cos(angles.angle_sagittal[s]) for s in slices]
    areas = area_per_slice * np.cos(angles.angle_3d) * px * py
    measures = {
        "length [mm]": float(np.sum([pz / np.cos(angles.angle_3d[s]) for s in slices])),
        "width [mm]": float(max(widths)),
        "max_equivalent_diameter [mm]": float(2 * np.sqrt(areas.max() / np.pi)),
        "max_axial_damage_ratio []": float(max((area_per_slice[s] * px * py) / (cord_per_slice[s] * px * py) for s in slices)),
    }

    slice1, slice2 = int(np.floor(midsagittal)), int(np.ceil(midsagittal))
    plane = _interpolate(lesion_xyz[slice1].astype(float), lesion_xyz[slice2].astype(float), midsagittal)  # (y, z)
    lengths, widths_mid = [], []
    for s in np.unique(np.nonzero(plane)[1]):
        column = plane[:, s]
        lengths.append(np.mean(column[column > 0]) * pz / np.cos(angles.angle_sagittal[s]))
        widths_mid.append(py * np.cos(angles.angle_sagittal[s]) * np.sum(column[column > 0]))
    measures["length_interpolated_midsagittal_slice [mm]"] = float(np.sum(lengths))
    measures["width_interpolated_midsagittal_slice [mm]"] = float(max(widths_mid)) if widths_mid else 0.0
    measures.update(_interpolated_bridges(per_sagittal, cord_xyz, angles, midsagittal, py, slices))
    return measures


def _bridge_voxels(lesion_column: np.ndarray, cord_column: np.ndarray) -> tuple[int, int]:
    """(dorsal, ventral) spared cord voxels along one A-P column (y: posterior -> anterior)."""
    lesion_y = np.nonzero(lesion_column)[0]
    cord_y = np.nonzero(cord_column)[0]
    return max(int(lesion_y[0] - cord_y[0]), 0), max(int(cord_y[-1] - lesion_y[-1]), 0)


def _bridges_per_sagittal_slice(lesion_xyz: np.ndarray, cord_xyz: np.ndarray, angles: CordAngles, py: float) -> dict[int, tuple[float, float]]:
    """For every sagittal slice x (RPI) holding the lesion: the minimum dorsal and ventral bridges (mm) over its axial slices.

    Each bridge is counted in voxels along y on the axial slice z and scaled by py x cos(sagittal angle at z).
    """
    result = {}
    for x in np.unique(np.nonzero(lesion_xyz)[0]):
        dorsal, ventral = [], []
        for z in np.unique(np.nonzero(lesion_xyz[x])[1]):
            d, v = _bridge_voxels(lesion_xyz[x, :, z], cord_xyz[x, :, z])
            scale = py * np.cos(angles.angle_sagittal[z])
            dorsal.append(d * scale)
            ventral.append(v * scale)
        result[int(x)] = (float(min(dorsal)), float(min(ventral)))
    return result


def _cord_ap_diameter(cord_xyz: np.ndarray, x: int, axial_slices, angles: CordAngles, py: float) -> float | None:
    """Narrowest cord A-P diameter (mm) on sagittal slice x over ``axial_slices``: cord voxels of the A-P column
    x py x cos(sagittal angle); None where the cord is absent from every one of those columns."""
    diameters = [
        cord_xyz[x, :, z].sum() * py * np.cos(angles.angle_sagittal[z]) for z in axial_slices if cord_xyz[x, :, z].any()
    ]
    return float(min(diameters)) if diameters else None


def _interpolate_available(first: float | None, second: float | None, position: float) -> float | None:
    """Interpolate two per-slice values; when only one slice has a value, that value (SCT 7.3's one-slice fall-back)."""
    if first is None or second is None:
        return first if second is None else second
    return float(_interpolate(first, second, position))


def _bridge_columns(dorsal: float, ventral: float, total: float) -> dict:
    """SCT's midsagittal bridge columns; the ratios are dorsal (ventral) over total, in %."""
    return {
        "interpolated_dorsal_bridge_width [mm]": dorsal,
        "interpolated_ventral_bridge_width [mm]": ventral,
        "interpolated_total_bridge_width [mm]": total,
        "dorsal_bridge_ratio [%]": dorsal / total * 100 if total > 0 else 0.0,
        "ventral_bridge_ratio [%]": ventral / total * 100 if total > 0 else 0.0,
    }


def _cord_diameter_as_bridges(cord_xyz: np.ndarray, angles: CordAngles, midsagittal: float, py: float, axial_slices) -> dict | None:
    """Bridges when no lesion lies on the midsagittal slice: total = the interpolated narrowest cord A-P diameter over
    ``axial_slices``, dorsal = ventral = half of it (SCT 7.3, PR #5179). None where the cord is absent there."""
    slice1, slice2 = int(np.floor(midsagittal)), int(np.ceil(midsagittal))
    diameter = _interpolate_available(
        _cord_ap_diameter(cord_xyz, slice1, axial_slices, angles, py),
        _cord_ap_diameter(cord_xyz, slice2, axial_slices, angles, py),
        midsagittal,
    )
    if diameter is None:
        return None
    return _bridge_columns(diameter / 2, diameter / 2, diameter)


def _interpolated_bridges(
    per_sagittal: dict[int, tuple[float, float]],
    cord_xyz: np.ndarray,
    angles: CordAngles,
    midsagittal: float,
    py: float,
    lesion_slices: np.ndarray,
) -> dict:
    """Tissue bridges on the interpolated midsagittal slice, with the fall-backs of SCT 7.3.

    The bridges of a sagittal slice are its minimum dorsal and ventral bridges over the lesion's axial slices
    (the ``slice_<k>_*`` columns); on the interpolated midsagittal slice they are

    * lesion on both interpolation slices: the two slices' bridges interpolated linearly;
    * lesion on one of them only: that slice's bridges;
    * lesion on neither (a parasagittal lesion): the cord A-P diameter, see :func:`_cord_diameter_as_bridges`.
    """
    first, second = per_sagittal.get(int(np.floor(midsagittal))), per_sagittal.get(int(np.ceil(midsagittal)))
    if first is None and second is None:
        columns = _cord_diameter_as_bridges(cord_xyz, angles, midsagittal, py, lesion_slices)
        return columns if columns is not None else _bridge_columns(np.nan, np.nan, np.nan)
    dorsal = _interpolate_available(first[0] if first else None, second[0] if second else None, midsagittal)
    ventral = _interpolate_available(first[1] if first else None, second[1] if second else None, midsagittal)
    return _bridge_columns(dorsal, ventral, dorsal + ventral)
