#!/usr/bin/env python3
"""``k2ssl-decode`` for a clone without the entry points installed (same arguments): see k2ssl_fairseq/tools/decode_ctc.py."""
import sys

from k2ssl_fairseq.tools.decode_ctc import main

if __name__ == "__main__":
    sys.exit(main())
