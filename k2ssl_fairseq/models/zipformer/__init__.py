"""Zipformer2 encoder blocks in plain PyTorch (no fairseq imports)."""
