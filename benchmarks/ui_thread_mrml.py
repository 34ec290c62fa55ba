"""How long the Slicer panel's MRML work on the UI thread takes (MRML is not thread-safe, so it stays there).

Times, on real scans loaded with slicer-core: writing the volume node to the child's input NIfTI (Segment),
exporting the cord/lesion segments to a label map (Measure, Export, Compare), importing a result's masks as
segments and making their closed surfaces (a finished Segment). Usage:
    PYTHONPATH=. python benchmarks/ui_thread_mrml.py [repeats]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer

from SCIsegLib import mrml

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SCANS = {
    "t2 (sct_testing_data)": ("sct_testing_data/t2/t2.nii.gz", "sct_testing_data/t2/t2_seg-manual.nii.gz"),
    "errsm_11 t2 (full FOV)": ("sct_2014_errsm/errsm_11/t2.nii.gz", "sct_2014_errsm/errsm_11/t2_manual_segmentation.nii.gz"),
}


def best_ms(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return 1000 * min(times)


def measure_scan(name: str, image_path: str, cord_path: str, repeats: int) -> None:
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    image = sitk.ReadImage(str(DATA / image_path))
    volume = mrml.add_volume_node(scene, image, "scan")
    cord = sitk.Cast(sitk.ReadImage(str(DATA / cord_path)) > 0.5, sitk.sitkUInt8)
    cord.CopyInformation(image)
    lesion = sitk.Image(cord.GetSize(), sitk.sitkUInt8)
    lesion.CopyInformation(image)
    node = mrml.import_sciseg_masks(logic, scene, volume, cord, lesion)
    folder = Path(tempfile.mkdtemp())
    write = best_ms(lambda: mrml.save_volume_node_as_nifti(volume, folder / "input.nii"), repeats)
    write_gz = best_ms(lambda: mrml.save_volume_node_as_nifti(volume, folder / "input.nii.gz"), repeats)
    export = best_ms(lambda: mrml.export_sciseg_label_map(logic, scene, node, volume), repeats)
    # What the panel does with a finished segmentation (SCIsegLogic.importResult): masks -> segments, then 3D surfaces.
    imported = best_ms(lambda: mrml.import_sciseg_masks(logic, scene, volume, cord, lesion), repeats)
    fresh = [mrml.import_sciseg_masks(logic, scene, volume, cord, lesion) for _ in range(repeats)]
    surfaces = best_ms(lambda: fresh.pop().CreateClosedSurfaceRepresentation(), repeats)
    print(f"{name}: size {image.GetSize()} ({np.prod(image.GetSize()) / 1e6:.1f} Mvoxels): "
          f"volume -> input .nii {write:.0f} ms (.nii.gz {write_gz:.0f} ms), segments -> label map {export:.0f} ms, "
          f"result masks -> segments {imported:.0f} ms, closed surfaces {surfaces:.0f} ms (best of {repeats})")


def main(repeats: int = 3) -> None:
    for name, (image_path, cord_path) in SCANS.items():
        measure_scan(name, image_path, cord_path, repeats)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
