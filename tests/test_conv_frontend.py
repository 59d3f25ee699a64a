"""The recomputing, matrix-product CNN front-end against fairseq's ConvFeatureExtractionModel."""
import pytest
import torch
import torch.nn.functional as F
from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel

import k2ssl_fairseq.models.conv_frontend as conv_frontend
from k2ssl_fairseq.data.frames import conv_frames
from k2ssl_fairseq.models.conv_frontend import conv_features

LAYERS = [(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2


def extractor(mode: str, bias: bool, dtype=torch.float64) -> ConvFeatureExtractionModel:
    torch.manual_seed(0)
    module = ConvFeatureExtractionModel(LAYERS, mode=mode, conv_bias=bias).to(dtype)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    return module


def module_forward_in_dtype(module: ConvFeatureExtractionModel, source: torch.Tensor) -> torch.Tensor:
    """The module's forward with its norms in the input dtype (fairseq's Fp32 norms round float64
    to float32), channels-last: the exact reference for a float64 check."""
    x = source.unsqueeze(1)
    for block in module.conv_layers:
        for layer in block:
            if isinstance(layer, torch.nn.GroupNorm):
                x = F.group_norm(x, layer.num_groups, layer.weight, layer.bias, layer.eps)
            elif isinstance(layer, torch.nn.Sequential):
                norm = layer[1]
                x = F.layer_norm(x.transpose(1, 2), norm.normalized_shape, norm.weight, norm.bias,
                                 norm.eps).transpose(1, 2)
            else:
                x = layer(x)
    return x.transpose(1, 2)


def max_relative_error(ours, reference) -> float:
    """Largest element error relative to each reference tensor's largest magnitude, floored at 1e-6
    of the largest of all (the first convolution's bias before GroupNorm has a true gradient of 0)."""
    scale = max(float(b.detach().abs().max()) for b in reference)
    return max(float((a - b).detach().abs().max()) / max(float(b.detach().abs().max()), 1e-6 * scale)
               for a, b in zip(ours, reference))


@pytest.fixture(params=[("chunked", None), ("chunked", 7), ("batched", None)],
                ids=["chunked_one_chunk", "chunked_chunks_of_7", "batched"])
def implementation(request, monkeypatch) -> str:
    """Each implementation of the front-end; the chunked one also with chunks of 7 frames."""
    name, chunk = request.param
    if chunk is not None:
        monkeypatch.setattr(conv_frontend, "CHUNK_FRAMES", chunk)
    return name


@pytest.mark.parametrize("mode", ["default", "layer_norm"])
@pytest.mark.parametrize("bias", [False, True])
def test_values_and_all_gradients_equal_the_module_in_float64(mode, bias, implementation):
    module = extractor(mode, bias)
    source = torch.randn(3, 5000, dtype=torch.float64, requires_grad=True)
    reference = module_forward_in_dtype(module, source)
    weights = torch.randn_like(reference)
    reference_grads = torch.autograd.grad(reference, [source, *module.parameters()], weights)
    ours = conv_features(module, source, implementation=implementation)
    grads = torch.autograd.grad(ours, [source, *module.parameters()], weights)
    assert ours.shape == (3, conv_frames(5000, LAYERS), 16)
    assert max_relative_error([ours], [reference]) < 1e-12
    assert max_relative_error(grads, reference_grads) < 1e-8


@pytest.mark.parametrize("implementation", ["chunked", "batched"])
def test_float32_matches_the_stock_module_forward_and_backward(implementation):
    module = extractor("default", False, torch.float32)
    source = torch.randn(2, 8000)
    reference = module(source).transpose(1, 2)
    weights = torch.randn_like(reference)
    reference_grads = torch.autograd.grad(reference, list(module.parameters()), weights)
    ours = conv_features(module, source, implementation=implementation)
    grads = torch.autograd.grad(ours, list(module.parameters()), weights)
    assert max_relative_error([ours], [reference]) < 1e-5
    assert max_relative_error(grads, reference_grads) < 1e-4


def test_valid_frames_make_a_padded_row_equal_the_row_alone(implementation):
    """GroupNorm statistics over valid frames: outputs and gradients do not see the padding."""
    module = extractor("default", True)
    source = torch.randn(3, 5000, dtype=torch.float64)
    source[1, 3000:] = 0
    alone = conv_features(module, source[1:2, :3000], implementation=implementation)
    batch = conv_features(module, source, conv_frames(torch.tensor([5000, 3000, 5000]), LAYERS[:1]),
                          implementation=implementation)
    frames = alone.shape[1]
    assert max_relative_error([batch[1, :frames]], [alone[0]]) < 1e-12
    alone_grads = torch.autograd.grad(alone.sum(), list(module.parameters()))
    row_weights = torch.zeros_like(batch)
    row_weights[1, :frames] = 1.0
    batch_grads = torch.autograd.grad((batch * row_weights).sum(), list(module.parameters()))
    assert max_relative_error(batch_grads, alone_grads) < 1e-8


def test_backward_keeps_one_tensor_per_layer():
    """The graph holds the convolution outputs only: less than half of what autograd through the
    module saves (its GELU inputs and outputs, and the GroupNorm input and output)."""
    module = extractor("default", False, torch.float32)
    source = torch.randn(2, 16000)
    stock_bytes = []

    def count(tensor):
        stock_bytes.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        module(source)
    chunked = conv_features(module, source, implementation="chunked").grad_fn.activations
    batched = conv_features(module, source, implementation="batched").grad_fn.outputs
    largest_layer = chunked[0].pre.numel() * 4
    assert sum(stock_bytes) > 2 * largest_layer
    for kept_tensors in ([a.pre for a in chunked], batched):
        kept = sum(t.numel() * t.element_size() for t in kept_tensors)
        assert kept < 0.5 * sum(stock_bytes) and kept < 2 * largest_layer


@pytest.mark.parametrize("implementation", ["chunked", "batched"])
def test_feature_grad_mult_scales_the_gradient_and_zero_freezes(implementation):
    module = extractor("default", False)
    source = torch.randn(2, 4000, dtype=torch.float64)

    def run(**kwargs):
        return conv_features(module, source, implementation=implementation, **kwargs)

    full = torch.autograd.grad(run().sum(), module.conv_layers[1][0].weight)[0]
    scaled = torch.autograd.grad(run(grad_mult=0.1).sum(), module.conv_layers[1][0].weight)[0]
    assert torch.allclose(scaled, 0.1 * full, rtol=1e-12, atol=0.0)
    frozen = run(grad_mult=0.0)
    assert not frozen.requires_grad
    assert torch.equal(frozen, run().detach())


def test_too_short_input_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 400 samples"):
        conv_features(extractor("default", False), torch.randn(1, 399, dtype=torch.float64))
    assert conv_features(extractor("default", False), torch.randn(1, 400, dtype=torch.float64)).shape == (1, 1, 16)


def test_unknown_implementation_is_refused():
    with pytest.raises(ValueError, match="implementation must be one of"):
        conv_features(extractor("default", False), torch.randn(1, 4000, dtype=torch.float64), implementation="fast")


def test_unsupported_module_layout_is_refused():
    module = ConvFeatureExtractionModel(LAYERS, dropout=0.1)
    with pytest.raises(ValueError, match="dropout"):
        conv_features(module.train(), torch.randn(1, 4000))


@pytest.mark.parametrize("implementation", ["chunked", "batched"])
def test_autocast_runs_the_front_end_in_the_autocast_dtype(implementation):
    """Under autocast the convolutions run in its dtype (as the stock module's would); gradients
    arrive in the parameters' dtype."""
    module = extractor("default", False, torch.float32)
    source = torch.randn(2, 4000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = module(source).transpose(1, 2)
        ours = conv_features(module, source, implementation=implementation)
    assert ours.dtype == reference.dtype == torch.bfloat16
    assert max_relative_error([ours.float()], [reference.float()]) < 0.05
    ours.float().square().sum().backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in module.parameters())
