"""Compatibility layer, applied once when ``k2ssl_fairseq`` is imported.

torch >= 2.6 loads files with its restricted unpickler (``weights_only=True``) by default, and
fairseq checkpoints hold a few pickled fairseq objects, so every fairseq loading path (resume,
``load_model_ensemble_and_task``, fine-tuning from ``w2v_path``) fails with an ``UnpicklingError``.
The fix here keeps the restricted unpickler and allowlists exactly the classes fairseq checkpoints
hold (:data:`FAIRSEQ_CHECKPOINT_GLOBALS`). A checkpoint that needs anything else is refused with
:class:`UntrustedCheckpointError`, which names the offending globals; nothing in it is executed.
Loading such a file anyway is an explicit, per-file opt-in: list it in the environment variable
``K2SSL_TRUSTED_CHECKPOINTS`` (paths separated by ``os.pathsep``), call :func:`trust_checkpoint`,
or pass ``trusted=True`` / ``--trusted-checkpoint`` to the plugin's own loaders and scripts.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

TRUSTED_ENV = "K2SSL_TRUSTED_CHECKPOINTS"

_trusted_paths: set = set()
_swap_lock = threading.Lock()
_applied = False


class UntrustedCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs globals outside the allowlist."""


class CheckpointReadError(RuntimeError):
    """A file that is not a readable torch checkpoint (truncated, corrupt, or another format)."""


def _unreadable(path: os.PathLike, cause: BaseException) -> Optional[CheckpointReadError]:
    """A clear error if ``path`` cannot even be listed as a torch checkpoint, else None."""
    try:
        torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as err:
        return CheckpointReadError(
            f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err}); loading it "
            f"failed with {type(cause).__name__}: {cause}")
    return None


def _fairseq_globals() -> List[Any]:
    from fairseq.data.dictionary import Dictionary, TruncatedDictionary
    from fairseq.logging import meters

    return [
        Dictionary, TruncatedDictionary,
        meters.AverageMeter, meters.SumMeter, meters.ConcatTensorMeter, meters.TimeMeter,
        meters.StopwatchMeter, meters.MetersDict,
    ]


def _numpy_scalar_globals() -> List[Any]:
    """Numpy scalars and dtypes, which old meters and ``best`` values were saved as."""
    core = getattr(np, "_core", None) or np.core
    found = [core.multiarray.scalar, np.dtype]
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        dtype_cls = getattr(getattr(np, "dtypes", None), name, None)
        if dtype_cls is not None:
            found.append(dtype_cls)
    return found


def checkpoint_globals() -> List[Any]:
    """The allowlist: fairseq's Dictionary and meters, argparse.Namespace of old checkpoints, numpy scalars."""
    return _fairseq_globals() + [argparse.Namespace] + _numpy_scalar_globals()


def trust_checkpoint(path: os.PathLike) -> None:
    """Opt in to fully unpickling one file you trust (it may execute code when loaded)."""
    _trusted_paths.add(str(Path(path).resolve()))


def is_trusted(path: os.PathLike) -> bool:
    """Whether the user opted in for this exact file (API call or ``K2SSL_TRUSTED_CHECKPOINTS``)."""
    resolved = str(Path(path).resolve())
    from_env = {str(Path(p).resolve()) for p in os.environ.get(TRUSTED_ENV, "").split(os.pathsep) if p}
    return resolved in _trusted_paths or resolved in from_env


def _refusal(path: os.PathLike, cause: BaseException) -> Exception:
    unreadable = _unreadable(path, cause)
    if unreadable is not None:
        return unreadable
    allowed = {f"{c.__module__}.{c.__qualname__}" for c in checkpoint_globals()}
    offending = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if g not in allowed]
    if not offending:
        return UntrustedCheckpointError(f"{path}: refused by torch's restricted loader: {cause}")
    return UntrustedCheckpointError(
        f"{path}: refused to unpickle global(s) {', '.join(offending)}, which a fairseq checkpoint "
        f"does not hold (allowed: fairseq Dictionary and meters, argparse.Namespace, numpy scalars). "
        f"Nothing was executed. If you trust this file, opt in for it explicitly: "
        f"{TRUSTED_ENV}={Path(path).resolve()} (or --trusted-checkpoint in the plugin's scripts, "
        f"or k2ssl_fairseq.compat.trust_checkpoint(path)).")


class _FullPickleTorch:
    """Stand-in for the ``torch`` module inside fairseq's checkpoint_utils for one trusted load."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = False
        return torch.load(*args, **kwargs)


@contextlib.contextmanager
def _full_unpickling_in(module: Any) -> Iterator[None]:
    with _swap_lock:
        original = module.torch
        module.torch = _FullPickleTorch()
        try:
            yield
        finally:
            module.torch = original


@contextlib.contextmanager
def _explained_load_errors(path: os.PathLike) -> Iterator[None]:
    """Turn the restricted loader's refusals and unreadable files into errors that name the file."""
    try:
        yield
    except (UntrustedCheckpointError, CheckpointReadError, FileNotFoundError):
        raise
    except pickle.UnpicklingError as err:
        raise _refusal(path, err) from None
    except Exception as err:
        unreadable = _unreadable(path, err)
        if unreadable is None:
            raise
        raise unreadable from None


def _guard(load_fn: Callable[..., Any], module: Any) -> Callable[..., Any]:
    """Wrap a fairseq loader: restricted unpickling, clear refusal, per-file trusted opt-in."""

    def guarded(path: os.PathLike, *args: Any, **kwargs: Any) -> Any:
        if is_trusted(path):
            with _full_unpickling_in(module):
                return load_fn(path, *args, **kwargs)
        with _explained_load_errors(path):
            return load_fn(path, *args, **kwargs)

    guarded.__wrapped__ = load_fn
    guarded.__doc__ = load_fn.__doc__
    return guarded


def load_checkpoint(path: os.PathLike, trusted: bool = False,
                    arg_overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Load a fairseq checkpoint (cfg upgraded as fairseq does) through the guarded loader."""
    from fairseq import checkpoint_utils

    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if trusted:
        trust_checkpoint(path)
    return checkpoint_utils.load_checkpoint_to_cpu(str(path), arg_overrides)


def load_torch_file(path: os.PathLike, trusted: bool = False,
                    extra_globals: Sequence[Any] = ()) -> Any:
    """Load any torch file (e.g. an icefall checkpoint) with the same allowlist plus ``extra_globals``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if trusted or is_trusted(path):
        return torch.load(str(path), map_location="cpu", weights_only=False)
    with _explained_load_errors(path), torch.serialization.safe_globals(list(extra_globals)):
        return torch.load(str(path), map_location="cpu", weights_only=True)


def _install_loader_guard() -> None:
    from fairseq import checkpoint_utils

    if not hasattr(checkpoint_utils.load_checkpoint_to_cpu, "__wrapped__"):
        checkpoint_utils.load_checkpoint_to_cpu = _guard(checkpoint_utils.load_checkpoint_to_cpu,
                                                         checkpoint_utils)


def apply() -> None:
    """Register the allowlist with torch and guard fairseq's checkpoint loader (idempotent)."""
    global _applied
    if _applied:
        return
    torch.serialization.add_safe_globals(checkpoint_globals())
    _install_loader_guard()
    _applied = True

