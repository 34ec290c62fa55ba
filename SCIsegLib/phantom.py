"""Synthetic T2-weighted spinal cord scans with known truth, for tests, the demo and training.

The anatomy is defined in millimetres in a patient frame centred on the field of view:
``rl`` (towards the patient's Left), ``ap`` (towards Anterior), ``si`` (towards Superior), and
sampled at the centre of every voxel of the requested grid, so any spacing, orientation or
oblique tilt gives the same anatomy. Structures, in T2w contrast (CSF brightest):

* a curved spinal cord (elliptic cross-section) inside hyperintense CSF (the thecal sac);
* vertebral bodies anterior to the canal, separated by brighter intervertebral discs,
  and darker posterior elements behind it; soft tissue elsewhere, subcutaneous fat at the back;
* intramedullary lesions: hyperintense oedema (ellipsoids restricted to the cord), optionally with a
  hypointense haemorrhagic core;
* a smooth multiplicative bias field and Rician noise.

Truth labels follow SCIseg's convention: 0 background, 1 cord without lesion, 2 lesion (inside cord).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

#: Unit vectors of the anatomical directions in ITK's LPS physical space.
_LPS_VECTOR = {
    "L": (1.0, 0.0, 0.0),
    "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0),
    "A": (0.0, -1.0, 0.0),
    "S": (0.0, 0.0, 1.0),
    "I": (0.0, 0.0, -1.0),
}
_AXIS_INDEX = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}

# T2w intensities, relative to CSF = 1.
_INTENSITY = {
    "tissue": 0.25,
    "fat": 0.75,
    "csf": 1.0,
    "cord": 0.42,
    "vertebra": 0.30,
    "disc": 0.58,
    "posterior_elements": 0.18,
    "haemorrhage": 0.12,
}


@dataclass(frozen=True)
class LesionSpec:
    """One intramedullary lesion, placed relative to the cord centreline.

    Attributes:
        center_si_mm: position along the cord (mm from the FOV centre, towards Superior).
        length_mm: full extent along S-I (mm).
        width_fraction: in-plane size as a fraction of the cord's radii (0-1.2; >1 reaches the cord edge).
        contrast: oedema intensity relative to CSF (cord is 0.42, CSF 1.0); lower is harder to see.
        offset_ap_mm: shift of the lesion centre towards Anterior (mm).
        haemorrhage: add a hypointense core (a third of the lesion's size).
        edge_mm: width of the blurry lesion border (mm); larger is more ambiguous.
    """

    center_si_mm: float = 0.0
    length_mm: float = 14.0
    width_fraction: float = 0.7
    contrast: float = 0.8
    offset_ap_mm: float = 0.0
    haemorrhage: bool = False
    edge_mm: float = 0.8


@dataclass(frozen=True)
class Acquisition:
    """Voxel grid of a synthetic scan.

    Attributes:
        spacing_mm: voxel size along (R-L, A-P, S-I) in mm, whatever the axis order of the file.
        fov_mm: field of view along (R-L, A-P, S-I) in mm.
        orientation: ITK/nibabel code of the file's axes ("to" letters), e.g. "PSR" for a
            sagittal scan stored like SCT's test data, "LAS" (= SCT "RPI") for axial.
        tilt_deg: oblique tilt of the slices about the R-L axis (degrees).
    """

    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    fov_mm: tuple[float, float, float] = (32.0, 64.0, 128.0)
    orientation: str = "PSR"
    tilt_deg: float = 0.0


#: Typical clinical acquisitions (spacing and FOV along R-L, A-P, S-I).
SAGITTAL = Acquisition(spacing_mm=(2.0, 0.8, 0.8), fov_mm=(36.0, 64.0, 112.0), orientation="PSR")
AXIAL = Acquisition(spacing_mm=(0.6, 0.6, 3.0), fov_mm=(38.4, 38.4, 72.0), orientation="LAS")
ISOTROPIC = Acquisition(spacing_mm=(1.0, 1.0, 1.0), fov_mm=(32.0, 64.0, 128.0), orientation="PSR")


@dataclass
class Phantom:
    """A synthetic scan and its truth, all on the same grid."""

    image: sitk.Image
    labels: sitk.Image  # uint8: 0 background, 1 cord only, 2 lesion
    lesions: list[LesionSpec] = field(default_factory=list)

    @property
    def cord(self) -> sitk.Image:
        """Binary cord mask (labels 1 and 2), as SCIseg's ``_sc_seg`` output."""
        return sitk.Cast(self.labels >= 1, sitk.sitkUInt8)

    @property
    def lesion(self) -> sitk.Image:
        """Binary lesion mask (label 2), as SCIseg's ``_lesion_seg`` output."""
        return sitk.Cast(self.labels == 2, sitk.sitkUInt8)


def grid_image(acquisition: Acquisition) -> sitk.Image:
    """An empty float32 image with the acquisition's size, spacing, direction, centred on (0, 0, 0) mm."""
    code = acquisition.orientation.upper()
    if sorted(_AXIS_INDEX[letter] for letter in code) != [0, 1, 2]:
        raise ValueError(f"orientation {acquisition.orientation!r} must name each anatomical axis once")
    tilt = np.deg2rad(acquisition.tilt_deg)
    rotation = np.array(
        [[1.0, 0.0, 0.0], [0.0, np.cos(tilt), -np.sin(tilt)], [0.0, np.sin(tilt), np.cos(tilt)]]
    )  # about the L-R axis
    direction = rotation @ np.array([_LPS_VECTOR[letter] for letter in code]).T
    spacing = np.array([acquisition.spacing_mm[_AXIS_INDEX[letter]] for letter in code])
    fov = np.array([acquisition.fov_mm[_AXIS_INDEX[letter]] for letter in code])
    size = np.maximum(np.round(fov / spacing).astype(int), 2)
    origin = -direction @ (spacing * (size - 1) / 2.0)
    image = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in direction.ravel()])
    image.SetOrigin([float(v) for v in origin])
    return image


