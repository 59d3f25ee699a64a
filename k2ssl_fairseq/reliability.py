"""Fault tolerance for fairseq training, applied once when ``k2ssl_fairseq`` is imported.

Gaps in fairseq's trainer that a long run falls into:

* **Checkpoint writes are not crash-safe.** fairseq writes the first checkpoint of a save through a
  temporary file, but then *copies* it onto ``checkpoint_last.pt`` (and ``checkpoint_best.pt``)
  in place, and never flushes to disk. A crash or power loss during that copy leaves a truncated
  ``checkpoint_last.pt``, and the restart fails. Here every local checkpoint write and copy goes
  to a unique temporary file in the same directory, is fsynced, and replaces the target with one
  ``os.replace``: the target is always either the previous complete file or the new one.
* **A non-finite loss poisons the weights or kills the run.** fairseq raises ``FloatingPointError``
  when the gradient norm is NaN/Inf (after writing ``crash.pt`` and re-running the step), so one
  bad batch ends a week-long run. Here that update is skipped instead: gradients are dropped, the
  weights, optimizer state and update count stay as they were, a warning names the update, and
  skips are counted in the ``nonfinite_skips`` metric (per log line and per epoch). The check
  uses the gradient norm after all-reduce, which every rank sees identically, so all ranks skip
  together and stay in sync. Only after :data:`MAX_CONSECUTIVE_SKIPS` skips in a row (a diverged
  run, not a bad batch) is fairseq's own ``FloatingPointError`` raised. Mixed precision keeps
  fairseq's handling: fp16 loss scaling and AMP already treat overflowing gradients as a skipped
  step.
* **A killed save leaves a checkpoint-sized temporary file.** The next start removes the plugin's own
  stale temporaries from ``checkpoint.save_dir`` (:func:`remove_stale_checkpoint_temporaries`).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from typing import Any, Callable, List, Optional

import torch

logger = logging.getLogger(__name__)

#: Environment variable overriding :data:`MAX_CONSECUTIVE_SKIPS`.
MAX_SKIPS_ENV = "K2SSL_MAX_CONSECUTIVE_NONFINITE_SKIPS"
#: Consecutive non-finite updates tolerated before the run is declared diverged.
MAX_CONSECUTIVE_SKIPS = 20

_applied = False


class NonFiniteGradients(Exception):
    """Raised inside fairseq's ``train_step`` to abandon an update whose gradient norm is NaN/Inf.

    Deliberately not a ``FloatingPointError``/``OverflowError``/``RuntimeError``, which the trainer
    catches and handles its own way.
    """


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


def _install_atomic_checkpoints() -> None:
    from fairseq import checkpoint_utils

    original_save = checkpoint_utils.torch_persistent_save
    original_load = checkpoint_utils.load_checkpoint

    def load_checkpoint(cfg: Any, trainer: Any, **passthrough_args: Any) -> Any:
        """fairseq's start-of-training checkpoint load, after clearing stale temporaries (saving rank only)."""
        if trainer.is_data_parallel_master and _is_local(cfg.save_dir):
            remove_stale_checkpoint_temporaries(cfg.save_dir)
        return original_load(cfg, trainer, **passthrough_args)

    def torch_persistent_save(obj: Any, filename: Any, async_write: bool = False) -> None:
        if async_write or not isinstance(filename, str) or not _is_local(filename):
            return original_save(obj, filename, async_write)
        atomic_torch_save(obj, filename)

    torch_persistent_save.__wrapped__ = original_save
    load_checkpoint.__wrapped__ = original_load
    checkpoint_utils.torch_persistent_save = torch_persistent_save
    checkpoint_utils.load_checkpoint = load_checkpoint
    checkpoint_utils.PathManager = _AtomicCopyPathManager(checkpoint_utils.PathManager)


def max_consecutive_skips() -> int:
    """:data:`MAX_CONSECUTIVE_SKIPS`, or the value of ``K2SSL_MAX_CONSECUTIVE_NONFINITE_SKIPS``."""
    value = os.environ.get(MAX_SKIPS_ENV)
    if value is None:
        return MAX_CONSECUTIVE_SKIPS
    if not value.strip().isdigit():
        raise ValueError(f"{MAX_SKIPS_ENV} must be a non-negative integer, got {value!r}")
    return int(value)


def _uses_amp(trainer: Any) -> bool:
    return bool(trainer.cfg.common.amp)


def _install_nonfinite_guard() -> None:
    from fairseq.logging import metrics
    from fairseq.trainer import Trainer

    original_clip = Trainer.clip_grad_norm
    original_step = Trainer.train_step

    def clip_grad_norm(self: Trainer, clip_norm: float) -> torch.Tensor:
        grad_norm = original_clip(self, clip_norm)
        if not _uses_amp(self) and not torch.isfinite(grad_norm).all():
            raise NonFiniteGradients(f"gradient norm is {float(grad_norm)}")
        return grad_norm

    def train_step(self: Trainer, samples: Any, raise_oom: bool = False) -> Optional[Any]:
        try:
            logging_output = original_step(self, samples, raise_oom)
        except NonFiniteGradients as error:
            return _skip_update(self, error)
        self._k2ssl_consecutive_skips = 0
        return logging_output

    def _skip_update(self: Trainer, error: NonFiniteGradients) -> None:
        self.zero_grad()
        self._k2ssl_nonfinite_skips = getattr(self, "_k2ssl_nonfinite_skips", 0) + 1
        self._k2ssl_consecutive_skips = getattr(self, "_k2ssl_consecutive_skips", 0) + 1
        limit = max_consecutive_skips()
        if self._k2ssl_consecutive_skips > limit:
            raise FloatingPointError(
                f"{self._k2ssl_consecutive_skips} consecutive updates had non-finite gradients "
                f"(limit {limit}, set {MAX_SKIPS_ENV} to change): the run has diverged") from error
        logger.warning("non-finite loss/gradients (%s) at update %d: update skipped, weights unchanged "
                       "(%d skipped so far)", error, self.get_num_updates() + 1, self._k2ssl_nonfinite_skips)
        metrics.log_scalar_sum("nonfinite_skips", 1, priority=900, round=0)
        return None

    clip_grad_norm.__wrapped__ = original_clip
    train_step.__wrapped__ = original_step
    Trainer.clip_grad_norm = clip_grad_norm
    Trainer.train_step = train_step


def nonfinite_skips(trainer: Any) -> int:
    """Updates this trainer skipped because of non-finite gradients."""
    return getattr(trainer, "_k2ssl_nonfinite_skips", 0)


def apply() -> None:
    """Install atomic checkpoint writes and the non-finite update guard (idempotent)."""
    global _applied
    if _applied:
        return
    _install_atomic_checkpoints()
    _install_nonfinite_guard()
    _applied = True
