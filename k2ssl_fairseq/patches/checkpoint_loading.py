"""Patch ``checkpoint_loading``: fairseq reads checkpoints through :mod:`k2ssl_fairseq.checkpoints`.

What it changes: fairseq's ``checkpoint_utils`` module gets a ``torch`` whose ``load`` is
``checkpoints.torch_load`` (every other attribute is torch's own): restricted unpickling with the
allowlist of what fairseq checkpoints hold, unless that very file is trusted. Why: configs in files are data: before fairseq
builds anything from a checkpoint (resume, ``load_model_ensemble_and_task``, fine-tuning from
``w2v_path``), strings it would ``eval`` must be plain literals and resolver interpolations are
refused; a file the user trusts is fully unpickled for that file only; unreadable and refused files
get errors that name them. Off: fairseq's own ``torch.load`` (torch's restricted loader with the
plugin's allowlist, which importing the plugin registers): fairseq checkpoints load, but their
configs are not checked, trust opt-ins do not apply and errors are torch's.
"""
from __future__ import annotations

from typing import Any

import torch

from .. import checkpoints

NAME = "checkpoint_loading"


class _CheckpointTorch:
    """``torch`` as fairseq's ``checkpoint_utils`` sees it: ``load`` goes through the plugin's reader."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def load(file: Any, *args: Any, **kwargs: Any) -> Any:
        if args:  # torch.load(f, map_location) positionally
            kwargs.setdefault("map_location", args[0])
        return checkpoints.torch_load(file, **kwargs)


def install() -> None:
    from fairseq import checkpoint_utils

    if not isinstance(checkpoint_utils.torch, _CheckpointTorch):
        checkpoint_utils.torch = _CheckpointTorch()


def remove() -> None:
    from fairseq import checkpoint_utils

    checkpoint_utils.torch = torch
