"""Where the installed plugin is: the path for ``common.user_dir``, and the yaml presets it ships.

    k2ssl-info                 # version, user dir, presets
    k2ssl-info --user-dir      # only the path, e.g. fairseq-hydra-train common.user_dir=$(k2ssl-info --user-dir)
    k2ssl-info --presets       # one line per preset: kind/name and its file
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from .. import __version__, presets

PLUGIN_DIR = Path(__file__).resolve().parents[1]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    show = parser.add_mutually_exclusive_group()
    show.add_argument("--user-dir", action="store_true", help="print the directory to pass as common.user_dir")
    show.add_argument("--presets", action="store_true", help="print every preset as KIND/NAME PATH")
    args = parser.parse_args(argv)
    listing = [f"{kind}/{name} {presets.config_dir(kind) / (name + '.yaml')}"
               for kind in presets.KINDS for name in presets.names(kind)]
    if args.user_dir:
        print(PLUGIN_DIR)
    elif args.presets:
        print("\n".join(listing))
    else:
        print(f"k2ssl_fairseq {__version__}\nuser dir: {PLUGIN_DIR}\npresets (k2ssl-hydra-train --config-name "
              f"KIND/NAME, or fairseq-hydra-train --config-dir {presets.CONFIG_DIR}/KIND --config-name NAME):")
        print("\n".join("  " + line for line in listing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
