"""The device combo box of the SCIseg panel, without Qt: which devices it lists and the sentence under it."""

from __future__ import annotations



def device_choices(devices: dict[str, str] | None, saved: str) -> list[tuple[str, str]]:
    """(label, value) items of the device combo box; the saved device is always one of them.

    ``devices``: what ``sciseg devices`` reported ({"cuda": "NVIDIA ...", "mps": ..., "cpu": ...}), {} when
    torch is missing, None while the probe runs. A saved "cuda" that the probe did not find stays listed
    ("not found") instead of being reset to auto, so a refresh never loses the rater's choice.
    """
    choices = [("Auto", "auto")]
    devices = devices or {}
    if "cuda" in devices:
        choices.append((f"GPU ({devices['cuda']})", "cuda"))
    if "mps" in devices:
        choices.append(("GPU (Apple MPS)", "mps"))
    choices.append(("CPU", "cpu"))
    if saved and saved not in {value for _label, value in choices}:
        choices.append((f"{saved} (not found)", saved))
    return choices


def device_summary(devices: dict[str, str] | None) -> str:
    """The sentence under the device combo box."""
    if devices is None:
        return "Looking for GPUs..."
    if not devices:
        return "PyTorch is not installed yet: it will be offered at the first segmentation."
    if "cuda" in devices:
        return f"GPU found: {devices['cuda']}."
    if "mps" in devices:
        return "Apple GPU (MPS) found."
    return "No GPU found: segmentation runs on the CPU and can take several minutes per scan."
