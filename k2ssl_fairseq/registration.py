"""Registration with fairseq, done as soon as fairseq itself is loaded and no sooner.

Importing ``k2ssl_fairseq`` must register every component (fairseq's ``common.user_dir`` relies on
it), but importing torch and fairseq costs seconds, which every tool's ``--help`` would pay. So:

- if fairseq is already loaded (``common.user_dir``, ``k2ssl-hydra-train``, a user who imported
  fairseq first), the package registers at once;
- otherwise an import hook registers the moment fairseq finishes loading, or, when one of the
  plugin's own modules is what pulled fairseq in, the moment that module finishes (registering in
  the middle of it would import its half-built siblings).

Either way, code that can reach fairseq's registries finds the plugin there. :func:`register` is
idempotent and may be called directly.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
import threading
from types import ModuleType
from typing import Optional, Sequence

logger = logging.getLogger(__package__)
_lock = threading.RLock()
_registered = False
#: Plugin modules being executed right now (nested imports).
_plugin_imports_running = 0


def register() -> None:
    """Allow fairseq's checkpoint classes in the restricted unpickler, apply the plugin's fairseq
    patches (logged; ``K2SSL_PATCHES`` switches each off) and import every registering module."""
    global _registered
    with _lock:
        if _registered:
            return
        _registered = True
        _uninstall_hook()
        try:
            from . import checkpoints, patches

            checkpoints.register_allowlist()
            logger.info(patches.describe(patches.apply()))
            from . import criterions, models, optim, tasks  # noqa: F401  (registration side effects)
        except BaseException:
            _registered = False
            raise


def is_registered() -> bool:
    """Whether :func:`register` has run in this process."""
    return _registered


def _fairseq_loaded() -> bool:
    module = sys.modules.get("fairseq")
    spec = getattr(module, "__spec__", None)
    return module is not None and not getattr(spec, "_initializing", False)


class _RegisterAfterFairseq(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the execution of fairseq and of the plugin's own modules so that
    :func:`register` runs right after the first of them that leaves fairseq loaded and no plugin
    module half-executed."""

    def find_spec(self, name: str, path: Optional[Sequence[str]], target: Optional[ModuleType] = None):
        if name != "fairseq" and not name.startswith(__package__ + "."):
            return None
        spec = _spec_from_other_finders(self, name, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module
        plugin_module = name != "fairseq"

        def exec_module(module: ModuleType) -> None:
            global _plugin_imports_running
            with _lock:
                _plugin_imports_running += plugin_module
            try:
                execute(module)
            finally:
                with _lock:
                    _plugin_imports_running -= plugin_module
                    done = not _plugin_imports_running
            if done and (_fairseq_loaded() or name == "fairseq"):
                register()

        spec.loader.exec_module = exec_module
        return spec


def _spec_from_other_finders(hook: importlib.abc.MetaPathFinder, name: str, path: Optional[Sequence[str]],
                             target: Optional[ModuleType]) -> Optional[importlib.machinery.ModuleSpec]:
    """The spec the import system would find without ``hook`` (editable installs have finders of
    their own)."""
    for finder in sys.meta_path:
        if finder is hook or not hasattr(finder, "find_spec"):
            continue
        spec = finder.find_spec(name, path, target)
        if spec is not None:
            return spec
    return None


_hook = _RegisterAfterFairseq()


def _uninstall_hook() -> None:
    if _hook in sys.meta_path:
        sys.meta_path.remove(_hook)


def register_now_or_when_fairseq_loads() -> None:
    """What importing the package does (see the module docstring)."""
    if "fairseq" in sys.modules:
        register()
    elif _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)
