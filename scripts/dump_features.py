#!/usr/bin/env python3
"""``k2ssl-dump-features`` for a clone without the entry points installed (same arguments): see k2ssl_fairseq/tools/dump_features.py."""
import sys

from k2ssl_fairseq.tools.dump_features import main

if __name__ == "__main__":
    sys.exit(main())
