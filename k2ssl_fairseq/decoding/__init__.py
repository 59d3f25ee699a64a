"""CTC decoding and scoring: batched greedy search, WER/CER, and the checkpoint-to-results driver.

Public names: ``greedy_ctc`` (emissions -> unit ids), ``letters_to_words``, ``ErrorCounts`` and
``score`` (WER/CER with ``editdistance``), ``decode_checkpoint`` and ``DecodingError`` (the
``scripts/decode_ctc.py`` driver).
"""
from .driver import DecodingError, decode_checkpoint
from .greedy import greedy_ctc
from .scoring import ErrorCounts, letters_to_words, score

__all__ = ["DecodingError", "ErrorCounts", "decode_checkpoint", "greedy_ctc", "letters_to_words", "score"]
