"""One error family for checkpoints: every error names the file and says what is wrong with it."""
from __future__ import annotations

import os
import pickle
from typing import Union


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; ``path`` is the file, ``reason`` what is wrong with it.

    A ``ValueError``: like any other bad input value, callers that report input errors catch it."""

    def __init__(self, path: Union[str, os.PathLike], reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


class UntrustedCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The file needs globals outside the allowlist, or its config holds code or interpolations."""


class CheckpointReadError(CheckpointError):
    """Not a readable torch checkpoint (missing, truncated, corrupt, or another format)."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint that is not what the operation needs: another model or format, weights
    that do not fit the model its config describes, a missing record or label set."""
