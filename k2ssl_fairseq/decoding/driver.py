"""Decode a fine-tuned ``k2ssl_ctc`` checkpoint on one subset and write hypotheses, references and WER.

The checkpoint is self-contained (its config records the encoder), so only the data directory is
needed: ``{subset}.tsv``, the transcripts ``{subset}.{label}`` and the dictionary ``dict.{label}.txt``
(``label`` is the fine-tuning task's, normally ``ltr``). Batches are the task's own (whole
utterances in duration buckets); each utterance's padded frames are cut off before the search.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
from fairseq.data.dictionary import Dictionary
from omegaconf import open_dict

from .. import checkpoints
from ..checkpoints import CheckpointMismatchError
from ..data.dictionary import load_dictionary
from ..data.manifest import ManifestError
from ..models import k2ssl_ctc  # noqa: F401  (registers k2ssl_ctc for task.build_model)
from .greedy import greedy_ctc
from .scoring import ErrorCounts, letters_to_words, score


@dataclass
class Transcript:
    """One decoded utterance, as unit symbols."""

    utterance_id: int
    hypothesis: List[str]
    reference: List[str]


def load_for_decoding(checkpoint: Path, data: Path, trusted: bool = False):
    """The fine-tuned model (eval mode, on CPU) and its task pointed at ``data``.

    Raises:
        checkpoints.CheckpointError: unreadable, refused, not a ``k2ssl_ctc`` checkpoint, or a CTC head
            whose size differs from the dictionary's.
        DictionaryError: the transcripts' dictionary is missing or malformed.
    """
    state = checkpoints.load_checkpoint(checkpoint, trusted=trusted)
    cfg = state.get("cfg")
    found = None if cfg is None else cfg.model.get("_name")
    if found != "k2ssl_ctc":
        raise CheckpointMismatchError(checkpoint, f"model is {found!r}; decode_ctc decodes fine-tuned k2ssl_ctc "
                                                  f"checkpoints")
    with open_dict(cfg.task):
        cfg.task.data = str(data)
        cfg.task.label_dir = str(data)
    dictionary_path = Path(data) / f"dict.{cfg.task.labels[0]}.txt"
    dictionary = load_dictionary(dictionary_path)
    head_size = state["model"]["proj.weight"].shape[0]
    if len(dictionary) != head_size:
        raise CheckpointMismatchError(
            checkpoint, f"its CTC head has {head_size} units but {dictionary_path} has {len(dictionary)} (with "
                        f"fairseq's 4 specials); use the dictionary the model was fine-tuned with")
    model, task = checkpoints.build_model(state, checkpoint)
    return model.eval(), task


def transcribe(model: torch.nn.Module, batches: Iterable[Dict[str, Any]], dictionary: Dictionary,
               device: torch.device) -> List[Transcript]:
    """Greedy transcripts of every utterance in ``batches``, sorted by utterance id.

    Args:
        model: anything with the ``k2ssl_ctc`` interface: ``model(**net_input)`` and ``get_logits``.
        batches: fairseq samples with ``net_input``, ``target``, ``target_lengths`` and ``id``.
        dictionary: the target dictionary; its ``<s>`` is the blank, pad and eos never print.
    """
    blank, silent = dictionary.bos(), {dictionary.pad(), dictionary.eos()}
    found: List[Transcript] = []
    with torch.inference_mode():
        for sample in batches:
            net_input = {k: v.to(device) if torch.is_tensor(v) else v for k, v in sample["net_input"].items()}
            net_output = model(**net_input)
            emissions = model.get_logits(net_output).transpose(0, 1)
            padding = net_output["encoder_padding_mask"]
            lengths = None if padding is None else (~padding).sum(1)
            for row, units in enumerate(greedy_ctc(emissions, lengths, blank)):
                reference = sample["target"][row, : int(sample["target_lengths"][row])].tolist()
                found.append(Transcript(
                    utterance_id=int(sample["id"][row]),
                    hypothesis=[dictionary[i] for i in units if i not in silent],
                    reference=[dictionary[i] for i in reference if i not in silent]))
    return sorted(found, key=lambda t: t.utterance_id)


def write_results(transcripts: Sequence[Transcript], results_dir: Path, summary: Dict[str, Any]) -> ErrorCounts:
    """Write ``hyp.ltr``, ``ref.ltr``, ``hyp.wrd``, ``ref.wrd`` (one line per utterance, id order) and
    ``wer.json`` (``summary`` plus the error counts); return the counts."""
    results_dir.mkdir(parents=True, exist_ok=True)
    hyp_words = [letters_to_words(t.hypothesis) for t in transcripts]
    ref_words = [letters_to_words(t.reference) for t in transcripts]
    files = {"hyp.ltr": [" ".join(t.hypothesis) for t in transcripts],
             "ref.ltr": [" ".join(t.reference) for t in transcripts],
             "hyp.wrd": hyp_words, "ref.wrd": ref_words}
    for name, lines in files.items():
        (results_dir / name).write_text("".join(line + "\n" for line in lines))
    counts = score(zip(hyp_words, ref_words))
    report = {**summary, "wer": round(counts.wer, 4), "cer": round(counts.cer, 4),
              "word_errors": counts.word_errors, "ref_words": counts.ref_words,
              "char_errors": counts.char_errors, "ref_chars": counts.ref_chars, "utterances": counts.utterances}
    (results_dir / "wer.json").write_text(json.dumps(report, indent=2) + "\n")
    return counts


def decode_checkpoint(checkpoint: Path, data: Path, subset: str, results_dir: Path,
                      device: Optional[str] = None, max_duration: float = 100.0,
                      trusted: bool = False) -> Dict[str, Any]:
    """Decode ``subset`` of ``data`` with a fine-tuned checkpoint; write the results; return ``wer.json``'s dict.

    Args:
        checkpoint: fine-tuned ``k2ssl_ctc`` checkpoint.
        data: directory with ``{subset}.tsv``, ``{subset}.{label}`` and ``dict.{label}.txt``.
        subset: split name, e.g. ``valid`` or ``test``.
        results_dir: where the hypothesis/reference files and ``wer.json`` go.
        device: ``cpu`` or ``cuda``; default ``cuda`` when available.
        max_duration: seconds of audio per batch.
        trusted: fully unpickle the checkpoint (see ``k2ssl_fairseq.checkpoints``).
    """
    checkpoint, data = Path(checkpoint).resolve(), Path(data).resolve()
    started = time.perf_counter()
    if not (data / f"{subset}.tsv").is_file():
        raise ManifestError(f"{data / f'{subset}.tsv'}: missing manifest for subset '{subset}'")
    model, task = load_for_decoding(checkpoint, data, trusted)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(target)
    task.load_dataset(subset)
    max_tokens = int(max_duration * task.cfg.sample_rate)
    batches = task.get_batch_iterator(dataset=task.dataset(subset), max_tokens=max_tokens, seed=1, epoch=1,
                                      disable_iterator_cache=True).next_epoch_itr(shuffle=False)
    transcripts = transcribe(model, batches, task.target_dictionary, target)
    summary = {"checkpoint": str(checkpoint), "data": str(data), "subset": subset, "device": str(target),
               "decoder": "greedy_ctc", "seconds": round(time.perf_counter() - started, 3)}
    write_results(transcripts, Path(results_dir), summary)
    return json.loads((Path(results_dir) / "wer.json").read_text())
