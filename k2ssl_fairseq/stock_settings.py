"""Stock settings the plugin's configs accept without using them.

The plugin's model, optimizer and scheduler configs extend their stock counterparts' (HuBERT's,
Adam's, polynomial decay's), so ``model._name=zipformer_ssl``, ``optimizer._name=scaled_adam`` or
``lr_scheduler._name=eden`` switches a stock yaml with no ``~key`` removals. A stock key without a
meaning for the plugin's component is ignored; when the yaml sets it to something other than the
stock default, one log line names it, so nobody believes it still acts.
"""
from __future__ import annotations

import logging
from enum import Enum
from typing import Any, Dict, Sequence

logger = logging.getLogger(__name__)


def plain(value: Any) -> Any:
    """A config value as plain data, for comparisons (OmegaConf containers, enums, tuples)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if isinstance(value, Enum):
        return str(value)
    return list(value) if isinstance(value, tuple) else value


def ignored_settings(cfg: Any, stock_config: type, keys: Sequence[str]) -> Dict[str, Any]:
    """The ``keys`` that ``cfg`` sets to something other than ``stock_config``'s default."""
    stock = stock_config()
    return {key: plain(getattr(cfg, key)) for key in keys if plain(getattr(cfg, key)) != plain(getattr(stock, key))}


def log_ignored(component: str, cfg: Any, stock_config: type, keys: Sequence[str]) -> None:
    """One log line naming the ignored stock settings ``cfg`` sets (nothing when there are none)."""
    ignored = ignored_settings(cfg, stock_config, keys)
    if ignored:
        logger.info("%s ignores these stock settings (no meaning for it): %s", component,
                    ", ".join(f"{key}={value}" for key, value in ignored.items()))
