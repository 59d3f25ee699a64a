"""fairseq audio manifests (``{split}.tsv``): a root directory line, then ``relative_path<TAB>num_samples``.

Parsed once into arrays so that millions of utterances cost a few seconds and a few hundred MB,
and so that a malformed line is reported by file and line number instead of failing later.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from .errors import InvalidInputError


class ManifestError(InvalidInputError):
    """A manifest line that cannot be parsed; the message names the file and line."""


@dataclass
class Manifest:
    """One split's utterances in manifest order.

    Attributes:
        path: the ``.tsv`` file read.
        root: directory the audio paths are relative to (first line of the file).
        names: audio path of each utterance, relative to ``root``.
        num_samples: samples per utterance, shape ``(utterance,)``, int64.
        lines: 0-based data line (line number minus 2) of each utterance, shape ``(utterance,)``;
            label files are aligned to data lines, so skipped malformed lines keep them aligned.
    """

    path: Path
    root: Path
    names: List[str]
    num_samples: np.ndarray
    lines: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        if self.lines is None:
            self.lines = np.arange(len(self.names), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.names)

    def audio_path(self, index: int) -> Path:
        """Absolute path of utterance ``index``."""
        return self.root / self.names[index]


def read_manifest(tsv_path: Union[str, Path], problems: Optional[List[str]] = None) -> Manifest:
    """Read a fairseq ``.tsv`` manifest.

    Args:
        tsv_path: manifest path.
        problems: if given, malformed data lines are skipped and described here
            (``file:line: problem``) instead of raising.

    Returns:
        The parsed :class:`Manifest`.

    Raises:
        FileNotFoundError: the manifest does not exist.
        ManifestError: an empty root line or an empty data line (always), or, without ``problems``,
            a line without exactly two tab-separated fields or a sample count that is not a positive
            integer (message ``file:line: problem``).
    """
    tsv_path = Path(tsv_path)
    if not tsv_path.is_file():
        raise FileNotFoundError(f"manifest {tsv_path} does not exist")
    names: List[str] = []
    counts = array("q")  # 8 bytes per utterance while reading, instead of a list of int objects
    skipped: List[int] = []
    with open(tsv_path, "rb") as data:
        root_line = _decoded(data.readline(), tsv_path, 1).rstrip("\r\n")
        if not root_line.strip():
            raise ManifestError(f"{tsv_path}:1: first line must be the audio root directory, got an empty line")
        for line_no, raw in enumerate(data, start=2):
            line = _decoded(raw, tsv_path, line_no)
            name, tab, count = line.rstrip("\r\n").partition("\t")
            if name[:1].strip() and count.isascii() and count.isdigit() and count.strip("0"):  # the common case
                names.append(name)
                counts.append(int(count))
                continue
            entry, problem = _parse_data_line(line)
            if entry is not None:
                names.append(entry[0])
                counts.append(entry[1])
                continue
            if problem == EMPTY_LINE or problems is None:
                raise ManifestError(f"{tsv_path}:{line_no}: {problem}")
            problems.append(f"{tsv_path}:{line_no}: {problem}")
            skipped.append(line_no - 2)
    lines = np.delete(np.arange(len(names) + len(skipped), dtype=np.int64), skipped)
    return Manifest(path=tsv_path, root=Path(root_line.strip()), names=names,
                    num_samples=np.frombuffer(counts, dtype=np.int64).copy(), lines=lines)


def _decoded(raw: bytes, path: Path, line_no: int) -> str:
    """One line as text; a line that is not UTF-8 is an error at that line, never skipped."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}:{line_no}: not UTF-8 text ({err.reason} at byte {err.start})") from None


EMPTY_LINE = ("empty line: label files are matched to manifest lines one by one, so it cannot be skipped; "
              "remove it (and the matching label line, if there is one)")


def _parse_data_line(line: str) -> Tuple[Optional[Tuple[str, int]], Optional[str]]:
    """``((path, num_samples), None)`` for a valid ``path<TAB>num_samples`` line, else ``(None, problem)``.

    Like stock fairseq, whitespace around the line and around the count is ignored; unlike it, the
    count must be ASCII digits (``int`` also takes ``'²'``-like characters, or fails on them).
    """
    stripped = line.strip()
    if not stripped:
        return None, EMPTY_LINE
    fields = stripped.split("\t")
    if len(fields) != 2 or not fields[0]:
        return None, f"expected 'path<TAB>num_samples', got {line.rstrip(chr(10) + chr(13))!r}"
    count = fields[1].strip()
    if not (count.isascii() and count.isdigit()):
        return None, f"sample count {fields[1]!r} is not a non-negative integer"
    if int(count) == 0:
        return None, "sample count 0: empty audio"
    return (fields[0], int(count)), None
