"""The demo corpus builder on a few sentences, and the validator that checks its output."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *map(str, args)],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "corpus"
    proc = _run("make_demo_corpus.py", out, "--minutes", "0.6", "--seed", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_builder_output_passes_validator(small_corpus: Path):
    proc = _run("validate_corpus.py", small_corpus)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((small_corpus / "corpus.json").read_text())
    splits = summary["splits"]
    assert set(splits) == {"pretrain", "train", "valid", "test"}
    assert all(splits[s]["utterances"] > 0 for s in splits)
    assert "asterisk:en" in splits["train"]["sources"]
    # Held-out voices: no test or valid voice reads in train or pretrain.
    for held_out in ("valid", "test"):
        assert not set(splits[held_out]["sources"]) & set(splits["train"]["sources"] + splits["pretrain"]["sources"])
    train_words = set((small_corpus / "train.wrd").read_text().splitlines())
    assert not train_words & set((small_corpus / "test.wrd").read_text().splitlines())
    header = (small_corpus / "train.tsv").read_text().splitlines()[0]
    assert Path(header) == small_corpus.resolve()


def test_builder_is_deterministic(small_corpus: Path, tmp_path: Path):
    again = tmp_path / "again"
    assert _run("make_demo_corpus.py", again, "--minutes", "0.6", "--seed", "3").returncode == 0
    for name in ("train.tsv", "test.ltr", "valid.wrd", "pretrain.tsv", "dict.ltr.txt"):
        first = (small_corpus / name).read_text().splitlines()[1:] if name.endswith(".tsv") else (small_corpus / name).read_text()
        second = (again / name).read_text().splitlines()[1:] if name.endswith(".tsv") else (again / name).read_text()
        assert first == second, name
    some_wav = (small_corpus / "test.tsv").read_text().splitlines()[1].split("\t")[0]
    assert (small_corpus / some_wav).read_bytes() == (again / some_wav).read_bytes()


@pytest.mark.parametrize("damage, expected", [
    ("count", "manifest says"),
    ("letters", "do not spell"),
    ("dict", "not in dict.ltr.txt"),
    ("lines", "lines but train.tsv has"),
    ("missing_audio", "cannot read"),
])
def test_validator_names_file_line_and_problem(small_corpus: Path, tmp_path: Path, damage: str, expected: str):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in small_corpus.iterdir():
        if f.is_file():
            (bad / f.name).write_text(f.read_text())
    tsv = (bad / "train.tsv").read_text().splitlines()
    tsv[0] = str(small_corpus.resolve())  # audio stays where it is
    if damage == "count":
        name, count = tsv[2].split("\t")
        tsv[2] = f"{name}\t{int(count) + 7}"
        where = "train.tsv:3"
    elif damage == "missing_audio":
        tsv[1] = "wav/train/nope.wav\t16000"
        where = "train.tsv:2"
    (bad / "train.tsv").write_text("\n".join(tsv) + "\n")
    ltr = (bad / "train.ltr").read_text().splitlines()
    if damage == "letters":
        ltr[1] = ltr[1].replace(" |", " X |", 1)
        where = "train.ltr:2"
    if damage == "lines":
        ltr = ltr[:-1]
        where = "train.ltr"
    (bad / "train.ltr").write_text("\n".join(ltr) + "\n")
    if damage == "dict":
        lines = (bad / "dict.ltr.txt").read_text().splitlines()
        dropped = lines.pop(1).split()[0]
        (bad / "dict.ltr.txt").write_text("\n".join(lines) + "\n")
        where = ".ltr:"
        expected = f"'{dropped}'] not in dict.ltr.txt"
    proc = _run("validate_corpus.py", bad)
    assert proc.returncode == 1
    assert where in proc.stderr and expected in proc.stderr, proc.stderr
