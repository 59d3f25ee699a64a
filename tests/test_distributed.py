"""Two-process (gloo, CPU) training of zipformer_tiny with torchrun + k2ssl-hydra-train.

The two ranks must see disjoint data, and after N updates their parameters must equal a
one-process run with ``update_freq=2``: the bucketed task plans the same batches for both runs
(the test picks a batch budget whose plan has an even batch count, so planning for 2 shards
splits nothing), rank r takes batches r, r+2, ..., and ``update_freq=2`` groups batches (0, 1),
(2, 3), ..., so every update sees the same two batches. The optimizer is ScaledAdam + Eden with
clipping that bites, which must act on the all-reduced gradient. The model trains in full
training mode: masks are drawn in the data path from (seed, epoch, batch index); the model's own
randomness (dropout, layer and module skips, feature masks, Balancer/Whiten draws) is seeded per
batch by the task from (seed, update, the batch's utterances); the Whiten modules' adaptive
probabilities follow whole updates, combined over ranks. So both runs draw the same numbers.

Run as a script (``torchrun ... tests/test_distributed.py <hydra args>``) this file is that
launcher: ``k2ssl-hydra-train`` with test instrumentation switched on by environment variables.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.e2e

THIS_FILE = Path(__file__).resolve()
REPO = THIS_FILE.parent.parent
PRESET_DIR = REPO / "config" / "pretrain"
RECORD_IDS_ENV = "K2SSL_TEST_RECORD_IDS_DIR"
NUM_UPDATES = 4


def _record_sample_ids(directory: str) -> None:
    """Append the utterance ids of every training batch to ``ids_rank<RANK>.jsonl``."""
    from k2ssl_fairseq.tasks.k2ssl_pretraining import K2sslPretrainingTask

    original = K2sslPretrainingTask.train_step
    path = Path(directory) / f"ids_rank{os.environ.get('RANK', '0')}.jsonl"

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if sample and not ignore_grad:
            with path.open("a") as handle:
                handle.write(json.dumps({"update": update_num, "ids": sample["id"].tolist()}) + "\n")
        return original(self, sample, model, criterion, optimizer, update_num, ignore_grad)

    K2sslPretrainingTask.train_step = train_step


def _launch() -> None:
    import k2ssl_fairseq  # noqa: F401
    from k2ssl_fairseq.cli import hydra_train

    if os.environ.get(RECORD_IDS_ENV):
        _record_sample_ids(os.environ[RECORD_IDS_ENV])
    hydra_train()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train(run_dir: Path, overrides: Sequence[str], nproc: int = 1,
          env: Optional[Mapping[str, str]] = None, timeout: float = 600) -> str:
    """Train ``zipformer_tiny`` through this launcher (under torchrun when ``nproc > 1``); returns the log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    launcher = [str(THIS_FILE)]
    if nproc > 1:
        launcher = [str(Path(sys.executable).parent / "torchrun"), "--nnodes=1", f"--nproc_per_node={nproc}",
                    "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *launcher]
    else:
        launcher = [sys.executable, *launcher]
    cmd = [*launcher, "--config-dir", str(PRESET_DIR), "--config-name", "zipformer_tiny",
           f"hydra.run.dir={run_dir}", f"checkpoint.save_dir={run_dir / 'ckpt'}",
           f"common.user_dir={REPO / 'k2ssl_fairseq'}", *overrides]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run(cmd, cwd=run_dir, env=full_env, capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    (run_dir / "train.log").write_text(log)
    if proc.returncode != 0:
        raise AssertionError(f"training failed ({proc.returncode}): {' '.join(cmd)}\n{log[-6000:]}")
    return log


def parameters(run_dir: Path, name: str = "checkpoint_last.pt", updates: int = NUM_UPDATES) -> Dict[str, torch.Tensor]:
    from k2ssl_fairseq import checkpoints

    state = checkpoints.load_checkpoint(run_dir / "ckpt" / name)
    assert state["optimizer_history"][-1]["num_updates"] == updates
    return {k: v.double() for k, v in state["model"].items() if v.is_floating_point() and "_extra_state" not in k}


def whitening_probabilities(run_dir: Path) -> Dict[str, float]:
    """Each Whiten module's application probability saved in ``checkpoint_last.pt`` (the first entry
    of its extra state; the second, the current update's own findings, is per rank until it closes)."""
    from k2ssl_fairseq import checkpoints

    state = checkpoints.load_checkpoint(run_dir / "ckpt" / "checkpoint_last.pt")["model"]
    return {k: float(v[0]) for k, v in state.items() if k.endswith("._extra_state")}


def relative_difference(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)) for k in a)


def train_inner_records(log: str) -> List[dict]:
    """The per-update json records of a fairseq log (``common.log_format=json``)."""
    return [json.loads(line.split(" - ", 1)[1]) for line in log.splitlines() if "][train_inner][" in line]


def recorded_ids(run_dir: Path, rank: int) -> List[dict]:
    return [json.loads(line) for line in (run_dir / f"ids_rank{rank}.jsonl").read_text().splitlines()]


