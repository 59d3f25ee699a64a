"""Readers of manifests, labels, dictionaries and checkpoint folders: each failure seen in the field gets
a clear error naming file and line (or a warning), and random input never gives another exception
type or silently different data."""
from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pytest
from fairseq.data.dictionary import Dictionary
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from k2ssl_fairseq.data.dictionary import DictionaryError, load_dictionary
from k2ssl_fairseq.data.index import IndexSettings, InvalidInputError, LabelSource, build_index
from k2ssl_fairseq.data.labels import load_labels, parse_labels
from k2ssl_fairseq.data.manifest import ManifestError, read_manifest
from k2ssl_fairseq.data.synthetic import make_tiny_corpus
from k2ssl_fairseq.patches.atomic_checkpoints import remove_stale_checkpoint_temporaries

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
KM_SYMBOLS = SPECIALS + [str(k) for k in range(20)]


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    return make_tiny_corpus(tmp_path / "corpus", splits={"train": 6})


def lines_of(path: Path) -> List[str]:
    return path.read_text().splitlines()


def write_lines(path: Path, lines: List[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


# -- label cache ------------------------------------------------------------------------------------

def test_label_cache_sees_a_replacement_with_the_same_size_and_mtime(corpus: Path):
    path = corpus / "train.km"
    first = load_labels(path, KM_SYMBOLS)
    stat = path.stat()
    lines = lines_of(path)
    lines[0] = " ".join("1" if token == "2" else "2" if token == "1" else token for token in lines[0].split())
    assert lines != lines_of(path)
    write_lines(path, lines)  # what cp -p / rsync -a / tar x leave: same size, same mtime
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    second = load_labels(path, KM_SYMBOLS)
    np.testing.assert_array_equal(second.line(0), [int(t) + 4 for t in lines[0].split()])
    assert not np.array_equal(first.line(0), second.line(0))


def test_uncreatable_cache_dir_is_a_warning_not_a_crash(corpus: Path, caplog):
    blocker = corpus / "not_a_dir"
    blocker.write_text("a file where the cache directory should be")
    with caplog.at_level(logging.WARNING):
        labels = load_labels(corpus / "train.km", KM_SYMBOLS, cache_dir=blocker / "cache")
    assert len(labels) == 6
    assert "cannot write label cache" in caplog.text and str(blocker) in caplog.text


# -- manifests ----------------------------------------------------------------------------------------

def test_trailing_whitespace_after_the_sample_count_is_accepted(corpus: Path):
    lines = lines_of(corpus / "train.tsv")
    lines[2] = lines[2] + "  "
    lines[3] = lines[3] + "\r"
    write_lines(corpus / "train.tsv", lines)
    reference = read_manifest(corpus / "train.tsv")
    problems: List[str] = []
    tolerant = read_manifest(corpus / "train.tsv", problems)
    assert problems == [] and len(reference) == len(tolerant) == 6
    assert reference.num_samples[1] == int(lines[2].split("\t")[1])


def test_a_blank_manifest_line_is_named_in_the_manifest(corpus: Path):
    lines = lines_of(corpus / "train.tsv")
    write_lines(corpus / "train.tsv", lines[:3] + [""] + lines[3:])
    source = LabelSource(corpus / "train.km", KM_SYMBOLS, 50.0)
    for skip in (False, True):
        with pytest.raises(ManifestError, match=r"train\.tsv:4: empty line") as err:
            build_index(corpus / "train.tsv", [source], IndexSettings(skip_invalid=skip))
        assert "train.km" not in str(err.value)


# -- dictionaries --------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, where, problem", [
    ("0 1\n1\n2 1\n", 2, "expected '<symbol> <count>'"),
    ("0 1\n1 one\n", 2, "count 'one' of symbol '1' is not an integer"),
    ("0 1\n1 1\n0 5\n", 3, "duplicate symbol '0' \\(already line 1\\)"),
    ("<s> 1\n", 1, "duplicate symbol '<s>' \\(already a built-in special symbol\\)"),
    ("0 1\n\n", 2, "expected '<symbol> <count>'"),
])
def test_malformed_or_duplicate_dictionary_lines_name_file_and_line(tmp_path: Path, content, where, problem):
    path = tmp_path / "dict.km.txt"
    path.write_text(content)
    with pytest.raises(DictionaryError, match=rf"dict\.km\.txt:{where}: {problem}"):
        load_dictionary(path)
    with pytest.raises(Exception):  # fairseq refuses it too, without saying where
        Dictionary.load(str(path))


