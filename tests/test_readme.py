"""Every runnable shell block of the README (fenced as ``bash``; ``sh`` blocks are for reading) runs,
in order, as a user would paste it, on a tiny corpus: Base/Large presets become ``tiny`` and every
training command gets a two-update CPU budget. A recipe that breaks when pasted fails here."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import torch

import helpers
from k2ssl_fairseq.bench.stock import stock_hubert_config_dir
from k2ssl_fairseq.data.synthetic import make_tiny_corpus

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^ *```bash\n(.*?)^ *```", re.M | re.S)
_TRAINERS = ("fairseq-hydra-train", "k2ssl-hydra-train")
#: What turns a README training command into a seconds-long CPU run (keys every fairseq config has).
TINY_BUDGET = ["optimization.max_update=2", "common.cpu=true", "common.fp16=false", "common.amp=false",
               "common.tensorboard_logdir=null", "distributed_training.distributed_world_size=1",
               "distributed_training.nprocs_per_node=1", "dataset.num_workers=0", "dataset.max_tokens=100000",
               "task.min_sample_size=8000"]


def readme_commands() -> List[str]:
    """The commands of the runnable blocks, continuation lines joined, in README order."""
    commands = []
    for block in _BLOCK.findall(README.read_text()):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [line.strip() for line in joined.splitlines() if line.strip()]
    return commands


def at_test_size(command: str) -> str:
    """The same command with tiny presets, a CPU budget, few clusters, a shallow layer and CPU devices."""
    if command.startswith(_TRAINERS):
        command = re.sub(r"(--config-name (?:\w+/)?)zipformer_(base|large)\b", r"\1zipformer_tiny", command)
        command = re.sub(r"preset=(base|large)\b", "preset=tiny", command)
        command += " " + " ".join(TINY_BUDGET)
    command = re.sub(r"--layer \d+", "--layer 1", command)
    command = re.sub(r"--n-clusters \d+", "--n-clusters 8", command)
    return command.replace("--device cuda", "--device cpu")


def test_readme_has_the_documented_runnable_blocks():
    commands = readme_commands()
    assert sum(c.startswith(_TRAINERS) for c in commands) >= 6
    assert all("#" not in c for c in commands if c.startswith(_TRAINERS)), "a comment would end the command"
    for tool in ("k2ssl-make-labels", "k2ssl-decode", "k2ssl-migrate", "k2ssl-import-icefall", "k2ssl-export-icefall"):
        assert any(c.startswith(tool) for c in commands), tool


def test_readme_commands_run(tiny_corpus: Path, stock_hubert_run: Path, tmp_path: Path):
    data = make_tiny_corpus(tmp_path / "data", splits={"train": 12, "valid": 4, "test": 4})
    work = tmp_path / "work"
    work.mkdir()
    hubert = stock_hubert_run / "ckpt" / "checkpoint_last.pt"
    (work / "hubert.pt").write_bytes(hubert.read_bytes())
    helpers.stock_hubert_ctc_checkpoint(hubert, tiny_corpus, work / "hubert_ctc.pt")
    torch.save(helpers.icefall_checkpoint(), work / "icefall.pt")
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               K2SSL=str(Path(helpers.REPO) / "k2ssl_fairseq"), FAIRSEQ=str(stock_hubert_config_dir().parents[3]),
               DATA=str(data), LABELS=str(data), RUNS=str(tmp_path / "runs"))
    for command in map(at_test_size, readme_commands()):
        proc = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, f"{command}\n{(proc.stdout + proc.stderr)[-5000:]}"
    assert (tmp_path / "runs" / "ft" / "test" / "wer.json").is_file()
    assert (work / "icefall_again.pt").is_file() and (work / "k2ssl_ctc.pt").is_file()
