"""CTC decoding and scoring: batched greedy search, WER/CER, and the checkpoint-to-results driver.

Public names: ``greedy_ctc`` (emissions -> unit ids), ``letters_to_words``, ``ErrorCounts`` and
``score`` (WER/CER with ``editdistance``), ``decode_checkpoint`` (the ``scripts/decode_ctc.py``
driver; bad input raises ``checkpoints.CheckpointError`` or ``data.errors.InvalidInputError``).
"""
from .driver import decode_checkpoint
from .greedy import greedy_ctc
from .scoring import ErrorCounts, letters_to_words, score

__all__ = ["ErrorCounts", "decode_checkpoint", "greedy_ctc", "letters_to_words", "score"]