def test_an_empty_symbol_is_refused_where_fairseq_would_add_it(tmp_path: Path):
    path = tmp_path / "dict.km.txt"
    path.write_text("0 1\n 1\n")
    with pytest.raises(DictionaryError, match=r"dict\.km\.txt:2: empty symbol"):
        load_dictionary(path)
    assert "" in Dictionary.load(str(path)).symbols  # no label token can ever be ""


def test_pretraining_task_reports_dictionary_problems_with_file_and_line(corpus: Path):
    from fairseq import tasks
    from omegaconf import OmegaConf

    import k2ssl_fairseq  # noqa: F401  (registers the task)
    from k2ssl_fairseq.tasks.k2ssl_pretraining import K2sslPretrainingConfig

    (corpus / "dict.km.txt").write_text("0 1\n1 1\n1 1\n")
    cfg = OmegaConf.structured(K2sslPretrainingConfig(data=str(corpus), label_dir=str(corpus), labels=["km"]))
    cfg._name = "k2ssl_pretraining"
    with pytest.raises(DictionaryError, match=r"dict\.km\.txt:3: duplicate symbol '1'"):
        tasks.setup_task(cfg).dictionaries
    (corpus / "dict.km.txt").unlink()
    with pytest.raises(DictionaryError, match=r"dict\.km\.txt: dictionary file does not exist"):
        tasks.setup_task(cfg).dictionaries


def test_overwrite_flag_replaces_like_fairseq(tmp_path: Path):
    path = tmp_path / "dict.txt"
    path.write_text("a 3\nb 2\na 7 #fairseq:overwrite\n")
    ours, theirs = load_dictionary(path), Dictionary.load(str(path))
    assert ours.symbols == theirs.symbols and ours.count == theirs.count


# -- label tokens ---------------------------------------------------------------------------------------

def test_a_zero_padded_km_token_is_not_read_as_another_symbol(corpus: Path):
    lines = lines_of(corpus / "train.km")
    tokens = lines[2].split()
    tokens[0] = "0" + tokens[0]
    lines[2] = " ".join(tokens)
    write_lines(corpus / "train.km", lines)
    labels = parse_labels(corpus / "train.km", KM_SYMBOLS)
    assert labels.problem_lines.tolist() == [2]
    assert f"'{tokens[0]}'" in labels.problem_texts[0]
    with pytest.raises(InvalidInputError, match=rf"train\.km:3: unknown symbol\(s\) \['{tokens[0]}'\]"):
        build_index(corpus / "train.tsv", [LabelSource(corpus / "train.km", KM_SYMBOLS, 50.0)], IndexSettings())


def test_digit_like_dictionary_symbols_are_looked_up_as_text(tmp_path: Path):
    symbols = SPECIALS + ["0", "1", "²", "07", "x"]
    path = tmp_path / "train.km"
    write_lines(path, ["0 1 ² 07 x", "1 1", "7"])
    labels = parse_labels(path, symbols)
    assert labels.line(0).tolist() == [4, 5, 6, 7, 8] and labels.line(1).tolist() == [5, 5]
    assert labels.problem_lines.tolist() == [2]


# -- stale temporary checkpoint files ------------------------------------------------------------------

def test_stale_temporary_removal_matches_only_the_writers_pattern(tmp_path: Path):
    names = [".checkpoint_best.pt.abc_123.tmp", ".checkpoint_3_400.pt.Zz9.tmp", ".checkpoint_last.pt.tmp",
             "checkpoint_last.pt", ".checkpoint_last.pt.abc.tmp.old", ".x.pt.a-b.tmp"]
    for name in names:
        (tmp_path / name).write_text("x")
    removed = {Path(p).name for p in remove_stale_checkpoint_temporaries(str(tmp_path))}
    assert removed == {".checkpoint_best.pt.abc_123.tmp", ".checkpoint_3_400.pt.Zz9.tmp"}
    assert remove_stale_checkpoint_temporaries(str(tmp_path / "missing")) == []


# -- fuzzing: every input loads as the format says, or fails naming its file and line ------------------

