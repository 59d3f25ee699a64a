"""Plumbing every benchmark and experiment shares: running fairseq or a worker in a fresh process,
peak memory, provenance and results files.

Each measurement runs in its own process so that its peak memory is its own; a results file
records the command as typed, the commit, the date, the machine and its load.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from .stock import stock_hubert_config_dir

PLUGIN_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = PLUGIN_DIR.parent


def git_commit() -> str:
    """The checkout's commit, marked ``+uncommitted`` when the tree has changes (``unknown`` outside git)."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_DIR,
                           capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+uncommitted" if dirty else "")


def typed_command(argv: Optional[Sequence[str]] = None) -> str:
    """The command line as the user typed it: ``python path/script.py ...`` or ``k2ssl-benchmark ...``."""
    argv = list(sys.argv if argv is None else argv)
    program = argv[0]
    if program.endswith(".py"):
        try:
            program = str(Path(program).resolve().relative_to(Path.cwd()))
        except ValueError:
            pass
        head = ["python", program]
    else:
        head = [Path(program).name]
    return shlex.join(head + argv[1:])


def machine(device: str = "cpu") -> str:
    """The machine in one line: CPU (or GPU) model, cores, memory, torch version."""
    import psutil
    import torch

    cpus = f"{psutil.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"
    if device == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}; {cpus}; torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}; {cpus}; torch {torch.__version__}"


def provenance(device: str = "cpu", argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """What a results file records about its run: command, commit, date, machine, load average."""
    import psutil

    return {"command": typed_command(argv), "git_commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(device), "load_average": [round(v, 2) for v in psutil.getloadavg()]}


def peak_memory_bytes(device: str = "cpu") -> int:
    """This process's peak: the CUDA caching allocator's (tensors only) or the resident set's high-water mark."""
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def current_memory_bytes(device: str = "cpu") -> int:
    """Memory in use now, on the same scale as :func:`peak_memory_bytes` (for a step's own share)."""
    if device == "cuda":
        import torch

        return int(torch.cuda.memory_allocated())
    import psutil

    return int(psutil.Process().memory_info().rss)


def run_json_worker(cmd: Sequence[str], env: Optional[Mapping[str, str]] = None,
                    cwd: Optional[Path] = None) -> Dict[str, Any]:
    """Run a worker process whose last stdout line is a JSON object; return that object.

    Raises:
        RuntimeError: the worker failed; the message has the end of its stderr.
    """
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, cwd=cwd,
                          env=None if env is None else dict(os.environ, **env))
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"{shlex.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def interleaved_rounds(command_for: Callable[[str], Sequence[str]], systems: Sequence[str], repeats: int,
                       echo: bool = True) -> Dict[str, List[Dict[str, Any]]]:
    """``repeats`` rounds, each running every system once in a fresh worker (``command_for(system)``),
    interleaved so that a slow spell of the machine hits all systems alike; records per system."""
    rounds: Dict[str, List[Dict[str, Any]]] = {system: [] for system in systems}
    for _ in range(repeats):
        for system in systems:
            rounds[system].append(run_json_worker(command_for(system)))
            if echo:
                print(json.dumps(rounds[system][-1]), flush=True)
    return rounds


def write_json(path: Path, payload: Any) -> None:
    """A results file: indented JSON with a final newline (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def hydra_train_command(overrides: Sequence[str], run_dir: Path, config_dir: Optional[Path] = None,
                        config_name: str = "hubert_base_librispeech",
                        executable: str = "fairseq-hydra-train") -> List[str]:
    """The ``fairseq-hydra-train`` (or ``k2ssl-hydra-train``) command line :func:`hydra_train` runs."""
    run_dir = Path(run_dir).resolve()
    exe = Path(sys.executable).parent / executable
    return [
        str(exe), "--config-dir", str(config_dir or stock_hubert_config_dir()), "--config-name", config_name,
        f"hydra.run.dir={run_dir}", f"checkpoint.save_dir={run_dir / 'ckpt'}", f"common.user_dir={PLUGIN_DIR}",
        "common.cpu=true", "common.fp16=false", "common.tensorboard_logdir=null", "common.log_interval=1",
        "common.log_format=json", "distributed_training.distributed_world_size=1",
        "distributed_training.nprocs_per_node=1", "dataset.num_workers=0",
        *overrides,
    ]


def hydra_train(
    overrides: Sequence[str],
    run_dir: Path,
    config_dir: Optional[Path] = None,
    config_name: str = "hubert_base_librispeech",
    timeout: float = 900,
    env: Optional[Mapping[str, str]] = None,
    check: bool = True,
    cwd: Optional[Path] = None,
    executable: str = "fairseq-hydra-train",
) -> subprocess.CompletedProcess:
    """Run fairseq's own ``fairseq-hydra-train`` in a subprocess with the plugin as ``common.user_dir``.

    CPU-friendly defaults (cpu, fp32, no tensorboard, one process, no workers, log every update) come
    first so the caller's overrides win. Checkpoints go to ``run_dir/ckpt``. The process starts in
    ``cwd`` (default ``run_dir``); ``executable`` may be ``k2ssl-hydra-train``.

    Raises:
        RuntimeError: with the tail of the log when the run fails and ``check`` is set.
    """
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = hydra_train_command(overrides, run_dir, config_dir, config_name, executable)
    full_env = dict(os.environ)
    full_env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    full_env.update(env or {})
    proc = subprocess.run(cmd, cwd=cwd or run_dir, env=full_env, capture_output=True, text=True, timeout=timeout)
    (run_dir / "train.log").write_text(proc.stdout + proc.stderr)
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-6000:]
        raise RuntimeError(f"fairseq-hydra-train failed ({proc.returncode}):\n{' '.join(cmd)}\n{tail}")
    return proc


def thread_env(threads: int) -> Dict[str, str]:
    """Environment that pins a child process's BLAS/OpenMP pools to ``threads`` (runs side by side get a core each)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def log_record(line: str, tag: str) -> Optional[Dict[str, Any]]:
    """The json record of one fairseq log line of kind ``tag`` (``train_inner``, ``valid``, ``train``), else None."""
    return json.loads(line.split(" - ", 1)[1]) if f"[{tag}][INFO] - {{" in line else None


def logged(log: str, tag: str) -> List[Dict[str, Any]]:
    """Every record of kind ``tag`` in a run's whole log text."""
    return [record for line in log.splitlines() if (record := log_record(line, tag)) is not None]


def accuracy_curve(log: str, window: int = 50) -> List[Dict[str, float]]:
    """Masked-prediction accuracy (``correct_m_0``, logged by stock HuBERT's criterion and the plugin's)
    averaged over ``window`` updates, against minutes of training and updates."""
    inner = logged(log, "train_inner")
    curve = []
    for start in range(0, len(inner) - window + 1, window):
        chunk = inner[start:start + window]
        curve.append({"minutes": round(float(chunk[-1]["wall"]) / 60, 2),
                      "updates": int(float(chunk[-1]["num_updates"])),
                      "masked_accuracy": round(sum(float(r["correct_m_0"]) for r in chunk) / window, 4)})
    return curve
