"""Exceptions that carry one clear sentence for the user.

The CLI prints the message of these errors (no traceback) and exits with code 2 for
``InputError`` (bad input: the user can fix it) and 1 for anything else.
"""


class SCIsegError(Exception):
    """Base class of every error SCIseg raises on purpose."""


class InputError(SCIsegError):
    """The user gave something we cannot use: a missing file, a 4D image, a broken model zip..."""


class ModelError(InputError):
    """A model folder or archive does not have the nnU-Net v2 layout, or a model name is unknown."""


class DownloadError(SCIsegError):
    """A download failed (network, HTTP status, checksum)."""


class CancelledError(SCIsegError):
    """The user cancelled a running segmentation; nothing was written."""
