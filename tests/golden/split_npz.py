#!/usr/bin/env python
"""Store a golden ``.npz`` over 2 MB as parts the repository can hold, with the numbers unchanged.

Keys starting with a ``--part NAME=PREFIX`` prefix go to ``<stem>.NAME.npz``, the rest to
``<stem>.npz`` (all ``numpy.savez_compressed``, dtypes as stored). The parts are read back, merged the
way the tests merge them (``helpers.golden_arrays``) and compared with the source array by array;
the script prints the source's array digest, which ``manifest.json`` records.

    python tests/golden/split_npz.py $GOLDEN/zipformer_ssl_tiny_case1.npz --part encoder=param/encoder. \\
        --out tests/golden
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import array_digest, golden_arrays  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="the golden .npz to split")
    parser.add_argument("--part", action="append", default=[], metavar="NAME=PREFIX", required=True,
                        help="keys starting with PREFIX are written to <stem>.NAME.npz")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the parts to")
    args = parser.parse_args()
    parts = dict(spec.split("=", 1) for spec in args.part)
    with np.load(args.source) as npz:
        source = {key: npz[key] for key in npz.files}
    stem = args.source.stem
    groups = {f"{stem}.{name}": {k: v for k, v in source.items() if k.startswith(prefix)}
              for name, prefix in parts.items()}
    claimed = {key for group in groups.values() for key in group}
    groups[stem] = {k: v for k, v in source.items() if k not in claimed}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, arrays in groups.items():
        np.savez_compressed(args.out / f"{name}.npz", **arrays)
        print(f"{args.out / name}.npz: {len(arrays)} arrays, {(args.out / f'{name}.npz').stat().st_size:,} bytes")
    merged = golden_arrays(stem, args.out)
    if merged.keys() != source.keys() or any(
            merged[k].dtype != v.dtype or not np.array_equal(merged[k], v) for k, v in source.items()):
        sys.exit(f"{args.out}: the parts of {stem} do not hold the source's arrays")
    print(f"array digest {array_digest(source)}")


if __name__ == "__main__":
    main()
