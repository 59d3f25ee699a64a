"""Reading checkpoints: the one place a file is unpickled, its config checked, and errors explained.

A checkpoint is data. torch >= 2.6 unpickles with its restricted loader (``weights_only=True``),
which here allows exactly the classes fairseq checkpoints hold (:func:`checkpoint_globals`); a file
that needs anything else is refused with :class:`UntrustedCheckpointError` naming the globals, and
nothing in it runs. The config inside (``cfg``, ``args``, an icefall ``params`` dict) is then checked
before anything is built from it: strings that fairseq hands to ``eval`` must be plain literals, and
OmegaConf interpolations are refused (:mod:`k2ssl_fairseq.safe_literals`).

Trust is per file. Fully unpickling a file you trust (it may run code) is opted into for that file
only: ``trusted=True`` on one call of :func:`load_checkpoint` / :func:`load_torch_file` (valid for
that file, in that call and thread), the ``K2SSL_TRUSTED_CHECKPOINTS`` environment variable, or
:func:`trust_checkpoint`. No opt-in changes how any other file loads, in any thread. Trust covers
unpickling only: a trusted file's config is checked like any other.
"""
from __future__ import annotations

import argparse
import contextlib
import contextvars
import os
import pickle
from pathlib import Path
from typing import IO, Any, Dict, FrozenSet, Iterator, List, Optional, Union

import numpy as np
import torch

from ..safe_literals import unsafe_values
from .errors import CheckpointError, CheckpointMismatchError, CheckpointReadError, UntrustedCheckpointError

TRUSTED_ENV = "K2SSL_TRUSTED_CHECKPOINTS"

#: Sections of a loaded file that hold configuration (fairseq ``cfg``/``args``, icefall ``params``).
CONFIG_SECTIONS = ("cfg", "args", "params")

_trusted_paths: set = set()
#: Files trusted by the load in progress in this thread/context (``trusted=True`` of one call).
_trusted_in_call: contextvars.ContextVar[FrozenSet[str]] = contextvars.ContextVar("k2ssl_trusted_in_call",
                                                                                   default=frozenset())

PathOrFile = Union[str, os.PathLike, IO[bytes]]


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


def register_allowlist() -> None:
    """Allow :func:`checkpoint_globals` in torch's restricted unpickler, process-wide (importing the
    plugin does it): these classes rebuild plain data and run nothing."""
    torch.serialization.add_safe_globals(checkpoint_globals())


def _resolved(path: Union[str, os.PathLike]) -> str:
    return str(Path(path).resolve())


def trust_checkpoint(path: Union[str, os.PathLike]) -> None:
    """Opt in to fully unpickling one file you trust, for the rest of this process (it may run code)."""
    _trusted_paths.add(_resolved(path))


def is_trusted(path: Union[str, os.PathLike]) -> bool:
    """Whether this exact file is opted in: by the call in progress, :func:`trust_checkpoint` or the env."""
    resolved = _resolved(path)
    from_env = {_resolved(p) for p in os.environ.get(TRUSTED_ENV, "").split(os.pathsep) if p}
    return resolved in _trusted_in_call.get() or resolved in _trusted_paths or resolved in from_env


@contextlib.contextmanager
def trusted_for_this_call(path: Union[str, os.PathLike], trusted: bool) -> Iterator[None]:
    """While active, and in this thread only, ``path`` (no other file) is trusted when ``trusted``."""
    if not trusted:
        yield
        return
    token = _trusted_in_call.set(_trusted_in_call.get() | {_resolved(path)})
    try:
        yield
    finally:
        _trusted_in_call.reset(token)


def _file_path(file: PathOrFile) -> str:
    return str(getattr(file, "name", file))


def torch_load(file: PathOrFile, **kwargs: Any) -> Any:
    """``torch.load`` of one file with this module's rules: restricted unless the file is trusted,
    refusals and unreadable files explained, the config sections checked (:func:`check_config`).

    fairseq's ``checkpoint_utils`` calls this for every ``torch.load`` (see ``patches.checkpoint_loading``), so resume,
    ``load_model_ensemble_and_task`` and fine-tuning from ``w2v_path`` follow the same rules.
    """
    path = _file_path(file)
    kwargs["weights_only"] = not is_trusted(path)
    kwargs.setdefault("map_location", "cpu")
    try:
        state = torch.load(file, **kwargs)
    except pickle.UnpicklingError as err:
        raise _refusal(path, err) from None
    except Exception as err:
        raise _unreadable(path, err) from None
    check_config(state, path)
    return state


