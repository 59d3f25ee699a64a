#!/usr/bin/env python3
"""``k2ssl-benchmark`` for a clone without the entry points installed: see k2ssl_fairseq/bench/ab.py."""
import sys

from k2ssl_fairseq.bench.ab import main

if __name__ == "__main__":
    sys.exit(main())
