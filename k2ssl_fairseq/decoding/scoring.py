"""Word and character error rates with ``editdistance``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence, Tuple

import editdistance

WORD_SEPARATOR = "|"


def letters_to_words(units: Sequence[str], separator: str = WORD_SEPARATOR) -> str:
    """Letter units (``["H", "I", "|", "Y", "O", "U"]``) to words separated by one space (``"HI YOU"``)."""
    return " ".join("".join(units).replace(separator, " ").split())


@dataclass
class ErrorCounts:
    """Edit-distance totals; CER counts the characters of the word strings, spaces included."""

    word_errors: int = 0
    ref_words: int = 0
    char_errors: int = 0
    ref_chars: int = 0
    utterances: int = 0

    @property
    def wer(self) -> float:
        """Word error rate in percent (100 * errors / reference words)."""
        return 100.0 * self.word_errors / max(self.ref_words, 1)

    @property
    def cer(self) -> float:
        """Character error rate in percent."""
        return 100.0 * self.char_errors / max(self.ref_chars, 1)

    def add(self, hypothesis: str, reference: str) -> None:
        """Count one utterance (word strings; runs of whitespace count as one space)."""
        hypothesis, reference = " ".join(hypothesis.split()), " ".join(reference.split())
        self.word_errors += editdistance.eval(hypothesis.split(), reference.split())
        self.ref_words += len(reference.split())
        self.char_errors += editdistance.eval(hypothesis, reference)
        self.ref_chars += len(reference)
        self.utterances += 1


def score(pairs: Iterable[Tuple[str, str]]) -> ErrorCounts:
    """Totals over ``(hypothesis, reference)`` word strings."""
    counts = ErrorCounts()
    for hypothesis, reference in pairs:
        counts.add(hypothesis, reference)
    return counts
