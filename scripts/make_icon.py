"""Draw SCIseg/Resources/Icons/SCIseg.png (128x128): a synthetic sagittal T2w cord with the cord and lesion overlays."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

import sys

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from SCIsegLib.phantom import Acquisition, LesionSpec, make_phantom  # noqa: E402

case = make_phantom(
    seed=12,
    acquisition=Acquisition(spacing_mm=(1.0, 0.5, 0.5), fov_mm=(30.0, 48.0, 64.0), orientation="LAS"),
    lesions=[LesionSpec(center_si_mm=0.0, length_mm=18.0, width_fraction=0.95, contrast=0.9, haemorrhage=True)],
    noise=0.01,
)
image = sitk.GetArrayFromImage(case.image)
labels = sitk.GetArrayFromImage(case.labels)
middle = image.shape[2] // 2
slice_image = image[:, :, middle]
slice_labels = labels[:, :, middle]
figure = plt.figure(figsize=(1.28, 1.28), dpi=100)
axis = figure.add_axes((0, 0, 1, 1))
axis.imshow(slice_image, cmap="gray", origin="lower", vmin=0, vmax=np.percentile(slice_image, 99.5))
overlay = np.zeros(slice_labels.shape + (4,))
overlay[slice_labels == 1] = (1.0, 0.85, 0.3, 0.45)
overlay[slice_labels == 2] = (0.9, 0.15, 0.1, 0.8)
axis.imshow(overlay, origin="lower")
axis.set_axis_off()
output = Path(__file__).resolve().parents[1] / "SCIseg" / "Resources" / "Icons" / "SCIseg.png"
figure.savefig(output, dpi=100)
print(output)
