"""SCIseg: spinal cord and lesion segmentation of spinal cord injury MRI with nnU-Net v2 (SCIseg model).

Import the pieces you need, e.g. ``from SCIsegLib.volume import load_image``; this package imports
neither torch nor Slicer at import time.
"""

__version__ = "0.1.0"
