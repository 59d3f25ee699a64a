#!/usr/bin/env python3
"""``k2ssl-learn-kmeans`` for a clone without the entry points installed (same arguments): see k2ssl_fairseq/tools/learn_kmeans.py."""
import sys

from k2ssl_fairseq.tools.learn_kmeans import main

if __name__ == "__main__":
    sys.exit(main())