# The examples' count and seeding come from the hypothesis profile (tests/conftest.py).
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
CHARS = st.sampled_from(list("ab./_07 \t\r") + ["1", "²", "٣", "\x0b", "\x85", "é", "#", "-", "+"])
TEXT_LINES = st.lists(st.text(CHARS, max_size=14), max_size=8)


def _written(lines: List[str], name: str) -> Path:
    folder = Path(tempfile.mkdtemp())
    path = folder / name
    path.write_bytes("\n".join(lines).encode("utf-8") + (b"\n" if lines else b""))
    return path


def _manifest_oracle(line: str) -> Optional[Tuple[str, int]]:
    """Stock fairseq's reading of a data line, counts restricted to ASCII digits."""
    fields = line.strip().split("\t")
    if len(fields) != 2 or not fields[0] or not line.strip():
        return None
    count = fields[1].strip()
    if not (count.isascii() and count.isdigit()) or int(count) == 0:
        return None
    return fields[0], int(count)


@FUZZ
@given(lines=TEXT_LINES, tolerant=st.booleans())
def test_fuzz_manifest(lines, tolerant):
    path = _written(["/root"] + lines, "train.tsv")
    problems: Optional[List[str]] = [] if tolerant else None
    expected = [_manifest_oracle(line) for line in lines]
    try:
        manifest = read_manifest(path, problems)
    except ManifestError as err:
        bad = [i for i, e in enumerate(expected) if e is None]
        assert bad, f"refused a valid manifest: {err}"
        first_empty = next((i for i in bad if not lines[i].strip()), None)
        blamed = first_empty if tolerant and first_empty is not None else bad[0]
        assert str(err).startswith(f"{path}:{blamed + 2}: ")
        return
    valid = [e for e in expected if e is not None]
    assert list(zip(manifest.names, manifest.num_samples.tolist())) == valid
    assert manifest.lines.tolist() == [i for i, e in enumerate(expected) if e is not None]
    assert tolerant or len(valid) == len(lines)
    if tolerant:
        assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:{i + 2}" for i, e in enumerate(expected) if e is None]


@FUZZ
@given(lines=TEXT_LINES, extra=st.lists(st.sampled_from(["²", "07", "x", "٣", "+1", "a b"]), max_size=3, unique=True))
def test_fuzz_labels(lines, extra):
    symbols = SPECIALS + [str(k) for k in range(8)] + extra
    path = _written(lines, "train.km")
    labels = parse_labels(path, symbols)
    lookup = {s: i for i, s in enumerate(symbols)}
    assert len(labels) == len(lines)
    problems = dict(zip(labels.problem_lines.tolist(), labels.problem_texts))
    for number, line in enumerate(lines):
        tokens = line.split()
        if tokens and all(t in lookup for t in tokens):
            assert number not in problems and labels.line(number).tolist() == [lookup[t] for t in tokens]
        else:
            assert number in problems and labels.line(number).size == 0


@FUZZ
@given(lines=st.lists(st.lists(st.sampled_from(list("ab1 7-+²\t") + [" #fairseq:overwrite"]), max_size=8).map("".join),
                      max_size=8))
def test_fuzz_dictionary_agrees_with_fairseq_or_names_the_line(lines):
    path = _written(lines, "dict.txt")
    try:
        theirs = Dictionary.load(str(path))
    except Exception:
        theirs = None
    try:
        ours = load_dictionary(path)
    except DictionaryError as err:
        where, line_no = str(err).split(": ", 1)[0].rsplit(":", 1)
        assert where == str(path) and line_no.isdigit()
        if theirs is not None:  # stricter than fairseq only on an empty symbol, or a count that int()
            if "empty symbol" not in str(err):  # reads but that is not -?[0-9]+
                count = _count_field(lines[int(line_no) - 1])
                assert "count" in str(err) and not re.fullmatch(r"-?[0-9]+", count)
                int(count)
        return
    assert theirs is not None and ours.symbols == theirs.symbols and ours.count == theirs.count


def _count_field(line: str) -> str:
    symbol_and_count = line.rstrip().rsplit(" ", 1)
    if symbol_and_count[-1] == "#fairseq:overwrite":
        symbol_and_count = symbol_and_count[0].rsplit(" ", 1)
    return symbol_and_count[-1]