def _patient_coordinates(image: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left, anterior, superior) coordinates in mm of every voxel centre, as (z, y, x) arrays."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in reversed(size)), indexing="ij")
    direction = np.array(image.GetDirection(), dtype=np.float32).reshape(3, 3)
    scaled = direction * np.array(image.GetSpacing(), dtype=np.float32)
    origin = np.array(image.GetOrigin(), dtype=np.float32)
    x_lps = origin[0] + scaled[0, 0] * i + scaled[0, 1] * j + scaled[0, 2] * k
    y_lps = origin[1] + scaled[1, 0] * i + scaled[1, 1] * j + scaled[1, 2] * k
    z_lps = origin[2] + scaled[2, 0] * i + scaled[2, 1] * j + scaled[2, 2] * k
    return x_lps, -y_lps, z_lps


def _soft(signed_distance_mm: np.ndarray, edge_mm: float) -> np.ndarray:
    """Partial-volume membership in [0, 1] from a signed distance (negative inside)."""
    return np.clip(0.5 - signed_distance_mm / edge_mm, 0.0, 1.0)


def _ellipse_distance(du: np.ndarray, dv: np.ndarray, radius_u: float, radius_v) -> np.ndarray:
    """Approximate signed distance (mm) to an ellipse with radii ``radius_u``, ``radius_v``."""
    scale = np.minimum(radius_u, radius_v)
    return (np.sqrt((du / radius_u) ** 2 + (dv / radius_v) ** 2) - 1.0) * scale


def random_lesions(rng: np.random.Generator, count: int, half_length_mm: float) -> list[LesionSpec]:
    """Draw ``count`` lesions spread along the cord, not overlapping, within +-``half_length_mm``."""
    lesions: list[LesionSpec] = []
    span = max(half_length_mm - 12.0, 1.0)
    centers = np.sort(rng.uniform(-span, span, size=count))
    for index, center in enumerate(centers):
        gap = np.inf if count == 1 else np.min(np.abs(np.delete(centers, index) - center))
        lesions.append(
            LesionSpec(
                center_si_mm=float(center),
                length_mm=float(min(rng.uniform(6.0, 24.0), max(gap - 4.0, 4.0))),
                width_fraction=float(rng.uniform(0.45, 1.0)),
                contrast=float(rng.uniform(0.65, 0.92)),
                offset_ap_mm=float(rng.uniform(-1.0, 1.0)),
                haemorrhage=bool(rng.uniform() < 0.3),
                edge_mm=float(rng.uniform(0.5, 1.5)),
            )
        )
    return lesions


