"""Greedy CTC decoding of a fine-tuned ``k2ssl_ctc`` checkpoint: hypotheses, references and WER/CER.

Example::

    k2ssl-decode --checkpoint runs/ft/ckpt/checkpoint_best.pt --data /data/demo \\
        --subset test --results-dir runs/ft/decode_test

Writes ``hyp.wrd``, ``ref.wrd``, ``hyp.ltr``, ``ref.ltr`` and ``wer.json`` into the results directory
(default: ``decode_<subset>`` next to the checkpoint). Exits with status 2 and a one-line message on
bad input (missing dictionary or manifest, vocabulary that does not match the model).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from . import quiet_library_output


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="fine-tuned k2ssl_ctc checkpoint")
    parser.add_argument("--data", type=Path, required=True, help="directory with SUBSET.tsv/.ltr and dict.ltr.txt")
    parser.add_argument("--subset", required=True, help="split to decode, e.g. valid or test")
    parser.add_argument("--results-dir", type=Path, default=None, help="output directory")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    parser.add_argument("--max-duration", type=float, default=100.0, help="seconds of audio per batch")
    parser.add_argument("--trusted-checkpoint", action="store_true",
                        help="fully unpickle the checkpoint (only for files you trust)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    quiet_library_output()
    from k2ssl_fairseq.checkpoints import CheckpointError
    from k2ssl_fairseq.data.errors import InvalidInputError
    from k2ssl_fairseq.decoding import decode_checkpoint

    results_dir = args.results_dir or args.checkpoint.resolve().parent / f"decode_{args.subset}"
    try:
        report = decode_checkpoint(args.checkpoint, args.data, args.subset, results_dir, args.device,
                                   args.max_duration, args.trusted_checkpoint)
    except (CheckpointError, InvalidInputError) as err:
        print(f"decode_ctc: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.subset}: WER {report['wer']:.2f}% ({report['word_errors']}/{report['ref_words']}), "
          f"CER {report['cer']:.2f}% ({report['char_errors']}/{report['ref_chars']}), "
          f"{report['utterances']} utterances -> {results_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
