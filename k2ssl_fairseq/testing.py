"""Fixtures shared by the tests, benchmarks and demo: a tiny generated corpus and a hydra runner.

The corpus is synthetic but learnable: every letter is a distinct two-tone chord, words are
separated by short silences, and the 50 Hz k-means-style labels are the letter under each CNN
frame, so models trained on it must reduce their loss and CTC can learn to read it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import soundfile as sf

from .data.frames import conv_frames

PLUGIN_DIR = Path(__file__).resolve().parent
REPO = PLUGIN_DIR.parent
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _letter_chord(letter_id: int, num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(num_samples) / sample_rate
    f1 = 180.0 + 37.0 * letter_id
    f2 = 900.0 + 113.0 * ((letter_id * 7) % 26)
    envelope = np.clip(np.sin(np.pi * np.arange(num_samples) / max(num_samples - 1, 1)), 0, None) ** 0.5
    tone = 0.5 * np.sin(2 * np.pi * f1 * t) + 0.3 * np.sin(2 * np.pi * f2 * t)
    return envelope * tone + 0.01 * rng.standard_normal(num_samples)


def synth_utterance(rng: np.random.Generator, seconds: float, sample_rate: int = 16000):
    """One utterance of random 'words' made of letter chords.

    Returns:
        (waveform float32 (samples,), words list, per-sample letter id (0 = silence, k+1 = letter k)).
    """
    pieces: List[np.ndarray] = []
    ids: List[np.ndarray] = []
    words: List[str] = []
    total = int(seconds * sample_rate)
    used = 0
    while True:
        word = "".join(LETTERS[i] for i in rng.integers(0, len(LETTERS), rng.integers(2, 6)))
        seg = [(LETTERS.index(c), int(rng.uniform(0.06, 0.12) * sample_rate)) for c in word]
        gap = int(0.05 * sample_rate)
        need = sum(n for _, n in seg) + gap
        if words and used + need > total:
            break
        for letter, n in seg:
            pieces.append(_letter_chord(letter, n, sample_rate, rng))
            ids.append(np.full(n, letter + 1, dtype=np.int64))
        pieces.append(0.01 * rng.standard_normal(gap))
        ids.append(np.zeros(gap, dtype=np.int64))
        words.append(word)
        used += need
    wav = np.concatenate(pieces).astype(np.float32)
    return wav, words, np.concatenate(ids)


def make_tiny_corpus(
    root: Path,
    splits: Mapping[str, int] = None,
    min_seconds: float = 1.0,
    max_seconds: float = 3.0,
    num_clusters: int = 20,
    seed: int = 0,
    sample_rate: int = 16000,
) -> Path:
    """Write a fairseq-layout corpus: wav/, {split}.tsv/.km/.ltr/.wrd, dict.km.txt, dict.ltr.txt.

    Args:
        root: output directory (created).
        splits: utterances per split; default ``{"train": 12, "valid": 4}``.
        min_seconds, max_seconds: utterance duration range (uniform).
        num_clusters: size of the ``km`` label set (labels are letter ids modulo this).
        seed: everything is a pure function of it.

    Returns:
        ``root`` as an absolute path.
    """
    root = Path(root).resolve()
    (root / "wav").mkdir(parents=True, exist_ok=True)
    splits = dict(splits or {"train": 12, "valid": 4})
    rng = np.random.default_rng(seed)
    letter_counts: Dict[str, int] = {}
    for split, count in splits.items():
        tsv = [str(root)]
        km, ltr, wrd = [], [], []
        for i in range(count):
            wav, words, ids = synth_utterance(rng, rng.uniform(min_seconds, max_seconds), sample_rate)
            name = f"wav/{split}_{i:04d}.wav"
            sf.write(root / name, wav, sample_rate, subtype="PCM_16")
            tsv.append(f"{name}\t{len(wav)}")
            frames = conv_frames(len(wav))
            centers = np.arange(frames) * 320 + 200
            km.append(" ".join(str(int(v) % num_clusters) for v in ids[centers]))
            wrd.append(" ".join(words))
            ltr.append(" ".join(" ".join(w) + " |" for w in words))
            for c in "".join(words) + "|" * len(words):
                letter_counts[c] = letter_counts.get(c, 0) + 1
        for ext, lines in (("tsv", tsv), ("km", km), ("ltr", ltr), ("wrd", wrd)):
            (root / f"{split}.{ext}").write_text("\n".join(lines) + "\n")
    (root / "dict.km.txt").write_text("".join(f"{k} 1\n" for k in range(num_clusters)))
    ordered = sorted(letter_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    (root / "dict.ltr.txt").write_text("".join(f"{c} {n}\n" for c, n in ordered))
    return root


def stock_hubert_config_dir() -> Path:
    """Directory of fairseq's own HuBERT pre-training yamls (shipped inside the fairseq package)."""
    import fairseq

    return Path(fairseq.__file__).resolve().parent / "examples" / "hubert" / "config" / "pretrain"


