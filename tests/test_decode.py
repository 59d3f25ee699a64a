"""Greedy CTC decoding and WER/CER on hand-computed examples, and 0% WER from perfect emissions."""
from __future__ import annotations

import json

import pytest
import torch
from fairseq.data.dictionary import Dictionary

from k2ssl_fairseq.decoding import ErrorCounts, greedy_ctc, letters_to_words, score
from k2ssl_fairseq.decoding.driver import transcribe, write_results


def test_greedy_merges_repeats_drops_blanks_and_stops_at_length():
    # frames per row; 0 = blank. Row 0: a a _ a b b -> [a, a, b]; row 1 valid for 3 frames only.
    best = torch.tensor([[1, 1, 0, 1, 2, 2],
                         [3, 0, 3, 2, 2, 1]])
    emissions = torch.nn.functional.one_hot(best, 4).float()
    assert greedy_ctc(emissions, torch.tensor([6, 3]), blank=0) == [[1, 1, 2], [3, 3]]
    assert greedy_ctc(emissions, None, blank=0) == [[1, 1, 2], [3, 3, 2, 1]]
    assert greedy_ctc(emissions, torch.tensor([0, 1]), blank=0) == [[], [3]]


def test_greedy_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\(batch, frame, vocabulary\)"):
        greedy_ctc(torch.zeros(3, 4), None, blank=0)


def test_letters_to_words():
    assert letters_to_words(["T", "H", "E", "|", "C", "A", "T", "|"]) == "THE CAT"
    assert letters_to_words(["|", "A", "|", "|", "B"]) == "A B"
    assert letters_to_words([]) == ""


def test_error_rates_hand_computed():
    # "THE CAT SAT" -> "THE BAT SAT ON": 1 substitution + 1 insertion = 2 word errors of 3;
    # characters (11 in the reference): C->B and " ON" inserted = 4 edits.
    # "A B" -> "": 2 word deletions of 2, 3 character deletions of 3.
    counts = score([("THE BAT SAT ON", "THE CAT SAT"), ("", "A B")])
    assert (counts.word_errors, counts.ref_words, counts.char_errors, counts.ref_chars) == (4, 5, 7, 14)
    assert counts.wer == pytest.approx(80.0)
    assert counts.cer == pytest.approx(50.0)
    assert counts.utterances == 2
    single = ErrorCounts()
    single.add("THE  BAT SAT ON ", "THE CAT SAT")
    assert single.wer == pytest.approx(200 / 3) and single.cer == pytest.approx(400 / 11)


class PerfectEmissions(torch.nn.Module):
    """Stub emission model: the 'audio' holds the unit id of each frame; emissions are its one-hot.

    Padded frames hold a non-blank unit, so only per-utterance length stripping keeps them out.
    """

    def __init__(self, vocabulary: int) -> None:
        super().__init__()
        self.vocabulary = vocabulary

    def forward(self, source, padding_mask=None):
        logits = torch.nn.functional.one_hot(source.long(), self.vocabulary).float() * 10
        return {"encoder_out": logits.transpose(0, 1), "encoder_padding_mask": padding_mask,
                "padding_mask": padding_mask}

    def get_logits(self, net_output):
        return net_output["encoder_out"]


def letter_dictionary() -> Dictionary:
    dictionary = Dictionary()
    for symbol in "|ETAOHCS":
        dictionary.add_symbol(symbol)
    return dictionary


def perfect_batch(dictionary: Dictionary, transcripts, ids, garbage: str = "E"):
    """Frames: each unit once, a blank between repeats, blanks around; padding filled with ``garbage``."""
    rows, targets = [], []
    for text in transcripts:
        units = [dictionary.index(u) for u in text.split()]
        frames = [dictionary.bos()]
        for unit in units:
            if frames[-1] == unit:
                frames.append(dictionary.bos())
            frames += [unit, unit]
        rows.append(frames + [dictionary.bos()])
        targets.append(units)
    width = max(map(len, rows)) + 3
    source = torch.full((len(rows), width), dictionary.index(garbage), dtype=torch.float32)
    padding = torch.ones(len(rows), width, dtype=torch.bool)
    target = torch.full((len(rows), max(map(len, targets))), dictionary.pad())
    for b, (frames, units) in enumerate(zip(rows, targets)):
        source[b, : len(frames)] = torch.tensor(frames, dtype=torch.float32)
        padding[b, : len(frames)] = False
        target[b, : len(units)] = torch.tensor(units)
    return {"id": torch.tensor(ids), "net_input": {"source": source, "padding_mask": padding},
            "target": target, "target_lengths": torch.tensor([len(u) for u in targets])}


def test_perfect_emissions_give_zero_wer(tmp_path):
    dictionary = letter_dictionary()
    batches = [perfect_batch(dictionary, ["T H E | C A T |", "S E E |"], ids=[2, 0]),
               perfect_batch(dictionary, ["A | T O O T H |"], ids=[1])]
    transcripts = transcribe(PerfectEmissions(len(dictionary)), batches, dictionary, torch.device("cpu"))
    assert [t.utterance_id for t in transcripts] == [0, 1, 2]
    counts = write_results(transcripts, tmp_path, {"subset": "stub"})
    assert counts.wer == 0.0 and counts.cer == 0.0 and counts.ref_words == 5
    assert (tmp_path / "hyp.wrd").read_text() == "SEE\nA TOOTH\nTHE CAT\n"
    assert (tmp_path / "ref.wrd").read_text() == (tmp_path / "hyp.wrd").read_text()
    assert (tmp_path / "hyp.ltr").read_text().splitlines()[0] == "S E E |"
    report = json.loads((tmp_path / "wer.json").read_text())
    assert report["wer"] == 0.0 and report["subset"] == "stub" and report["utterances"] == 3


def test_one_wrong_frame_is_counted(tmp_path):
    dictionary = letter_dictionary()
    sample = perfect_batch(dictionary, ["T H E | C A T |"], ids=[0])
    sample["net_input"]["source"][0, 9:11] = dictionary.index("H")  # the two frames of "C" now read "H"
    transcripts = transcribe(PerfectEmissions(len(dictionary)), [sample], dictionary, torch.device("cpu"))
    counts = write_results(transcripts, tmp_path, {})
    assert (tmp_path / "hyp.wrd").read_text() == "THE HAT\n"
    assert (counts.word_errors, counts.ref_words, counts.char_errors, counts.ref_chars) == (1, 2, 1, 7)
