"""The A/B benchmark harness runs every system through fairseq's trainer and reports real numbers."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from k2ssl_fairseq.bench.ab import SYSTEMS
from k2ssl_fairseq.data.synthetic import make_tiny_corpus

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {"system", "head", "size", "device", "batches", "repeats", "batch_seconds", "audio_seconds_per_second",
          "audio_seconds_per_second_range", "peak_memory_bytes", "peak_memory_bytes_range", "data_wait_fraction",
          "crop_waste_fraction", "padding_fraction", "median_forward_backward_seconds", "median_optimizer_seconds",
          "median_trainer_other_seconds", "curve", "runs", "command", "git_commit", "date", "machine", "threads"}


def test_tiny_benchmark_feeds_every_system_the_same_batches(tmp_path: Path):
    data = make_tiny_corpus(tmp_path / "data", splits={"train": 16, "valid": 2}, min_seconds=2, max_seconds=4)
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--data", str(data),
                           "--label-dir", str(data), "--size", "tiny", "--seconds-per-batch", "8",
                           "--updates", "2", "--warmup", "1", "--repeats", "2", "--out", str(out),
                           "--work-dir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "DEBUG" not in proc.stdout + proc.stderr
    records = json.loads((out / "benchmark.json").read_text())
    assert [r["system"] for r in records] == list(SYSTEMS)
    plan = json.loads((tmp_path / "work" / "shared_batches.json").read_text())
    planned = [sum(count for _, _, count in batch) / 16000 for batch in plan[1:]]
    for r in records:
        assert FIELDS <= set(r), FIELDS - set(r)
        assert r["size"] == "tiny" and r["device"] == "cpu" and r["timed_updates"] == 2 and r["repeats"] == 2
        assert len(r["runs"]) == 2 and r["batches"] == "shared"
        for key in ("batch_seconds", "audio_seconds_per_second", "peak_memory_bytes", "median_step_seconds",
                    "median_forward_backward_seconds"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["system"], key, r[key])
        low, high = r["audio_seconds_per_second_range"]
        assert low <= r["audio_seconds_per_second"] <= high
        # The planned windows, read through each system's own dataset: the same audio for all.
        assert r["batch_seconds"] == pytest.approx(sum(planned) / len(planned))
        assert r["padding_fraction"] == 0
        assert r["crop_waste_fraction"] == records[0]["crop_waste_fraction"]
        assert len(r["curve"]) == 3
        assert all(math.isfinite(p["loss"]) and 0 <= p["masked_accuracy"] <= 1 for p in r["curve"])
        clock = [p["wall_seconds"] for p in r["curve"]]
        assert clock == sorted(clock) and clock[0] > 0
    table = (out / "benchmark.md").read_text()
    assert all(s in table for s in SYSTEMS) and "speed vs stock" in table and "shared batches" in table
    assert "k2ssl-benchmark" in table or "scripts/benchmark.py" in table
    for png in ("throughput_memory.png", "learning.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
