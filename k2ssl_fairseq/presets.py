"""The plugin's yaml presets, shipped inside the package (``k2ssl_fairseq/config/{pretrain,finetune}``;
the repository's top-level ``config`` is a link to that folder)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

CONFIG_DIR = Path(__file__).resolve().parent / "config"
KINDS = ("pretrain", "finetune")


def config_dir(kind: str) -> Path:
    """The folder of one kind of preset, for ``--config-dir``."""
    if kind not in KINDS:
        raise ValueError(f"preset kind must be one of {KINDS}, got {kind!r}")
    return CONFIG_DIR / kind


def names(kind: str) -> List[str]:
    """The presets of one kind (``--config-name`` values)."""
    return sorted(path.stem for path in config_dir(kind).glob("*.yaml"))


def model_section(kind: str, name: str) -> Dict[str, Any]:
    """The ``model`` section of a preset as plain data.

    Raises:
        ValueError: no such preset.
    """
    from omegaconf import OmegaConf

    path = config_dir(kind) / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no {kind} preset {name!r}; the {kind} presets are {', '.join(names(kind))}")
    return OmegaConf.to_container(OmegaConf.load(path).model, resolve=False)
