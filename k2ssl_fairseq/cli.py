"""``k2ssl-hydra-train``: fairseq's own ``fairseq-hydra-train`` with the plugin imported first.

Importing the plugin before Hydra composes the config registers the plugin's dataclasses in Hydra's
ConfigStore, so group selection (``model=zipformer_ssl``, which brings all of the plugin's keys)
works. Under ``torchrun`` it also passes each process's rank, world size and device (from
``LOCAL_RANK``) to fairseq, which otherwise guesses the device and fails on CPU-only machines.
Everything else is fairseq's ``cli_main`` unchanged.
"""
from __future__ import annotations

import os
import sys
from typing import List, Mapping


def torchrun_overrides(environ: Mapping[str, str] = os.environ) -> List[str]:
    """What fairseq needs under torchrun: this process's rank, world size and device, env:// init.

    Left to itself, fairseq reads torchrun's ``WORLD_SIZE``/``RANK`` but derives the device as
    ``RANK % cuda.device_count()`` (wrong on unequal nodes, a ZeroDivisionError on CPU-only
    machines) and ignores ``LOCAL_RANK``. Passing everything explicitly makes fairseq skip its
    guessing; ``MASTER_ADDR``/``MASTER_PORT`` reach ``env://`` initialisation unchanged.
    """
    if "LOCAL_RANK" not in environ:
        return []
    return [
        "distributed_training.distributed_init_method=env://",
        f"distributed_training.distributed_world_size={int(environ['WORLD_SIZE'])}",
        f"distributed_training.distributed_rank={int(environ['RANK'])}",
        f"distributed_training.device_id={int(environ['LOCAL_RANK'])}",
        "distributed_training.distributed_no_spawn=true",
    ]


def hydra_train() -> None:
    """Console entry point."""
    from fairseq_cli.hydra_train import cli_main  # configures logging, so the plugin's start-up line shows

    import k2ssl_fairseq  # noqa: F401  (registers the plugin before composition)

    sys.argv.extend(torchrun_overrides())
    cli_main()


if __name__ == "__main__":
    hydra_train()