def test_torchrun_overrides_pass_rank_world_size_and_device():
    from k2ssl_fairseq.cli import torchrun_overrides

    assert torchrun_overrides({}) == []
    overrides = torchrun_overrides({"LOCAL_RANK": "1", "RANK": "5", "WORLD_SIZE": "8"})
    assert "distributed_training.distributed_rank=5" in overrides
    assert "distributed_training.distributed_world_size=8" in overrides
    assert "distributed_training.device_id=1" in overrides
    assert "distributed_training.distributed_init_method=env://" in overrides


def comparable_max_duration(corpus: Path) -> float:
    """A batch budget (``task.max_duration``) whose plan has an even number of batches, at least
    ``2 * NUM_UPDATES``: then planning for 1 or 2 shards splits nothing and gives the same batches."""
    from omegaconf import OmegaConf

    from k2ssl_fairseq.data.bucketing import BatchingSettings, plan_epoch

    preset = OmegaConf.load(PRESET_DIR / "zipformer_tiny.yaml")
    lines = (corpus / "train.tsv").read_text().splitlines()[1:]
    lengths = np.asarray([int(line.split("\t")[1]) for line in lines])
    for max_duration in np.arange(2.0, 5.01, 0.25):
        settings = BatchingSettings(max_duration=float(max_duration), sample_rate=preset.task.sample_rate,
                                    num_buckets=preset.task.num_buckets, max_sample_size=preset.task.max_sample_size,
                                    random_crop=preset.task.random_crop)
        seed = preset.common.seed
        one, two = plan_epoch(lengths, settings, seed, 1, 1), plan_epoch(lengths, settings, seed, 1, 2)
        if len(one) == len(two) >= 2 * NUM_UPDATES and all(
                np.array_equal(one.batch(i), two.batch(i)) for i in range(len(one))):
            return float(max_duration)
    pytest.fail("no batch budget plans the same batches for 1 and 2 shards on this corpus")


def compiled_overrides() -> List[str]:
    """``model.compile=true`` on two small stacks, traced with aot_eager (no code generation: quick)."""
    from test_compile import two_stack_overrides

    return [*two_stack_overrides(), "model.compile=true", "+model.compile_backend=aot_eager"]


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_two_ranks_equal_one_process_with_update_freq_2(tiny_corpus: Path, tmp_path: Path, mode: str):
    # ScaledAdam re-estimates its clipping threshold every 2 steps at half the median norm, so it
    # clips from the third update on: clipping per rank instead of on the all-reduced gradient
    # would break the equality. Compiled, each rank runs the same graphs on the same batches.
    common = [*(compiled_overrides() if mode == "compiled" else []),
              f"task.data={tiny_corpus}", f"task.label_dir={tiny_corpus}",
              f"task.max_duration={comparable_max_duration(tiny_corpus)}", f"optimization.max_update={NUM_UPDATES}",
              "checkpoint.save_interval_updates=1", "optimization.lr=[0.01]",
              "++optimizer.clipping_update_period=2", "++optimizer.clipping_scale=0.5"]
    two_dir, one_dir = tmp_path / "two_ranks", tmp_path / "one_process"
    two_log = train(two_dir, [*common, "distributed_training.distributed_backend=gloo",
                              "distributed_training.ddp_backend=legacy_ddp"],
                    nproc=2, env={RECORD_IDS_ENV: str(two_dir)})
    assert "distributed init (rank 0): env://" in two_log and "distributed init (rank 1): env://" in two_log
    one_log = train(one_dir, [*common, "optimization.update_freq=[2]"],
                    env={RECORD_IDS_ENV: str(one_dir)})
    for log in (two_log, one_log):
        clipped = [float(record.get("scaled_adam_clipped", 0)) for record in train_inner_records(log)]
        assert len(clipped) == NUM_UPDATES and any(clipped), f"ScaledAdam never clipped: {clipped}"

    rank0, rank1 = recorded_ids(two_dir, 0), recorded_ids(two_dir, 1)
    assert len(rank0) == len(rank1) == NUM_UPDATES
    for step0, step1 in zip(rank0, rank1):
        assert not set(step0["ids"]) & set(step1["ids"]), f"ranks shared utterances: {step0} {step1}"
    single = recorded_ids(one_dir, 0)
    assert [s["ids"] for s in single] == [s["ids"] for pair in zip(rank0, rank1) for s in pair]

    two_ranks = parameters(two_dir)
    assert relative_difference(parameters(two_dir, "checkpoint_1_1.pt", 1), two_ranks) > 1e-3, "no training"
    difference = relative_difference(two_ranks, parameters(one_dir))
    print(f"max relative parameter difference, 2 ranks vs update_freq=2: {difference:.3e}")
    assert difference == 0.0
    probabilities = whitening_probabilities(two_dir)
    assert probabilities == whitening_probabilities(one_dir)
    assert len(set(probabilities.values())) == 2, "the Whiten probabilities never adapted"


if __name__ == "__main__":
    _launch()
