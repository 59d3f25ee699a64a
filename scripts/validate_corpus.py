#!/usr/bin/env python3
"""``k2ssl-validate-corpus`` for a clone without the entry points installed (same arguments): see k2ssl_fairseq/tools/validate_corpus.py."""
import sys

from k2ssl_fairseq.tools.validate_corpus import main

if __name__ == "__main__":
    sys.exit(main())
