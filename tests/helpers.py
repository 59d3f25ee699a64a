"""Helpers the tests share (never imported by the package): golden data, checkpoints made the way
fairseq makes them, gradient comparison."""
from __future__ import annotations

import contextlib
import io
import os
import runpy
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence

REPO = Path(__file__).resolve().parents[1]

#: Max |ours - original| / max |original| the golden tests assert, as the README states them.
ZIPFORMER_GOLDEN_TOLERANCE = 5e-6
SCALED_ADAM_GOLDEN_TOLERANCE = 5e-7


def golden_dir() -> Path:
    """The reference outputs of the original k2SSL implementation: ``tests/golden`` in this repository
    (its README says what produced each file). ``K2SSL_GOLDEN_DIR`` overrides the location."""
    return Path(os.environ.get("K2SSL_GOLDEN_DIR", REPO / "tests" / "golden"))


def golden_arrays(case: str, directory: Path | None = None) -> Dict[str, Any]:
    """Every array of golden case ``case``: ``<case>.npz`` merged with its parts ``<case>.<part>.npz``.

    The repository keeps each file under 2 MB, so a larger original is stored split by key (see
    ``tests/golden/README.md``); a directory holding the original whole file reads the same.
    """
    import numpy as np

    directory = golden_dir() if directory is None else Path(directory)
    files = sorted(directory.glob(f"{case}.npz")) + sorted(directory.glob(f"{case}.*.npz"))
    if not files:
        raise FileNotFoundError(f"{directory / case}.npz: no golden file of case {case!r} (nor any part)")
    arrays: Dict[str, Any] = {}
    for file in files:
        with np.load(file) as npz:
            for key in npz.files:
                if key in arrays:
                    raise ValueError(f"{file}: key {key!r} is already in another part of case {case!r}")
                arrays[key] = npz[key]
    return arrays


def array_digest(arrays: Mapping[str, Any]) -> str:
    """sha256 over every array's key, dtype, shape and bytes, in key order: equal digests mean the
    same numbers, however the arrays are split into files or compressed."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for key in sorted(arrays):
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


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

    from k2ssl_fairseq import checkpoints
    from k2ssl_fairseq.conversion.hubert_ctc import build_stock_model

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

    from k2ssl_fairseq.models.zipformer_ssl import ZipformerSslConfig, ZipformerSslModel

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
    is invariant to them, so their true gradient is 0 and both sides hold only rounding noise, whose
    size follows the activations rather than the gradients (seen once: 1.4e-9, above the former floor
    of rtol * 1e-6 of the model's largest gradient; now rtol * 1e-4 of it)."""
    scale = max(g.abs().max().item() for g in expected.values() if g is not None)
    for name, reference in expected.items():
        if reference is None:
            continue
        floor = 1e-4 * scale if name.endswith("self_attn.k_proj.bias") else 0.0
        error = (got[name] - reference).abs().max().item()
        assert error <= rtol * max(reference.abs().max().item(), floor), (name, error)


def run_script_in_process(script: Path, *args: Any) -> subprocess.CompletedProcess:
    """``python script args...`` run in this process (``runpy``, ``sys.argv`` set, output captured):
    the script's real code path without a new interpreter's seconds of start-up. An exception that
    escapes the script counts as exit status 1 with its traceback on stderr."""
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = [str(script), *map(str, args)]
    code = 0
    saved_argv, sys.argv = sys.argv, argv
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                runpy.run_path(str(script), run_name="__main__")
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
                if isinstance(exit_.code, str):
                    print(exit_.code, file=sys.stderr)
            except Exception:
                code = 1
                traceback.print_exc()
    finally:
        sys.argv = saved_argv
    return subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())


def icefall_checkpoint() -> dict:
    """What icefall's ``save_checkpoint`` writes for the golden tiny model: state dicts (``model`` and a
    distinct ``model_avg``) plus the params namespace at the top level, including a pickled path."""
    import json

    import torch

    golden = golden_arrays("zipformer_ssl_tiny_case1")
    state = {k[len("param/"):]: torch.from_numpy(golden[k].copy()) for k in golden if k.startswith("param/")}
    hparams = json.loads((golden_dir() / "zipformer_ssl_tiny_case1.json").read_text())["config"]
    return {"model": state, "model_avg": {k: v * 0.5 for k, v in state.items()}, "optimizer": {"state": {}},
            "batch_idx_train": 1234, "exp_dir": Path("/exp/zipformer"), **hparams}


def compose_config(config_dir: Path, config_name: str, overrides: Sequence[str]):
    """The config ``fairseq-hydra-train --config-dir <config_dir> --config-name <name>`` would run:
    fairseq's schema, the preset, the overrides, then every registered dataclass's defaults."""
    from fairseq.dataclass.initialize import add_defaults, hydra_init
    from fairseq.dataclass.utils import omegaconf_no_object_check
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    hydra_init(config_name)  # stores fairseq's schema under the preset's name, as fairseq-hydra-train does
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.1"):
            cfg = compose(config_name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()
        # A schema left stored under this name would be merged into a later preset that includes it.
        ConfigStore.instance().repo.pop(f"{config_name}.yaml", None)
    add_defaults(cfg)
    with omegaconf_no_object_check():
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(cfg, True)
    return cfg
