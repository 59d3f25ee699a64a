"""Rebuilding a checkpoint's model from its own config, and saying exactly how weights do not fit."""
from __future__ import annotations

import os
from typing import Any, List, Mapping, Tuple, Union

import torch

from ..data.errors import InvalidInputError
from .errors import CheckpointMismatchError


def state_dict_problems(found: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> List[str]:
    """What keeps ``found`` from loading strictly into a model whose state dict is ``expected``:
    grouped counts with the first few names of missing, unexpected and differently shaped tensors."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{k}: {tuple(found[k].shape)} in the checkpoint, {tuple(expected[k].shape)} expected"
             for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k].shape)]
    problems = []
    for what, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)):
        if items:
            problems.append(f"{len(items)} {what} (first: {items[:5]})")
    return problems


def check_state_dict(found: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                     path: Union[str, os.PathLike], what: str) -> None:
    """Raise :class:`CheckpointMismatchError` naming ``path`` unless ``found`` fits ``expected`` exactly.

    Args:
        what: the model the weights should fit, for the message (e.g. "the zipformer_ssl its config describes").
    """
    problems = state_dict_problems(found, expected)
    if problems:
        raise CheckpointMismatchError(path, f"weights do not fit {what}: " + "; ".join(problems))


def build_model(checkpoint: Mapping[str, Any], path: Union[str, os.PathLike], load_weights: bool = True
                ) -> Tuple[torch.nn.Module, Any]:
    """The checkpoint's model and task, built by fairseq from the checkpoint's own config (its task
    state, i.e. label dictionaries, restored when saved; else the task reads them from its data
    directories) with its weights loaded strictly.

    Raises:
        CheckpointMismatchError: a config fairseq cannot build (a missing data file included), or
            weights that do not fit the model the config describes.
    """
    from fairseq import tasks
    from omegaconf import OmegaConf

    cfg = checkpoint["cfg"] if OmegaConf.is_config(checkpoint["cfg"]) else OmegaConf.create(checkpoint["cfg"])
    try:
        task = tasks.setup_task(cfg.task, from_checkpoint=True)
        if "task_state" in checkpoint:
            task.load_state_dict(checkpoint["task_state"])
        model = task.build_model(cfg.model, from_checkpoint=True)
    except (FileNotFoundError, InvalidInputError) as err:
        raise CheckpointMismatchError(path, f"the model cannot be rebuilt because a file its task config names is "
                                            f"missing or invalid ({err}); pass overrides for the task's "
                                            f"data/label_dir on this machine") from None
    except (ValueError, KeyError) as err:
        raise CheckpointMismatchError(path, f"cannot build model {cfg.model.get('_name')!r} from its config: "
                                            f"{type(err).__name__}: {err}") from None
    if load_weights:
        try:  # fairseq's own loading, which upgrades old parameter names first
            model.load_state_dict(checkpoint["model"], strict=True, model_cfg=cfg.model)
        except RuntimeError:
            check_state_dict(checkpoint["model"], model.state_dict(), path,
                             f"the {cfg.model.get('_name')} model its config describes")
            raise
    return model, task