def check_config(state: Any, path: Union[str, os.PathLike]) -> None:
    """Refuse a loaded file whose config sections hold code for ``eval`` or OmegaConf interpolations.

    Raises:
        UntrustedCheckpointError: naming the file, the key and the value.
    """
    if not isinstance(state, dict):
        return
    for section in CONFIG_SECTIONS:
        found = unsafe_values(state.get(section), section)
        if found:
            key, value, reason = found[0]
            raise UntrustedCheckpointError(
                path, f"config value {key}={value!r} refused: {reason}. Nothing was executed; configs in files "
                      f"are data (numbers, strings, lists, tuples, dicts, + and * of those)"
                      + (f" ({len(found) - 1} more value(s) refused)" if len(found) > 1 else ""))


def _unreadable(path: str, cause: BaseException) -> CheckpointError:
    """A clear error for a file that fails to load for a reason other than the allowlist."""
    if isinstance(cause, CheckpointError):
        return cause
    if isinstance(cause, FileNotFoundError):
        return CheckpointReadError(path, "file not found")
    return CheckpointReadError(path, f"not a readable torch checkpoint ({type(cause).__name__}: {cause})")


def _refusal(path: str, cause: BaseException) -> CheckpointError:
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return _unreadable(path, cause)
    allowed = {f"{c.__module__}.{c.__qualname__}" for c in checkpoint_globals()}
    offending = [g for g in needed if g not in allowed]
    if not offending:
        return UntrustedCheckpointError(path, f"refused by torch's restricted loader: {cause}")
    return UntrustedCheckpointError(
        path, f"refused to unpickle global(s) {', '.join(offending)}, which a fairseq checkpoint does not hold "
              f"(allowed: fairseq Dictionary and meters, argparse.Namespace, numpy scalars). Nothing was "
              f"executed. If you trust this file, opt in for it explicitly: {TRUSTED_ENV}={_resolved(path)} "
              f"(or --trusted-checkpoint in the plugin's scripts, or trusted=True when loading it).")


def load_checkpoint(path: Union[str, os.PathLike], trusted: bool = False,
                    arg_overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A fairseq checkpoint as fairseq's ``load_checkpoint_to_cpu`` returns it (cfg upgraded), read
    by :func:`torch_load`; ``trusted`` opts in this file for this call only."""
    from fairseq import checkpoint_utils

    if not Path(path).is_file():
        raise CheckpointReadError(path, "file not found")
    with trusted_for_this_call(path, trusted):
        return checkpoint_utils.load_checkpoint_to_cpu(str(path), arg_overrides)


def load_torch_file(path: Union[str, os.PathLike], trusted: bool = False) -> Any:
    """Any torch file (e.g. an icefall checkpoint) by :func:`torch_load`; ``trusted`` as above."""
    if not Path(path).is_file():
        raise CheckpointReadError(path, "file not found")
    with trusted_for_this_call(path, trusted):
        return torch_load(str(path))


def read_fairseq_checkpoint(path: Union[str, os.PathLike], trusted: bool = False) -> Dict[str, Any]:
    """A fairseq checkpoint (:func:`load_checkpoint`) with its config as a plain dict.

    Raises:
        CheckpointMismatchError: the file has no ``cfg`` and ``model`` entries (or fairseq's upgrade
            step fails on it): it is not a fairseq checkpoint.
    """
    from omegaconf import OmegaConf

    try:
        checkpoint = load_checkpoint(path, trusted=trusted)
    except (KeyError, AttributeError, TypeError) as err:  # fairseq's upgrade step on a foreign dict
        raise CheckpointMismatchError(path, f"not a fairseq checkpoint (fairseq's loader failed: "
                                            f"{type(err).__name__}: {err})") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or checkpoint.get("cfg") is None:
        raise CheckpointMismatchError(path, "not a fairseq checkpoint (needs 'cfg' and 'model' entries)")
    if OmegaConf.is_config(checkpoint["cfg"]):
        checkpoint["cfg"] = OmegaConf.to_container(checkpoint["cfg"], resolve=True, enum_to_str=True)
    return checkpoint
