"""Zipformer2 encoder blocks in plain PyTorch (no fairseq imports).

Public names: ``Zipformer2`` and its ``ZipformerOutput``, ``ScheduledFloat`` and
``set_batch_count`` (push the training step into every schedule), ``end_whitening_update`` (close an
update for the regularisers' adaptive state) and ``without_training_state`` (a state dict without
that state: icefall's tensors). Everything else is internal to this package.
"""

from .encoder import Zipformer2, ZipformerOutput
from .regularizers import end_whitening_update, without_training_state
from .schedules import ScheduledFloat, set_batch_count

__all__ = ["Zipformer2", "ZipformerOutput", "ScheduledFloat", "end_whitening_update", "set_batch_count",
           "without_training_state"]
