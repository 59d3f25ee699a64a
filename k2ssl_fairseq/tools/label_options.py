"""Command-line pieces shared by the label tools: feature options and error reporting.

Only the standard library and yaml at import time, so that ``--help`` is instant."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple, Type

import yaml

if TYPE_CHECKING:
    from ..labels.pipeline import FeatureSpec


SAMPLE_RATE = 16000


def add_shard_arguments(parser: argparse.ArgumentParser, split_help: str) -> None:
    """The options that name a split's feature shards (fairseq's ``{split}_{rank}_{nshard}.npy/.len``)."""
    parser.add_argument("--feat-dir", type=Path, required=True, help="directory of {split}_{rank}_{nshard}.npy/.len")
    parser.add_argument("--split", required=True, help=split_help)
    parser.add_argument("--nshard", type=int, default=1, help="number of feature shards of the split")


def add_feature_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that choose the features (Kaldi MFCC/fbank or a checkpoint layer)."""
    group = parser.add_argument_group("features")
    group.add_argument("--feature", choices=("mfcc", "fbank", "checkpoint"), default="mfcc",
                       help="mfcc (39-d) / fbank (80-d) for iteration 1, checkpoint layer for iteration 2")
    group.add_argument("--label-rate", type=float, default=None,
                       help="100 (Kaldi rate) or 50 (every other frame, aligned with the CNN); "
                            "default 100 for mfcc/fbank, 50 for checkpoint (the only choice)")
    group.add_argument("--checkpoint", type=Path, help="fairseq checkpoint (stock HuBERT or plugin model)")
    group.add_argument("--layer", type=int, help="1-based encoder layer whose output is clustered")
    group.add_argument("--device", default="cpu", help="torch device for the checkpoint model")
    group.add_argument("--chunk-seconds", type=float, default=100.0,
                       help="long files are encoded in windows of this much audio")
    group.add_argument("--context-seconds", type=float, default=5.0,
                       help="audio added on each side of a window and dropped from the output")
    group.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                       help="fairseq config override when loading the checkpoint, e.g. label_dir=/data/km "
                            "(VALUE parsed as YAML); repeatable")
    group.add_argument("--trusted-checkpoint", action="store_true",
                       help="fully unpickle the checkpoint even if it holds objects outside the plugin's "
                            "allowlist (may execute code: only for files you trust)")


def parse_overrides(items: List[str]) -> Dict[str, object]:
    """``["key=value", ...]`` → dict, values parsed as YAML (numbers, booleans, lists)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--override expects KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def feature_spec_from_args(args: argparse.Namespace) -> "FeatureSpec":
    """The :class:`FeatureSpec` the parsed options describe."""
    from ..labels.pipeline import FeatureSpec

    default_rate = 50.0 if args.feature == "checkpoint" else 100.0
    return FeatureSpec(
        kind=args.feature, label_rate=args.label_rate or default_rate, checkpoint=args.checkpoint,
        layer=args.layer, device=args.device, chunk_samples=int(args.chunk_seconds * SAMPLE_RATE),
        context_samples=int(args.context_seconds * SAMPLE_RATE), arg_overrides=parse_overrides(args.override),
        trusted_checkpoint=args.trusted_checkpoint)


def run_reporting_errors(main: Callable[[Optional[List[str]]], None], argv: Optional[List[str]] = None) -> int:
    """Run a CLI body; input errors become one ``error: ...`` line and exit status 1, not a traceback."""
    try:
        main(argv)
    except Exception as error:
        if not isinstance(error, _input_errors()):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _input_errors() -> Tuple[Type[Exception], ...]:
    """Errors that mean bad input (imported only once something failed)."""
    from ..checkpoints import CheckpointError
    from ..data.audio import AudioReadError
    from ..data.manifest import ManifestError
    from ..labels.shards import LabelPipelineError

    return LabelPipelineError, ManifestError, AudioReadError, CheckpointError, FileNotFoundError, ValueError
