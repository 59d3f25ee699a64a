"""``k2ssl-hydra-train``: fairseq's own ``fairseq-hydra-train`` with the plugin imported first.

Importing the plugin before Hydra composes the config registers the plugin's dataclasses in Hydra's
ConfigStore, so group selection (``model=zipformer_ssl``) and plugin keys without a ``+`` prefix
work. Under ``torchrun`` it also sets each process's device from ``LOCAL_RANK``, which fairseq
leaves at 0.
Everything else is fairseq's ``cli_main`` unchanged.
"""
from __future__ import annotations

import os
import sys
from typing import List, Mapping


def torchrun_overrides(environ: Mapping[str, str] = os.environ) -> List[str]:
    """The one override fairseq needs under torchrun: the device from ``LOCAL_RANK``.

    fairseq already reads torchrun's ``MASTER_ADDR``/``MASTER_PORT``/``WORLD_SIZE``/``RANK`` (and then
    does not spawn), but leaves ``device_id`` at 0, so every process would use GPU 0.
    """
    if "LOCAL_RANK" not in environ:
        return []
    return [f"distributed_training.device_id={int(environ['LOCAL_RANK'])}"]


def hydra_train() -> None:
    """Console entry point."""
    import k2ssl_fairseq  # noqa: F401  (registers the plugin before composition)
    from fairseq_cli.hydra_train import cli_main

    sys.argv.extend(torchrun_overrides())
    cli_main()


if __name__ == "__main__":
    hydra_train()
