"""Registered fairseq components; each module registers itself on import."""