TINY_CONV = "'[(64,10,5)] + [(64,3,2)] * 4 + [(64,2,2)] * 2'"


def stock_hubert_tiny_overrides(data: Path, max_update: int = 4) -> List[str]:
    """Overrides that shrink fairseq's ``hubert_base_librispeech.yaml`` to a seconds-long CPU run."""
    return [
        f"task.data={data}", f"task.label_dir={data}", "task.labels=[km]", "model.label_rate=50",
        "task.min_sample_size=8000", "dataset.max_tokens=100000", f"optimization.max_update={max_update}",
        "+model.encoder_layers=2", "+model.encoder_embed_dim=64", "+model.encoder_ffn_embed_dim=128",
        "+model.encoder_attention_heads=2", "model.final_dim=32", f"model.conv_feature_layers={TINY_CONV}",
        "+model.conv_pos=16", "+model.conv_pos_groups=4",
    ]


def hydra_train_command(overrides: Sequence[str], run_dir: Path, config_dir: Optional[Path] = None,
                        config_name: str = "hubert_base_librispeech") -> List[str]:
    """The ``fairseq-hydra-train`` command line :func:`hydra_train` runs."""
    run_dir = Path(run_dir).resolve()
    exe = Path(sys.executable).parent / "fairseq-hydra-train"
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
) -> subprocess.CompletedProcess:
    """Run fairseq's own ``fairseq-hydra-train`` in a subprocess with the plugin as ``common.user_dir``.

    CPU-friendly defaults (cpu, fp32, no tensorboard, one process, no workers, log every update) come
    first so the caller's overrides win. Checkpoints go to ``run_dir/ckpt``.

    Raises:
        RuntimeError: with the tail of the log when the run fails and ``check`` is set.
    """
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = hydra_train_command(overrides, run_dir, config_dir, config_name)
    full_env = dict(os.environ)
    full_env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    full_env.update(env or {})
    proc = subprocess.run(cmd, cwd=run_dir, env=full_env, capture_output=True, text=True, timeout=timeout)
    (run_dir / "train.log").write_text(proc.stdout + proc.stderr)
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-6000:]
        raise RuntimeError(f"fairseq-hydra-train failed ({proc.returncode}):\n{' '.join(cmd)}\n{tail}")
    return proc


def golden_dir() -> Path:
    """The reference outputs of the original k2SSL implementation: ``shared/golden`` beside the repo.

    ``K2SSL_GOLDEN_DIR`` overrides the location.
    """
    return Path(os.environ.get("K2SSL_GOLDEN_DIR", PLUGIN_DIR.parent.parent / "shared" / "golden"))


