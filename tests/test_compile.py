"""``model.compile``: a Zipformer layer's training step traces as one graph, compiled equals eager
given the same random draws, and the number of compiled graphs stays bounded as training advances."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import List

import pytest
import torch

from helpers import assert_gradients_close
from k2ssl_fairseq.bench.common import hydra_train
from k2ssl_fairseq.models.compiling import LayerCompiler
from k2ssl_fairseq.models.zipformer import Zipformer2, end_whitening_update, set_batch_count
from k2ssl_fairseq.models.zipformer.regularizers import Whiten

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PRESETS = Path(__file__).resolve().parents[1] / "config" / "pretrain"
#: Two stacks of one layer, of two shapes: enough to exercise sharing and the bound, quick to trace.
TWO_STACKS = dict(encoder_dim=[32, 48], num_encoder_layers=[1, 1], feedforward_dim=[48, 64], num_heads=[4, 4],
                  encoder_unmasked_dim=[32, 32], cnn_module_kernel=[15, 7], downsampling_factor=[1, 2])


def two_stack_overrides() -> List[str]:
    """The two stacks as ``fairseq-hydra-train`` overrides of the zipformer_tiny preset."""
    return [f"model.{key}=[{','.join(map(str, value))}]" for key, value in TWO_STACKS.items()]


def two_stack_encoder(seed: int = 0) -> Zipformer2:
    torch.manual_seed(seed)
    return Zipformer2(input_dim=32, query_head_dim=8, value_head_dim=6, pos_head_dim=4, pos_dim=16, **TWO_STACKS)


def layer_step(layer, x, pos_emb, padding_mask, draws, call=None):
    """Forward + backward of one layer; returns output, input gradient, parameter gradients and the
    whitening findings (what each Whiten's backward found), then clears them."""
    x = x.detach().requires_grad_(True)
    out = (call or layer)(x, pos_emb, padding_mask, draws)
    (out * torch.linspace(-1.0, 1.0, out.numel()).reshape(out.shape)).sum().backward()
    grads = {name: p.grad for name, p in layer.named_parameters() if p.grad is not None}
    findings = [w.found().clone() for w in layer.modules() if isinstance(w, Whiten)]
    layer.zero_grad(set_to_none=True)
    for whiten in layer.modules():
        if isinstance(whiten, Whiten):
            whiten.observed = Whiten.NOT_SEEN
    return out.detach(), x.grad, grads, findings


def layer_inputs(encoder: Zipformer2, stack: int, frames: int = 41, batch: int = 3, seed: int = 5):
    """A layer of stack ``stack``, an input with a padded sequence, its positional encodings, and the
    layer's draws for one pass, drawn once (decisions on the device, as compiled code takes them)."""
    torch.manual_seed(seed)
    holder = encoder.encoders[stack]
    layers = getattr(holder, "encoder", holder)
    layer = layers.layers[0]
    x = torch.randn(frames, batch, layer.norm.num_channels)
    padding_mask = torch.arange(frames)[None] >= torch.tensor([frames] + [frames - 7] * (batch - 1))[:, None]
    pos_emb = layers.encoder_pos(frames, x).detach()
    return layer, x, pos_emb, padding_mask, layer.draw(x, decisions_on_device=True)


def test_a_training_layer_step_traces_as_one_graph():
    encoder = two_stack_encoder().train()
    set_batch_count(encoder, 100.0)
    layer, x, pos_emb, padding_mask, draws = layer_inputs(encoder, 0)
    explained = torch._dynamo.explain(lambda *args: layer(*args))(x.requires_grad_(), pos_emb, padding_mask, draws)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.parametrize("stack", [0, 1])
def test_compiled_layer_equals_eager_given_the_same_draws(stack):
    encoder = two_stack_encoder().train()
    set_batch_count(encoder, 100.0)  # regularisers fire often this early: every branch is exercised
    layer, x, pos_emb, padding_mask, draws = layer_inputs(encoder, stack)
    compiled = torch.compile(lambda *args: layer(*args), backend="aot_eager")
    got = layer_step(layer, x, pos_emb, padding_mask, draws, call=compiled)
    expected = layer_step(layer, x, pos_emb, padding_mask, draws._replace(decisions=draws.decisions.tolist()))
    assert_gradients_close({"out": got[0], "x": got[1]}, {"out": expected[0], "x": expected[1]}, rtol=1e-5)
    # A unit eager code skipped (positional scores left out) passes no gradient; compiled code computed
    # it and selected it away: a gradient of zeros (ScaledAdam treats both alike).
    for name in got[2].keys() - expected[2].keys():
        assert not got[2][name].any(), name
        expected[2][name] = torch.zeros_like(got[2][name])
    assert_gradients_close(got[2], expected[2], rtol=1e-5)
    assert [f.tolist() for f in got[3]] == [f.tolist() for f in expected[3]]


@pytest.mark.e2e
def test_inductor_compiled_layer_equals_eager_given_the_same_draws():
    encoder = two_stack_encoder().train()
    set_batch_count(encoder, 100.0)
    layer, x, pos_emb, padding_mask, draws = layer_inputs(encoder, 1)
    compiled = torch.compile(lambda *args: layer(*args))
    got = layer_step(layer, x, pos_emb, padding_mask, draws, call=compiled)
    expected = layer_step(layer, x, pos_emb, padding_mask, draws._replace(decisions=draws.decisions.tolist()))
    assert_gradients_close({"out": got[0], "x": got[1]}, {"out": expected[0], "x": expected[1]}, rtol=1e-5)
    assert_gradients_close(got[2], {name: expected[2].get(name, torch.zeros_like(g)) for name, g in got[2].items()},
                           rtol=1e-5)


@pytest.mark.e2e
def test_inductor_keeps_frame_counts_symbolic():
    """With code generation, a new utterance length reuses the layer's graph (inductor lowers a
    convolution's backward with the frame count fixed; the compiled depthwise convolution avoids it).
    Lengths long enough that every reduction has over 4,096 elements (inductor's C++ code sums
    shorter ones differently, a graph of its own)."""
    encoder = two_stack_encoder().train()
    set_batch_count(encoder, 0.0)
    compiler = LayerCompiler(backend="inductor")
    compiler.attach(encoder.layers())
    compiles = []
    for frames in (600, 700, 650):
        encoder(torch.randn(frames, 2, 32, requires_grad=True)).output.square().mean().backward()
        compiles.append(compiler.compiles)
    assert compiles == [len(compiler.shapes)] * 3


@pytest.mark.e2e
def test_advancing_schedules_and_whitening_do_not_recompile_and_eval_stays_eager():
    encoder = two_stack_encoder().train()
    compiler = LayerCompiler(backend="aot_eager")
    compiler.attach(encoder.layers())
    compiles = []
    for batch_count in (0.0, 3000.0, 9000.0, 40000.0):  # every schedule moves; skip rates reach 0
        set_batch_count(encoder, batch_count)
        x = torch.randn(37 + int(batch_count) % 11, 2, 32, requires_grad=True)
        encoder(x).output.square().mean().backward()
        end_whitening_update(encoder)  # whitening probabilities change between updates
        compiles.append(compiler.compiles)
    assert compiles[0] == len(compiler.shapes) == 2  # one graph per layer shape, frame counts symbolic
    assert compiles == [compiles[0]] * 4
    encoder.eval()
    with torch.no_grad():
        encoder(torch.randn(30, 2, 32))
    assert compiler.compiles == compiles[0]  # evaluation runs eagerly


@pytest.mark.e2e
def test_compiled_training_through_fairseq_hydra_train_follows_eager(tiny_corpus: Path, tmp_path: Path):
    """Same seed, same data: the compiled pre-training (aot_eager: traced, no code generation) takes
    the same random draws, so its losses follow the eager run's; it logs each compiled graph within
    the bound. Its checkpoint then fine-tunes with CTC, compiled too."""
    architecture = two_stack_overrides()
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["model.compile=true", "+model.compile_backend=aot_eager"])):
        run_dir = tmp_path / name
        hydra_train([f"task.data={tiny_corpus}", f"task.label_dir={tiny_corpus}", "optimization.max_update=8",
                     *architecture, *extra], run_dir, config_dir=PRESETS, config_name="zipformer_tiny",
                    env={"OMP_NUM_THREADS": "1"})
        log = (run_dir / "train.log").read_text()
        runs[name] = ([float(json.loads(line[line.index("{"):])["loss"]) for line in log.splitlines()
                       if "[train_inner]" in line], re.findall(r"compiled zipformer_ssl graph (\d+) of at most (\d+)", log))
    assert runs["eager"][1] == []
    graphs = runs["compiled"][1]
    assert graphs and all(int(n) <= int(bound) for n, bound in graphs), graphs
    assert len(runs["compiled"][0]) == len(runs["eager"][0]) == 8
    torch.testing.assert_close(torch.tensor(runs["compiled"][0]), torch.tensor(runs["eager"][0]), rtol=2e-3, atol=0)

    # Fine-tuning that checkpoint with CTC, compiled: k2ssl_ctc compiles the encoder's layers itself.
    finetune = tmp_path / "finetune"
    hydra_train([f"task.data={tiny_corpus}", f"task.label_dir={tiny_corpus}", "optimization.max_update=3",
                 f"model.pretrained_path={tmp_path / 'compiled' / 'ckpt' / 'checkpoint_last.pt'}",
                 "model.compile=true", "+model.compile_backend=aot_eager"], finetune,
                config_dir=PRESETS.parent / "finetune", config_name="zipformer_tiny", env={"OMP_NUM_THREADS": "1"})
    log = (finetune / "train.log").read_text()
    assert re.search(r"compiled k2ssl_ctc graph 1 of at most \d+", log) and "zipformer_ssl graph" not in log
    losses = [float(json.loads(line[line.index("{"):])["loss"]) for line in log.splitlines() if "[train_inner]" in line]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
