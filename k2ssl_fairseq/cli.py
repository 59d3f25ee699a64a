"""``k2ssl-hydra-train``: fairseq's own ``fairseq-hydra-train`` with the plugin imported first.

Three conveniences over the stock entry point, all plain rewrites of the command line
(:func:`preset_arguments`, :func:`component_overrides`), then fairseq's ``cli_main`` unchanged:

* ``--config-name pretrain/zipformer_base`` (any ``KIND/NAME`` that ``k2ssl-info --presets`` lists)
  without ``--config-dir`` runs the preset shipped inside the package.
* ``model=zipformer_ssl`` (or ``+model=...``) switches the component the way ``model._name=...``
  does, keeping every setting of the yaml, for ``model``, ``task``, ``criterion``, ``optimizer`` and
  ``lr_scheduler``. (Hydra's own group selection would append the component's defaults *after* the
  yaml, silently replacing its values, e.g. ``task.label_rate`` and ``model.mask_prob``.)
* ``model.preset=tiny`` and every other key of those components needs no ``+`` even when the yaml
  lacks it (it becomes ``++``: add or override); a misspelt key is still refused when fairseq merges
  the section into the component's config.

Under ``torchrun`` it also passes each process's rank, world size and device (from ``LOCAL_RANK``)
to fairseq, which otherwise guesses the device and fails on CPU-only machines.
"""
from __future__ import annotations

import os
import re
import sys
from typing import List, Mapping, Sequence


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


#: The config sections that hold one fairseq component each (``_name`` selects it).
COMPONENTS = ("model", "task", "criterion", "optimizer", "lr_scheduler")
_SELECTION = re.compile(rf"^\+?({'|'.join(COMPONENTS)})=([A-Za-z0-9_]+)$")
_SETTING = re.compile(rf"^({'|'.join(COMPONENTS)})\.[A-Za-z0-9_.]+=")
_FLAGS_WITH_VALUE = ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp")


def component_overrides(argv: Sequence[str]) -> List[str]:
    """The command line with ``G=name``/``+G=name`` as ``++G._name=name`` and ``G.key=value`` as
    ``++G.key=value`` for the component sections (module docstring); everything else unchanged."""
    rewritten: List[str] = []
    takes_value = False
    for arg in argv:
        if takes_value or arg.startswith("-"):
            takes_value = arg in _FLAGS_WITH_VALUE
            rewritten.append(arg)
            continue
        selection = _SELECTION.match(arg)
        if selection:
            rewritten.append(f"++{selection.group(1)}._name={selection.group(2)}")
        elif _SETTING.match(arg):
            rewritten.append("++" + arg)
        else:
            rewritten.append(arg)
    return rewritten


def preset_arguments(argv: Sequence[str]) -> List[str]:
    """``--config-name KIND/NAME`` (``-cn``) as ``--config-dir <package>/config/KIND --config-name NAME``
    when no config directory is given and the package ships that preset; everything else unchanged."""
    from . import presets

    args = list(argv)
    if any(arg in ("--config-dir", "-cd", "--config-path", "-cp") or arg.startswith("--config-dir=")
           for arg in args):
        return args
    for position, arg in enumerate(args[:-1]):
        kind, _, name = args[position + 1].partition("/")
        if arg in ("--config-name", "-cn") and kind in presets.KINDS and name in presets.names(kind):
            return [*args[:position], "--config-dir", str(presets.config_dir(kind)), "--config-name", name,
                    *args[position + 2:]]
    return args


HELP_FLAGS = ("-h", "--help")
#: Hydra's own help (config groups and the composed config), which needs fairseq's whole config.
FAIRSEQ_HELP_FLAG = "--fairseq-help"


def usage() -> str:
    """What ``-h``/``--help`` prints: this module's description, without composing any config."""
    return (f"usage: k2ssl-hydra-train [--config-dir DIR] [--config-name NAME | KIND/NAME] [OVERRIDE ...]\n\n"
            f"{__doc__}\n{FAIRSEQ_HELP_FLAG} prints Hydra's help for fairseq's config (slow: it composes it).\n")


def hydra_train() -> None:
    """Console entry point."""
    if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
        print(usage())
        return
    sys.argv = [("--help" if arg == FAIRSEQ_HELP_FLAG else arg) for arg in sys.argv]
    from fairseq_cli.hydra_train import cli_main  # configures logging, so the plugin's start-up line shows

    from . import registration

    registration.register()  # before Hydra composes the config, which needs the plugin's dataclasses
    sys.argv = [sys.argv[0], *component_overrides(preset_arguments(sys.argv[1:])), *torchrun_overrides()]
    cli_main()


if __name__ == "__main__":
    hydra_train()
