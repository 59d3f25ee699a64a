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
FIELDS = {"system", "size", "device", "batch_seconds", "audio_seconds_per_second", "peak_memory_bytes",
          "data_wait_fraction", "crop_waste_fraction", "padding_fraction", "loss_curve", "command",
          "git_commit", "date", "machine"}


def test_tiny_benchmark_reports_real_measurements(tmp_path: Path):
    data = make_tiny_corpus(tmp_path / "data", splits={"train": 16, "valid": 2}, min_seconds=2, max_seconds=4)
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--data", str(data),
                           "--label-dir", str(data), "--size", "tiny", "--seconds-per-batch", "8",
                           "--updates", "2", "--warmup", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    records = json.loads((out / "benchmark.json").read_text())
    assert [r["system"] for r in records] == list(SYSTEMS)
    for r in records:
        assert FIELDS <= set(r), FIELDS - set(r)
        assert r["size"] == "tiny" and r["device"] == "cpu" and r["timed_updates"] == 2
        for key in ("batch_seconds", "audio_seconds_per_second", "peak_memory_bytes", "median_step_seconds"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["system"], key, r[key])
        for key in ("data_wait_fraction", "crop_waste_fraction", "padding_fraction"):
            assert 0 <= r[key] < 1, (r["system"], key, r[key])
        assert r["batch_seconds"] <= 8.0 + 1e-6
        assert len(r["loss_curve"]) == 3 and all(math.isfinite(loss) and loss > 0 for _, loss in r["loss_curve"])
        hours = [h for h, _ in r["loss_curve"]]
        assert hours == sorted(hours) and hours[0] > 0
    table = (out / "benchmark.md").read_text()
    assert all(s in table for s in SYSTEMS) and "speed vs stock" in table
    for png in ("throughput_memory.png", "loss_vs_audio.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