def make_phantom(
    seed: int = 0,
    acquisition: Acquisition = ISOTROPIC,
    lesions: list[LesionSpec] | int | None = 1,
    *,
    noise: float = 0.03,
    bias: float = 0.15,
    scale: float = 1000.0,
) -> Phantom:
    """Generate a synthetic T2w scan with its truth labels.

    Args:
        seed: random seed; the same seed and arguments give the same voxels.
        acquisition: grid (spacing, FOV, orientation, tilt).
        lesions: explicit lesions, a number of random lesions, or None/0 for a healthy cord.
        noise: Rician noise sigma relative to the CSF intensity.
        bias: strength of the multiplicative bias field (0 = none; 0.15 gives about +-30 %).
        scale: intensity of CSF in the output (arbitrary units, as in MRI).
    """
    rng = np.random.default_rng(seed)
    grid = grid_image(acquisition)
    left, anterior, superior = _patient_coordinates(grid)
    edge = float(np.mean(sorted(acquisition.spacing_mm)[:2]))

    # Cord centreline: a gentle curve in both planes (mm), lordosis-like bend along A-P.
    half_si = acquisition.fov_mm[2] / 2.0
    phase = rng.uniform(0, 2 * np.pi, size=2)
    amplitude = rng.uniform(0.5, 2.5, size=2)
    bend = rng.uniform(-4.0, 4.0)
    s = superior / half_si
    center_left = amplitude[0] * np.sin(np.pi * s + phase[0])
    center_ant = amplitude[1] * np.sin(0.7 * np.pi * s + phase[1]) + bend * (s**2 - 0.33)
    radius_lr = rng.uniform(5.0, 6.5) * (1.0 + 0.08 * np.cos(np.pi * s))  # cervical enlargement
    radius_ap = rng.uniform(3.5, 4.3) * (1.0 + 0.05 * np.cos(np.pi * s))
    du = left - center_left
    dv = anterior - center_ant

    cord_distance = _ellipse_distance(du, dv, radius_lr, radius_ap)
    csf_distance = _ellipse_distance(du, dv - 0.5, radius_lr + 3.5, radius_ap + 3.0)
    canal_front = center_ant + 0.5 + radius_ap + 3.0
    canal_back = center_ant + 0.5 - radius_ap - 3.0

    # Vertebral bodies and discs anterior to the canal, posterior elements behind it.
    body_front = canal_front + 1.5
    in_body_band = np.maximum(body_front - anterior, anterior - (body_front + 16.0))
    body_distance = np.maximum(in_body_band, np.abs(left) - 11.0)
    level_height = rng.uniform(16.0, 20.0)
    level_phase = rng.uniform(0, level_height)
    position_in_level = np.mod(superior + level_phase, level_height)
    disc_distance = np.maximum(body_distance, np.abs(position_in_level - level_height / 2.0) - 2.5)
    posterior_distance = np.maximum(
        np.maximum(anterior - (canal_back - 1.5), (canal_back - 12.0) - anterior), np.abs(left) - 9.0
    )
    fat_distance = (canal_back - 22.0) - anterior

    image = np.full(left.shape, _INTENSITY["tissue"], dtype=np.float32)
    image += 0.03 * np.sin(0.21 * left + 0.13 * superior) * np.cos(0.17 * anterior)  # muscle texture
    layers = [
        (fat_distance, "fat"),
        (body_distance, "vertebra"),
        (disc_distance, "disc"),
        (posterior_distance, "posterior_elements"),
        (csf_distance, "csf"),
    ]
    for distance, name in layers:
        weight = _soft(distance, 1.5 * edge)
        image = image * (1 - weight) + _INTENSITY[name] * weight
    cord_weight = _soft(cord_distance, edge)
    image = image * (1 - cord_weight) + _INTENSITY["cord"] * cord_weight

    cord_truth = cord_distance < 0
    lesion_truth = np.zeros_like(cord_truth)
    if isinstance(lesions, int):
        lesions = random_lesions(rng, lesions, half_si)
    lesions = list(lesions or [])
    for lesion in lesions:
        offset_si = superior - lesion.center_si_mm
        semi_si = lesion.length_mm / 2.0
        semi_lr = lesion.width_fraction * radius_lr
        semi_ap = lesion.width_fraction * radius_ap
        q = np.sqrt((du / semi_lr) ** 2 + ((dv - lesion.offset_ap_mm) / semi_ap) ** 2 + (offset_si / semi_si) ** 2)
        distance = (q - 1.0) * np.minimum(np.minimum(semi_lr, semi_ap), semi_si)
        inside = (distance < 0) & cord_truth
        lesion_truth |= inside
        weight = _soft(distance, lesion.edge_mm) * cord_weight
        image = image * (1 - weight) + lesion.contrast * weight
        if lesion.haemorrhage:
            core = _soft((q - 0.35) * np.minimum(np.minimum(semi_lr, semi_ap), semi_si), edge) * cord_weight
            image = image * (1 - core) + _INTENSITY["haemorrhage"] * core

    if bias > 0:
        extent = np.array(acquisition.fov_mm, dtype=np.float32) / 2.0
        coefficients = rng.normal(0.0, bias, size=4)
        field_log = (
            coefficients[0] * left / extent[0]
            + coefficients[1] * anterior / extent[1]
            + coefficients[2] * superior / extent[2]
            + coefficients[3] * (superior / extent[2]) ** 2
        )
        image = image * np.exp(field_log)
    if noise > 0:
        real = image + rng.normal(0.0, noise, size=image.shape).astype(np.float32)
        imaginary = rng.normal(0.0, noise, size=image.shape).astype(np.float32)
        image = np.sqrt(real**2 + imaginary**2)

    labels = cord_truth.astype(np.uint8)
    labels[lesion_truth] = 2
    out = sitk.GetImageFromArray((image * scale).astype(np.float32))
    out.CopyInformation(grid)
    truth = sitk.GetImageFromArray(labels)
    truth.CopyInformation(grid)
    return Phantom(image=out, labels=truth, lesions=lesions)


