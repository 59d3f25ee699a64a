"""Patch ``atomic_checkpoints``: checkpoint writes that a crash cannot leave half-written.

What it changes: fairseq's ``checkpoint_utils.torch_persistent_save`` and the ``PathManager.copy``
it uses for ``checkpoint_last.pt``/``checkpoint_best.pt`` write local files through
:func:`atomic_write`, and ``checkpoint_utils.load_checkpoint`` (the start of training) first removes
stale temporaries of this patch from ``checkpoint.save_dir`` on the saving rank. Why: fairseq writes
the first file of a save through a temporary file but then *copies* it onto ``checkpoint_last.pt``
in place and never flushes; a crash or power loss during that copy leaves a truncated
``checkpoint_last.pt`` and the restart fails. Here the data goes to a unique temporary file in the
same directory, is fsynced, and replaces the target with one ``os.replace``: the target is always
the previous complete file or the new one. A SIGKILL between the two leaves a checkpoint-sized
temporary (about 1 GB at Base), which the next start removes. Off: fairseq's own writes.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from typing import Any, Callable, List

import torch

from .wrapping import replace, restore

logger = logging.getLogger(__name__)

NAME = "atomic_checkpoints"


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_file_mode() -> int:
    """What ``open(path, "w")`` would give a new file: 0o666 minus the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str, write: Callable[[Any], None]) -> None:
    """Write a file so that ``path`` is never seen half-written.

    ``write`` fills an open binary file; the data goes to a temporary file next to ``path``, is
    flushed and fsynced, then renamed over ``path``. If ``write`` raises (or the process dies), the
    temporary file is removed (or left with a ``.tmp`` suffix) and ``path`` is untouched. The new
    file gets the usual permissions (``mkstemp`` alone would make it owner-only).

    Args:
        path: the destination file.
        write: called with the open temporary file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), _default_file_mode())
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    _fsync_directory(directory)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_copy(src: str, dst: str) -> None:
    """Copy ``src`` onto ``dst`` through :func:`atomic_write`."""
    with open(src, "rb") as source:
        atomic_write(dst, lambda handle: shutil.copyfileobj(source, handle, 16 * 1024 * 1024))


def _is_local(path: str) -> bool:
    return "://" not in str(path)


class _AtomicCopyPathManager:
    """fairseq's ``PathManager`` as seen by ``checkpoint_utils``, with atomic local copies."""

    def __init__(self, path_manager: Any) -> None:
        self._path_manager = path_manager

    def __getattr__(self, name: str) -> Any:
        return getattr(self._path_manager, name)

    def copy(self, src_path: str, dst_path: str, overwrite: bool = False, **kwargs: Any) -> bool:
        if not (_is_local(src_path) and _is_local(dst_path)):
            return self._path_manager.copy(src_path, dst_path, overwrite, **kwargs)
        if os.path.exists(dst_path) and not overwrite:
            raise FileExistsError(f"{dst_path} exists and overwrite is False")
        atomic_copy(src_path, dst_path)
        return True


#: The temporary files :func:`atomic_write` makes for checkpoints (``mkstemp`` prefix and suffix).
_CHECKPOINT_TMP = re.compile(r"^\..+\.pt\.[A-Za-z0-9_]+\.tmp$")


def remove_stale_checkpoint_temporaries(save_dir: str) -> List[str]:
    """Delete the temporary files of checkpoint writes that a killed process left in ``save_dir``.

    A SIGKILL between ``mkstemp`` and the rename leaves one behind (a checkpoint-sized file each, about
    1 GB at Base), so repeated preemptions would fill the disk. Only this module's own pattern
    (``.<name>.pt.<random>.tmp``) is touched. Returns the removed paths.
    """
    if not os.path.isdir(save_dir):
        return []
    removed = []
    for name in sorted(os.listdir(save_dir)):
        path = os.path.join(save_dir, name)
        if _CHECKPOINT_TMP.match(name) and os.path.isfile(path):
            size = os.path.getsize(path)
            os.remove(path)
            removed.append(path)
            logger.warning("removed %s (%.1f MB), left by an interrupted checkpoint write", path, size / 2**20)
    return removed


def _atomic_save(original: Callable[..., Any]) -> Callable[..., Any]:
    def torch_persistent_save(obj: Any, filename: Any, async_write: bool = False) -> None:
        if async_write or not isinstance(filename, str) or not _is_local(filename):
            return original(obj, filename, async_write)
        atomic_torch_save(obj, filename)
    return torch_persistent_save


def _clearing_load(original: Callable[..., Any]) -> Callable[..., Any]:
    def load_checkpoint(cfg: Any, trainer: Any, **passthrough_args: Any) -> Any:
        """fairseq's start-of-training checkpoint load, after clearing stale temporaries (saving rank only)."""
        if trainer.is_data_parallel_master and _is_local(cfg.save_dir):
            remove_stale_checkpoint_temporaries(cfg.save_dir)
        return original(cfg, trainer, **passthrough_args)
    return load_checkpoint


def install() -> None:
    from fairseq import checkpoint_utils

    replace(checkpoint_utils, "torch_persistent_save", _atomic_save)
    replace(checkpoint_utils, "load_checkpoint", _clearing_load)
    if not isinstance(checkpoint_utils.PathManager, _AtomicCopyPathManager):
        checkpoint_utils.PathManager = _AtomicCopyPathManager(checkpoint_utils.PathManager)


def remove() -> None:
    from fairseq import checkpoint_utils

    restore(checkpoint_utils, "torch_persistent_save")
    restore(checkpoint_utils, "load_checkpoint")
    if isinstance(checkpoint_utils.PathManager, _AtomicCopyPathManager):
        checkpoint_utils.PathManager = checkpoint_utils.PathManager._path_manager