def stock_hubert_ctc_checkpoint(pretrained: Path, data: Path, out: Path, seed: int = 0) -> Path:
    """Write a fine-tuned ``hubert_ctc`` checkpoint in fairseq's layout, made with fairseq's own model.

    Stock fairseq cannot train ``hubert_ctc`` (its encoder reads ``cfg.autoregressive``, a key
    ``HubertCtcConfig`` lacks), so the model is built in-process by
    ``conversion.hubert_ctc.build_stock_model`` from the pre-training checkpoint ``pretrained``, its head
    and weights perturbed as a few updates would, and saved as fairseq's trainer saves: full config
    (``model.w2v_args`` empty, ``w2v_path`` set), ``model``, ``task_state``, ``optimizer_history``.
    """
    import torch
    from fairseq import tasks
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
    from omegaconf import OmegaConf

    from . import checkpoints
    from .conversion.hubert_ctc import build_stock_model

    pre = checkpoints.load_checkpoint(pretrained)
    cfg = OmegaConf.to_container(pre["cfg"], resolve=True) if OmegaConf.is_config(pre["cfg"]) else dict(pre["cfg"])
    cfg["task"] = {**OmegaConf.to_container(OmegaConf.structured(HubertPretrainingConfig(
        data=str(data), label_dir=str(data), labels=["ltr"], fine_tuning=True, single_target=True, normalize=False))),
        "_name": "hubert_pretraining"}
    cfg["model"] = {"_name": "hubert_ctc", "w2v_path": str(pretrained), "w2v_args": None, "apply_mask": True,
                    "mask_prob": 0.5, "mask_length": 5, "mask_channel_prob": 0.25, "mask_channel_length": 8,
                    "layerdrop": 0.1, "dropout": 0.0, "activation_dropout": 0.1, "attention_dropout": 0.0,
                    "feature_grad_mult": 0.0, "freeze_finetune_updates": 100, "final_dropout": 0.1}
    cfg["criterion"] = {"_name": "ctc", "zero_infinity": True}
    task = tasks.setup_task(OmegaConf.create(cfg["task"]))
    task.target_dictionary  # the task state is lazy: load it so that it is saved, as in training
    checkpoint = {"cfg": cfg, "task_state": task.state_dict(), "model": {}}
    torch.manual_seed(seed)
    model = build_stock_model(checkpoint, str(out), load_weights=False)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.01 * (param.std() if param.numel() > 1 else 1.0))
    checkpoint.update(model=model.state_dict(), extra_state={}, last_optimizer_state=None,
                      optimizer_history=[{"criterion_name": "CtcCriterion", "optimizer_name": "FairseqAdam",
                                          "lr_scheduler_state": {"best": None}, "num_updates": 3}])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, out)
    return out


def write_zipformer_checkpoint(path: Path, seed: int = 0, num_clusters: int = 20):
    """A ``zipformer_tiny`` pre-training checkpoint as fairseq writes it (cfg, model, task_state);
    returns the model. Its task points at a directory that does not exist, as on another machine."""
    import torch
    from fairseq.data.dictionary import Dictionary
    from omegaconf import OmegaConf

    from .models.zipformer_ssl import ZipformerSslConfig, ZipformerSslModel

    torch.manual_seed(seed)
    preset = OmegaConf.load(REPO / "config" / "pretrain" / "zipformer_tiny.yaml").model
    model_cfg = OmegaConf.merge(OmegaConf.structured(ZipformerSslConfig), preset,
                                {"label_rate": 50, "sample_rate": 16000})
    km = Dictionary()
    for k in range(num_clusters):
        km.add_symbol(str(k))
    model = ZipformerSslModel(model_cfg, [len(km)])
    torch.save({
        "cfg": {"model": OmegaConf.to_container(model_cfg, resolve=True, enum_to_str=True),
                "task": {"_name": "hubert_pretraining", "data": "/nonexistent", "labels": ["km"],
                         "label_rate": 50, "sample_rate": 16000, "normalize": False}},
        "model": model.state_dict(),
        "task_state": {"dictionaries": [km]},
        "optimizer_history": [{"criterion_name": "k2ssl_masked_prediction", "optimizer_name": "adam",
                               "lr_scheduler_state": {}, "num_updates": 4}],
        "extra_state": {"train_iterator": {}},
    }, path)
    return model


def assert_gradients_close(got: Mapping[str, Any], expected: Mapping[str, Any], rtol: float = 1e-4) -> None:
    """Per tensor, max |diff| <= rtol * max |expected|. Key biases get an absolute floor: softmax
    is invariant to them, so their true gradient is 0 and both sides hold only rounding noise."""
    scale = max(g.abs().max().item() for g in expected.values() if g is not None)
    for name, reference in expected.items():
        if reference is None:
            continue
        floor = 1e-6 * scale if name.endswith("self_attn.k_proj.bias") else 0.0
        error = (got[name] - reference).abs().max().item()
        assert error <= rtol * max(reference.abs().max().item(), floor), (name, error)