def paint_lesions(
    image: sitk.Image,
    cord: sitk.Image,
    lesions: list[LesionSpec] | int = 1,
    seed: int = 0,
) -> Phantom:
    """Paint synthetic hyperintense intramedullary lesions onto a real scan with a cord mask.

    The lesion intensity is taken between the scan's own cord and CSF intensities (measured in
    the cord and in a 3 mm ring around it), and added as an offset so the scan's noise and texture
    stay. Lesion positions are along the cord mask's own centreline (S-I in mm from its middle).

    Args:
        image: a real T2w scan (any orientation).
        cord: its binary cord mask on the same grid.
        lesions: explicit lesions (``center_si_mm`` relative to the middle of the cord's S-I extent)
            or the number of random lesions.
        seed: seed of the random lesions.

    Returns:
        A :class:`Phantom` with the painted image (float32) and labels 0/1/2 on the input grid.
    """
    rng = np.random.default_rng(seed)
    voxels = sitk.GetArrayFromImage(image).astype(np.float32)
    cord_truth = sitk.GetArrayFromImage(cord) > 0
    if not cord_truth.any():
        raise ValueError("the cord mask is empty; cannot paint a lesion inside it")
    left, anterior, superior = _patient_coordinates(image)
    ring_mm = 3.0
    distance_outside = sitk.GetArrayFromImage(
        sitk.SignedMaurerDistanceMap(sitk.Cast(cord > 0, sitk.sitkUInt8), insideIsPositive=False, useImageSpacing=True)
    )
    ring = (distance_outside > 0) & (distance_outside <= ring_mm)
    cord_level = float(np.median(voxels[cord_truth]))
    csf_level = float(np.percentile(voxels[ring], 90)) if ring.any() else cord_level * 2.0

    si_cord = superior[cord_truth]
    middle_si = 0.5 * (si_cord.min() + si_cord.max())
    if isinstance(lesions, int):
        lesions = random_lesions(rng, lesions, 0.5 * (si_cord.max() - si_cord.min()))
    lesion_truth = np.zeros_like(cord_truth)
    painted = voxels.copy()
    for lesion in lesions:
        center_si = middle_si + lesion.center_si_mm
        near = cord_truth & (np.abs(superior - center_si) <= 2.0)
        if not near.any():
            continue
        center_left, center_ant = float(left[near].mean()), float(anterior[near].mean())
        radius_lr = 0.5 * float(np.ptp(left[near])) + 0.5
        radius_ap = 0.5 * float(np.ptp(anterior[near])) + 0.5
        semi = (
            max(lesion.width_fraction * radius_lr, 1.0),
            max(lesion.width_fraction * radius_ap, 1.0),
            lesion.length_mm / 2.0,
        )
        q = np.sqrt(
            ((left - center_left) / semi[0]) ** 2
            + ((anterior - center_ant - lesion.offset_ap_mm) / semi[1]) ** 2
            + ((superior - center_si) / semi[2]) ** 2
        )
        distance = (q - 1.0) * min(semi)
        lesion_truth |= (distance < 0) & cord_truth
        weight = _soft(distance, lesion.edge_mm) * cord_truth
        target = cord_level + (lesion.contrast - _INTENSITY["cord"]) / (1.0 - _INTENSITY["cord"]) * (
            csf_level - cord_level
        )
        painted += weight * (target - cord_level)
    labels = cord_truth.astype(np.uint8)
    labels[lesion_truth] = 2
    out = sitk.GetImageFromArray(painted)
    out.CopyInformation(image)
    truth = sitk.GetImageFromArray(labels)
    truth.CopyInformation(image)
    return Phantom(image=out, labels=truth, lesions=list(lesions))
