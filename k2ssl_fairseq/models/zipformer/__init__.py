"""Zipformer2 encoder blocks in plain PyTorch (no fairseq imports).

Public names: ``Zipformer2`` and its ``ZipformerOutput``, ``ScheduledFloat`` and
``set_batch_count`` (push the training step into every schedule). Everything else is internal to
this package.
"""

from .encoder import Zipformer2, ZipformerOutput
from .schedules import ScheduledFloat, set_batch_count

__all__ = ["Zipformer2", "ZipformerOutput", "ScheduledFloat", "set_batch_count"]
