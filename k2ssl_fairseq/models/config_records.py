"""What a model or task writes into, or reads from, the whole training config fairseq holds and saves.

fairseq hands a model (and a task) a merged copy of ``cfg.model`` (``cfg.task``) whose parent is the
trainer's root config; that root is what the checkpoint stores and what fairseq's training loop
reads. Writing through the parent makes a value settled at build time (a pre-trained encoder's
record, a preset's architecture, an absolute data path) part of the saved config, and the parent
tells the model which criterion it will be trained with.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

from omegaconf import DictConfig, OmegaConf, open_dict

logger = logging.getLogger(__name__)


def _root_section(cfg: Any, section: str) -> Optional[DictConfig]:
    parent = cfg._get_parent() if OmegaConf.is_config(cfg) else None
    if parent is None or not OmegaConf.is_config(parent.get(section, None)) or parent[section] is cfg:
        return None
    return parent[section]


def record_in_saved_config(cfg: Any, values: Mapping[str, Any], section: str = "model") -> None:
    """Set ``values`` on ``cfg`` and on the trainer's config ``section`` (which fairseq saves and
    its training loop reads)."""
    for target in (cfg, _root_section(cfg, section)):
        if target is not None and OmegaConf.is_config(target):
            with open_dict(target):
                for key, value in values.items():
                    target[key] = value


def warn_if_stock_hubert_criterion(cfg: Any, model_name: str) -> None:
    """Warn when a model with class logits is trained with fairseq's ``hubert`` criterion: its loss is
    right, but it counts a frame correct when ``argmax == 0`` (HuBERT's positive column), which for
    class logits is the probability of predicting class 0, not the accuracy."""
    parent = cfg._get_parent() if OmegaConf.is_config(cfg) else None
    criterion = parent.get("criterion", None) if parent is not None else None
    name = criterion.get("_name", None) if OmegaConf.is_config(criterion) else None
    if name == "hubert":
        logger.warning("%s has class logits: fairseq's 'hubert' criterion computes its loss correctly, but its "
                       "correct_m/correct_u count argmax == 0, which is not the accuracy of these logits. Use "
                       "criterion._name=k2ssl_masked_prediction (same loss, correct accuracy).", model_name)
