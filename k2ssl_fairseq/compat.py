"""fairseq patch: checkpoint loading on torch >= 2.6, through :mod:`k2ssl_fairseq.checkpoints`.

torch >= 2.6 unpickles with its restricted loader by default, and fairseq checkpoints hold a few
pickled fairseq objects, so every fairseq loading path (resume, ``load_model_ensemble_and_task``,
fine-tuning from ``w2v_path``) fails with an ``UnpicklingError``. This patch registers the allowlist
of :func:`checkpoints.checkpoint_globals` with torch and gives fairseq's ``checkpoint_utils`` a
``torch`` whose ``load`` is :func:`checkpoints.torch_load` (every other attribute is torch's own):
restricted unpickling unless that very file is trusted, clear errors, and the file's config checked
before fairseq builds anything from it. It is installed once, at import, and never swapped per load.
"""
from __future__ import annotations

from typing import Any

import torch

from . import checkpoints


class _CheckpointTorch:
    """``torch`` as fairseq's ``checkpoint_utils`` sees it: ``load`` goes through the plugin's reader."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def load(file: Any, *args: Any, **kwargs: Any) -> Any:
        if args:  # torch.load(f, map_location) positionally
            kwargs.setdefault("map_location", args[0])
        return checkpoints.torch_load(file, **kwargs)


def apply() -> None:
    """Register the allowlist with torch and route fairseq's checkpoint reads (idempotent)."""
    from fairseq import checkpoint_utils

    torch.serialization.add_safe_globals(checkpoints.checkpoint_globals())
    if not isinstance(checkpoint_utils.torch, _CheckpointTorch):
        checkpoint_utils.torch = _CheckpointTorch()
