"""Benchmarking: the A/B harness against stock fairseq HuBERT (``ab``), the plumbing every benchmark
script shares (``common``), and stock HuBERT's own configs (``stock``)."""
