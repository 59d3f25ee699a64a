"""Checkpoint conversion between stock/upstream formats and the plugin's models (library code; the
``scripts/`` CLIs only parse arguments and call these modules)."""
