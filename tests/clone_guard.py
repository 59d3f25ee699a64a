"""Catch a test that opens a file beside the clone: a user's clone has nothing beside it.

The project's own machines keep a ``shared/`` folder next to the checkout; a test that reads from it
passes here and fails in every user's clone. ``conftest.py`` watches every ``open`` of the test
process (Python's audit hook, so numpy, torch and ``pathlib`` reads are seen) and fails the test
that opened such a file. Files opened by child processes (``fairseq-hydra-train`` runs) are not seen.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator, List, Sequence

_WATCHING: List["BesideTheClone"] = []


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class BesideTheClone:
    """Records the paths opened under the clone's parent folder but outside the clone.

    Not counted: hidden folders beside the clone (``~/.cache`` when the clone sits in a home
    folder), the ``exempt`` roots (temporary files, the Python installation, an explicit
    ``K2SSL_GOLDEN_DIR``), and everything when the clone's parent is the filesystem root.
    """

    def __init__(self, clone: Path, exempt: Sequence[Path] = ()):
        self.clone = os.path.abspath(clone)
        parent = os.path.dirname(self.clone)
        self.parent = None if parent == os.path.dirname(parent) else parent
        self.exempt = [os.path.abspath(root) for root in exempt]
        self.seen: List[str] = []

    def is_beside(self, path: str) -> bool:
        path = os.path.abspath(path)
        if self.parent is None or not _within(path, self.parent) or _within(path, self.clone):
            return False
        if os.path.relpath(path, self.parent).startswith("."):
            return False
        return not any(_within(path, root) for root in self.exempt)

    def take(self) -> List[str]:
        """The paths seen since the last call, each once, in the order first opened."""
        seen, self.seen = list(dict.fromkeys(self.seen)), []
        return seen

    def start(self) -> None:
        _WATCHING.append(self)

    def stop(self) -> None:
        _WATCHING.remove(self)

    @contextlib.contextmanager
    def watching(self) -> Iterator["BesideTheClone"]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


def _on_audit_event(event: str, args: tuple) -> None:
    if event != "open" or not _WATCHING or isinstance(args[0], int):
        return
    path = os.fsdecode(args[0])
    for guard in _WATCHING:
        if guard.is_beside(path):
            guard.seen.append(os.path.abspath(path))


sys.addaudithook(_on_audit_event)
