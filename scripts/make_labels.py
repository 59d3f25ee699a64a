#!/usr/bin/env python3
"""``k2ssl-make-labels`` for a clone without the entry points installed (same arguments): see k2ssl_fairseq/tools/make_labels.py."""
import sys

from k2ssl_fairseq.tools.make_labels import main

if __name__ == "__main__":
    sys.exit(main())
