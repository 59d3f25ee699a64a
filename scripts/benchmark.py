#!/usr/bin/env python3
"""A/B benchmark: stock fairseq HuBERT vs the plugin's systems (see k2ssl_fairseq/bench/ab.py)."""
from k2ssl_fairseq.bench.ab import main

if __name__ == "__main__":
    main()
