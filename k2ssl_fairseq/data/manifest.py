"""fairseq audio manifests (``{split}.tsv``): a root directory line, then ``relative_path<TAB>num_samples``.

Parsed once into arrays so that millions of utterances cost a few seconds and a few hundred MB,
and so that a malformed line is reported by file and line number instead of failing later.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

import numpy as np


class ManifestError(ValueError):
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
        ManifestError: an empty root line, an empty line, a line without exactly two tab-separated
            fields, or a sample count that is not a positive integer (message ``file:line: problem``).
    """
    tsv_path = Path(tsv_path)
    if not tsv_path.is_file():
        raise FileNotFoundError(f"manifest {tsv_path} does not exist")
    names: List[str] = []
    counts = array("q")  # 8 bytes per utterance while reading, instead of a list of int objects
    skipped: List[int] = []
    with open(tsv_path, encoding="utf-8") as text:
        root_line = text.readline().rstrip("\r\n")
        if not root_line.strip():
            raise ManifestError(f"{tsv_path}:1: first line must be the audio root directory, got an empty line")
        for line_no, line in enumerate(text, start=2):
            name, tab, count = line.rstrip("\r\n").partition("\t")
            if name and count.isdigit() and count.strip("0"):  # the common case, checked cheaply
                names.append(name)
                counts.append(int(count))
                continue
            problem = _data_line_problem(line.rstrip("\r\n").split("\t"), line)
            if problems is None:
                raise ManifestError(f"{tsv_path}:{line_no}: {problem}")
            problems.append(f"{tsv_path}:{line_no}: {problem}")
            skipped.append(line_no - 2)
    lines = np.delete(np.arange(len(names) + len(skipped), dtype=np.int64), skipped)
    return Manifest(path=tsv_path, root=Path(root_line.strip()), names=names,
                    num_samples=np.frombuffer(counts, dtype=np.int64).copy(), lines=lines)


def _data_line_problem(fields: List[str], line: str) -> Optional[str]:
    """What is wrong with one ``path<TAB>num_samples`` line, or None."""
    if not line.strip():
        return "empty line"
    if len(fields) != 2 or not fields[0]:
        return f"expected 'path<TAB>num_samples', got {line.rstrip()!r}"
    if not fields[1].strip().isdigit():
        return f"sample count {fields[1]!r} is not a non-negative integer"
    if int(fields[1]) == 0:
        return "sample count 0: empty audio"
    return None
