#!/usr/bin/env python3
"""``k2ssl-migrate`` for a clone without the entry points installed (same arguments): see k2ssl_fairseq/tools/migrate_checkpoint.py."""
import sys

from k2ssl_fairseq.tools.migrate_checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
