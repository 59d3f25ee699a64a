"""Convert stock fairseq HuBERT checkpoints to the plugin's models (and pre-training ones back).

    k2ssl-migrate IN.pt OUT.pt --to k2ssl_hubert --verify     # pre-training
    k2ssl-migrate OUT.pt BACK.pt --to hubert --verify         # and back
    k2ssl-migrate FT.pt FT_K2.pt --to k2ssl_ctc --verify \\
        [--pretrained PRETRAIN.pt]                            # fine-tuned hubert_ctc

A ``hubert_ctc`` checkpoint usually lacks its pre-training config (fairseq keeps only
``model.w2v_path``); ``--pretrained`` names that file when ``w2v_path`` is not valid on this machine.
The logic lives in ``k2ssl_fairseq.conversion``; this only parses arguments and prints.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import quiet_library_output

#: ``--to`` choices: conversion.hubert's PLUGIN_MODEL and STOCK_MODEL, conversion.hubert_ctc's PLUGIN_CTC_MODEL
#: (spelled out so that ``--help`` does not import torch; a test checks they agree).
MODELS = ("k2ssl_hubert", "hubert", "k2ssl_ctc")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="checkpoint to convert")
    parser.add_argument("destination", type=Path, help="where to write the converted checkpoint")
    parser.add_argument("--to", required=True,
                        choices=MODELS,
                        help="model the converted checkpoint is for (k2ssl_ctc: from a fine-tuned hubert_ctc)")
    parser.add_argument("--pretrained", type=Path,
                        help="hubert_ctc only: the pre-training checkpoint it was fine-tuned from "
                             "(default: its model.w2v_path)")
    parser.add_argument("--verify", action="store_true",
                        help="run both models on the same random audio (and masks) and print the max "
                             "difference per layer and of the losses, or of the CTC logits")
    parser.add_argument("--criterion", default=None,
                        help="pre-training only: the criterion training continues with (e.g. "
                             "k2ssl_masked_prediction), so that fairseq keeps the update count, lr schedule and "
                             "optimizer state on resume instead of asking to reset the optimizer")
    parser.add_argument("--trusted-checkpoint", action="store_true",
                        help="fully unpickle the source (only for files you trust)")
    args = parser.parse_args(argv)
    quiet_library_output()
    from k2ssl_fairseq import checkpoints
    from k2ssl_fairseq.conversion import hubert as conversion
    from k2ssl_fairseq.conversion import hubert_ctc
    fine_tuned = args.to == hubert_ctc.PLUGIN_CTC_MODEL
    try:
        if fine_tuned:
            converted, dropped = hubert_ctc.migrate_hubert_ctc(args.source, args.destination, args.pretrained,
                                                               trusted=args.trusted_checkpoint)
        else:
            converted, dropped = conversion.migrate_checkpoint(args.source, args.destination, args.to,
                                                               trusted=args.trusted_checkpoint,
                                                               criterion=args.criterion)
        print(f"wrote {args.destination} ({args.to}); reset machine paths: {', '.join(dropped) or 'none'}")
        if args.verify:
            source = checkpoints.read_fairseq_checkpoint(args.source, args.trusted_checkpoint)
            if fine_tuned:
                reference = hubert_ctc.build_stock_model(source, str(args.source), args.pretrained)
                record = checkpoints.EncoderRecord.from_mapping(converted["cfg"]["model"]["encoder"], args.destination)
                candidate = hubert_ctc.build_ctc_model(converted["cfg"]["model"], record,
                                                       int(converted["model"]["proj.weight"].shape[0]),
                                                       str(args.destination))
                candidate.load_state_dict(converted["model"], strict=True)
                report = hubert_ctc.compare_ctc_models(reference, candidate)
            else:
                report = conversion.compare_models(checkpoints.build_model(source, args.source)[0],
                                                   checkpoints.build_model(converted, args.destination)[0])
            for key, (diff, relative) in report.items():
                print(f"{key:>14}: max |diff| {diff:.3e}  relative {relative:.3e}")
    except checkpoints.CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
