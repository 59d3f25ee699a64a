"""The wav2vec2 CNN front-end as strided matrix products on a channels-last layout, with its
activations recomputed in backward.

Why: at Base size (4 x 10 s, fp32, 2 CPU cores) the 512-channel convolutions are over half of a
Zipformer step and a large part of its peak memory. Autograd through fairseq's
``ConvFeatureExtractionModel`` keeps two 512-channel tensors per layer (the convolution output for
GELU and the GELU output for the next convolution; three for the GroupNorm layer). Here each layer
keeps only its convolution output: normalisation and GELU are recomputed in backward, chunk by
chunk along time so that no second full-size copy is ever live, which costs a few element-wise
passes. Two implementations of that one scheme, chosen by device:

- ``chunked`` (CPU): each convolution is ``ceil(kernel / stride)`` matrix products over overlapping
  row views of the input (no unfolded copy), row by row and chunk by chunk, which BLAS runs faster
  than oneDNN's ``conv1d`` backward on CPU and which never holds a second full-size tensor;
- ``batched`` (CUDA): whole-batch cuDNN convolutions (``aten.convolution_backward`` in backward) and
  whole-tensor norms; per-row Python loops launch far too many small kernels for a GPU (measured on
  an H200: the chunked path took 6x the stock module's time, ``benchmarks/results/gpu_*``).

``benchmarks/bench_frontend.py`` measures the front-end, ``benchmarks/bench_models.py`` the step.

The parameters stay in fairseq's module (same names, same checkpoints); :func:`conv_features` only
replaces its forward. Padded rows can have the GroupNorm statistics taken over their valid frames
(``valid_frames``), which is what makes the Zipformer's output independent of batch composition.
"""
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.modules import GradMultiply
from torch import Tensor

from ..data.frames import conv_frames, receptive_field


class _LayerSpec(NamedTuple):
    """What the autograd function needs to know about one CNN layer besides its tensors."""

    kernel: int
    stride: int
    has_bias: bool
    norm: Optional[str]  # None, "time" (GroupNorm, one group per channel) or "channel" (LayerNorm)
    eps: float


IMPLEMENTATIONS = ("auto", "chunked", "batched")


def conv_features(extractor: nn.Module, source: Tensor, valid_frames: Optional[Tensor] = None,
                  grad_mult: float = 1.0, implementation: str = "auto") -> Tensor:
    """Run fairseq's ``ConvFeatureExtractionModel`` on ``source``; returns ``(batch, frame, channel)``.

    Numerically the module's own forward (up to float summation order), with its parameters and
    gradients, but the output is channels-last (what the models transpose to anyway).

    Args:
        extractor: a ``ConvFeatureExtractionModel`` (``default`` or ``layer_norm`` mode, dropout 0).
        source: ``(batch, sample)`` waveform.
        valid_frames: ``(batch,)`` valid output frames of the first layer per row; when given, the
            first layer's GroupNorm statistics are taken over those frames only and the padded
            frames are set to zero. None = stock behaviour (statistics over all frames).
        grad_mult: HuBERT's ``feature_grad_mult``: scales the gradient reaching the CNN; 0 runs
            it without autograd (frozen front-end).
        implementation: ``chunked``, ``batched``, or ``auto``: batched on CUDA, chunked elsewhere.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"conv_features: implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "auto":
        implementation = "batched" if source.is_cuda else "chunked"
    function = _BatchedFrontEnd if implementation == "batched" else _ConvFrontEnd
    specs, params = _describe(extractor)
    needed = receptive_field(_layers(specs))
    if source.dim() != 2 or source.shape[1] < needed:
        raise ValueError(f"conv_features: expected (batch, samples) audio of at least {needed} samples "
                         f"(one frame of the CNN), got shape {tuple(source.shape)}")
    if specs[0].norm != "time":
        valid_frames = None
    elif valid_frames is not None:
        valid_frames = valid_frames.to("cpu" if function is _ConvFrontEnd else source.device, torch.long)
    source = source.contiguous()
    dtype = compute_dtype(source)
    if grad_mult <= 0:
        with torch.no_grad():
            return function.apply(source, valid_frames, specs, False, dtype, *params)
    keep = torch.is_grad_enabled() and (source.requires_grad or any(p.requires_grad for p in params))
    features = function.apply(source, valid_frames, specs, keep, dtype, *params)
    if grad_mult != 1.0 and keep:
        features = GradMultiply.apply(features, grad_mult)
    return features


def compute_dtype(source: Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on for ``source``'s device (fp16/bf16 convolutions, as
    the stock module gets), else the input's dtype. The front-end then runs with autocast off."""
    device_type = source.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return source.dtype


def _describe(extractor: nn.Module) -> Tuple[Tuple[_LayerSpec, ...], List[Tensor]]:
    """Layer specs and the flat parameter list, checking the module is a layout we reproduce."""
    specs, params = [], []
    for index, block in enumerate(extractor.conv_layers):
        conv, dropout = block[0], block[1]
        if not isinstance(conv, nn.Conv1d) or not isinstance(dropout, nn.Dropout) or len(block) not in (3, 4):
            raise TypeError(f"conv_features: CNN layer {index} is not a fairseq wav2vec2 conv block: {block}")
        if dropout.p != 0.0 and dropout.training:
            raise ValueError(f"conv_features: CNN layer {index} has dropout {dropout.p}; only 0 is supported")
        if conv.padding != (0,) or conv.dilation != (1,) or conv.groups != 1:
            raise ValueError(f"conv_features: CNN layer {index} uses padding/dilation/groups, "
                             f"which fairseq's CNN never does")
        norm, eps = None, 0.0
        params.append(conv.weight)
        if conv.bias is not None:
            params.append(conv.bias)
        if len(block) == 4:
            module = block[2]
            if isinstance(module, nn.GroupNorm):
                if module.num_groups != module.num_channels or not module.affine:
                    raise ValueError(f"conv_features: CNN layer {index} GroupNorm must have one affine "
                                     f"group per channel")
                norm, eps = "time", module.eps
            else:
                layer_norms = [m for m in module.modules() if isinstance(m, nn.LayerNorm)]
                if len(layer_norms) != 1 or not layer_norms[0].elementwise_affine:
                    raise TypeError(f"conv_features: CNN layer {index} norm is neither GroupNorm nor "
                                    f"LayerNorm: {module}")
                module, norm, eps = layer_norms[0], "channel", layer_norms[0].eps
            params.extend([module.weight, module.bias])
        specs.append(_LayerSpec(conv.kernel_size[0], conv.stride[0], conv.bias is not None, norm, eps))
    return tuple(specs), params


class _ConvFrontEnd(torch.autograd.Function):
    """Chunked: forward keeps the convolution outputs only; backward recomputes norms and GELUs from them."""

    @staticmethod
    def forward(ctx, source: Tensor, valid_frames: Optional[Tensor], specs: Tuple[_LayerSpec, ...],
                keep: bool, dtype: torch.dtype, *params: Tensor) -> Tensor:
        with torch.autocast(source.device.type, enabled=False):
            x = source.to(dtype).unsqueeze(-1)
            activations = []
            for index, (spec, (weight, bias, norm_weight, norm_bias)) in enumerate(zip(specs, _split(params, specs))):
                pre = _conv(lambda row, start, stop, x=x: x[row, start:stop], x.shape, weight, spec.stride)
                if bias is not None:
                    pre += bias.to(dtype)
                activation = _Activation(pre, spec, norm_weight, norm_bias, valid_frames if index == 0 else None)
                x = activation.full_output()
                if keep:
                    activations.append(activation)
                del pre, activation
        if keep:
            # The activations hold intermediates (convolution outputs): kept on ctx rather than
            # save_for_backward so that backward can free each as soon as it is used.
            ctx.save_for_backward(source, *params)
            ctx.specs, ctx.activations, ctx.dtype = specs, activations, dtype
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):
        specs, activations, dtype = ctx.specs, ctx.activations, ctx.dtype
        ctx.activations = None
        source, *params = ctx.saved_tensors
        layer_params = _split(params, specs)
        grads: List[Tensor] = []
        source_grad = None
        with torch.autocast(source.device.type, enabled=False):
            grad = grad.to(dtype).contiguous().clone()
            audio = source.to(dtype)
            for index in reversed(range(len(specs))):
                spec, (weight, bias, _, _) = specs[index], layer_params[index]
                norm_grads = activations[index].backward_(grad)
                activations[index] = None
                if index > 0:
                    layer_input, input_shape = activations[index - 1].output, activations[index - 1].shape
                else:
                    layer_input, input_shape = (lambda row, start, stop: audio[row, start:stop, None]), (*audio.shape, 1)
                layer_grads = [_conv_weight_grad(layer_input, grad, weight.shape, spec.stride)]
                if bias is not None:
                    layer_grads.append(grad.sum((0, 1), dtype=torch.promote_types(dtype, torch.float32)))
                grads[:0] = layer_grads + list(norm_grads)
                if index > 0 or ctx.needs_input_grad[0]:
                    grad = _conv_input_grad(grad, weight, input_shape, spec.stride)
                    if index == 0:
                        source_grad = grad.squeeze(-1).to(source.dtype)
        grads = [g.to(p.dtype) for g, p in zip(grads, params)]
        return (source_grad, None, None, None, None, *grads)


class _BatchedFrontEnd(torch.autograd.Function):
    """Batched: the same saved state as :class:`_ConvFrontEnd` (the convolution outputs), with
    whole-batch convolutions, channels-first inside; the norm + GELU backward is autograd's, on the
    recomputed layer only."""

    @staticmethod
    def forward(ctx, source: Tensor, valid_frames: Optional[Tensor], specs: Tuple[_LayerSpec, ...],
                keep: bool, dtype: torch.dtype, *params: Tensor) -> Tensor:
        layer_params = _split(params, specs)
        with torch.autocast(source.device.type, enabled=False):
            x = source.to(dtype).unsqueeze(1)
            outputs = []
            for index, (spec, (weight, bias, norm_weight, norm_bias)) in enumerate(zip(specs, layer_params)):
                pre = F.conv1d(x, weight.to(dtype), None if bias is None else bias.to(dtype), stride=spec.stride)
                mask = _frame_mask(valid_frames, pre.shape[-1]) if index == 0 else None
                x = _norm_gelu(pre, spec, norm_weight, norm_bias, mask)
                if keep:
                    outputs.append(pre)
        if keep:
            ctx.save_for_backward(source, valid_frames, *params)
            ctx.specs, ctx.outputs, ctx.dtype = specs, outputs, dtype
        return x.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad: Tensor):
        specs, pres, dtype = ctx.specs, ctx.outputs, ctx.dtype
        ctx.outputs = None
        source, valid_frames, *params = ctx.saved_tensors
        layer_params = _split(params, specs)
        grads: List[Tensor] = []
        source_grad = None
        with torch.autocast(source.device.type, enabled=False):
            grad = grad.to(dtype).transpose(1, 2)
            layer = _recompute(pres, len(specs) - 1, specs, layer_params, valid_frames)
            for index in reversed(range(len(specs))):
                pre, output, norm_leaves = layer
                pres[index] = None
                pre_grad, *norm_grads = torch.autograd.grad(output, [pre, *norm_leaves], grad)
                del layer, pre, output
                if index > 0:
                    layer = _recompute(pres, index - 1, specs, layer_params, valid_frames)
                    layer_input = layer[1].detach()
                else:
                    layer_input = source.to(dtype).unsqueeze(1)
                weight, bias, _, _ = layer_params[index]
                need_input = index > 0 or ctx.needs_input_grad[0]
                input_grad, weight_grad, bias_grad = torch.ops.aten.convolution_backward(
                    pre_grad, layer_input, weight.to(dtype), [weight.shape[0]] if bias is not None else None,
                    [specs[index].stride], [0], [1], False, [0], 1, [need_input, True, bias is not None])
                grads[:0] = [weight_grad] + ([bias_grad] if bias is not None else []) + norm_grads
                grad = input_grad
                if index == 0 and need_input:
                    source_grad = input_grad.squeeze(1).to(source.dtype)
        grads = [g.to(p.dtype) for g, p in zip(grads, params)]
        return (source_grad, None, None, None, None, *grads)


def _recompute(pres: List[Optional[Tensor]], index: int, specs: Sequence[_LayerSpec],
               layer_params: Sequence[Tuple[Optional[Tensor], ...]], valid_frames: Optional[Tensor]
               ) -> Tuple[Tensor, Tensor, List[Tensor]]:
    """Layer ``index``'s ``GELU(norm(pre))`` with a graph from ``pre`` and the norm's parameters."""
    leaves = [p.detach().requires_grad_() for p in layer_params[index][2:] if p is not None]
    pre = pres[index].detach().requires_grad_()
    mask = _frame_mask(valid_frames, pre.shape[-1]) if index == 0 else None
    with torch.enable_grad():
        output = _norm_gelu(pre, specs[index], *(leaves or (None, None)), mask)
    return pre, output, leaves


def _frame_mask(valid_frames: Optional[Tensor], frames: int) -> Optional[Tensor]:
    """``(batch, frames)`` True on each row's first ``valid_frames`` frames; None when all are valid."""
    if valid_frames is None:
        return None
    return torch.arange(frames, device=valid_frames.device) < valid_frames[:, None]


def _norm_gelu(pre: Tensor, spec: _LayerSpec, weight: Optional[Tensor], bias: Optional[Tensor],
               mask: Optional[Tensor]) -> Tensor:
    """``GELU(norm(pre))`` on a channels-first ``(batch, channels, frames)`` convolution output.

    The norm runs in float32 at least (fairseq's Fp32 norms), the GELU in ``pre``'s dtype; with
    ``mask``, GroupNorm statistics are over each row's valid frames and padded frames are zero.
    """
    if spec.norm is None:
        return F.gelu(pre)
    dtype = torch.promote_types(pre.dtype, torch.float32)
    x, weight, bias = pre.to(dtype), weight.to(dtype), bias.to(dtype)
    if spec.norm == "channel":
        y = F.layer_norm(x.transpose(1, 2), weight.shape, weight, bias, spec.eps).transpose(1, 2)
    elif mask is None:
        y = F.group_norm(x, x.shape[1], weight, bias, spec.eps)
    else:
        valid = mask[:, None, :].to(dtype)
        count = valid.sum(-1, keepdim=True).clamp_(min=1)
        mean = (x * valid).sum(-1, keepdim=True) / count
        centred = x - mean
        var = (centred.square() * valid).sum(-1, keepdim=True) / count
        y = (centred * torch.rsqrt(var + spec.eps) * weight[:, None] + bias[:, None]) * valid
    return F.gelu(y.to(pre.dtype))


#: Frames per chunk of the element-wise recomputation (8 MB at 512 float32 channels).
CHUNK_FRAMES = 4096

#: ``layer_input(row, start, stop)``: input frames ``start:stop`` of one row, ``(frames, channels)``.
LayerInput = Callable[[int, int, int], Tensor]


class _Activation:
    """``GELU(norm(pre))`` of one layer, recomputable on any row and frame range from ``pre``.

    ``pre`` is the convolution output ``(batch, frames, channels)``; the norm statistics are taken
    once (float32 at least, as fairseq's Fp32 norms) and kept, they are small.
    """

    def __init__(self, pre: Tensor, spec: _LayerSpec, weight: Optional[Tensor], bias: Optional[Tensor],
                 valid_frames: Optional[Tensor]) -> None:
        self.pre, self.spec, self.shape = pre, spec, pre.shape
        self.dtype = torch.promote_types(pre.dtype, torch.float32)
        self.weight = None if weight is None else weight.to(self.dtype)
        self.bias = None if bias is None else bias.to(self.dtype)
        frames = pre.shape[1]
        self.valid = ([frames] * pre.shape[0] if valid_frames is None or spec.norm != "time"
                      else valid_frames.clamp(min=0, max=frames).tolist())
        self.mean = self.rstd = None
        if spec.norm == "time":
            self.mean, self.rstd = _time_statistics(pre, self.valid, spec.eps, self.dtype)

    def _normalised(self, row: int, start: int, stop: int) -> Tensor:
        """``(pre - mean) * rstd`` of frames ``start:stop`` of ``row`` (a new tensor)."""
        x = self.pre[row, start:stop].to(self.dtype)
        if self.spec.norm == "time":
            return (x - self.mean[row]).mul_(self.rstd[row])
        var, mean = torch.var_mean(x, dim=1, keepdim=True, unbiased=False)
        return (x - mean).mul_(torch.rsqrt(var + self.spec.eps))

    def normed(self, row: int, start: int, stop: int) -> Tensor:
        """The GELU input on frames ``start:stop`` of ``row``; padded frames (time norm) are zero."""
        if self.spec.norm is None:
            return self.pre[row, start:stop]
        return self._affine(self._normalised(row, start, stop), row, start, stop).to(self.pre.dtype)

    def _affine(self, normalised: Tensor, row: int, start: int, stop: int) -> Tensor:
        """``normalised * weight + bias`` (a new tensor), zero on the row's padded frames."""
        y = normalised * self.weight + self.bias
        if self.valid[row] < stop:
            y[max(self.valid[row] - start, 0):] = 0
        return y

    def output(self, row: int, start: int, stop: int) -> Tensor:
        """The layer output ``GELU(norm(pre))`` on frames ``start:stop`` of ``row``."""
        return F.gelu(self.normed(row, start, stop))

    def full_output(self) -> Tensor:
        """The whole layer output (the next layer's input in forward)."""
        out = self.pre.new_empty(self.shape)
        for row, start, stop in _chunks(self.shape):
            out[row, start:stop] = self.output(row, start, stop)
        return out

    def backward_(self, grad: Tensor) -> Tuple[Tensor, ...]:
        """Turn ``grad`` (w.r.t. the output) in place into the gradient w.r.t. ``pre``.

        Returns the norm weight and bias gradients (nothing without a norm), in the norm's compute
        dtype (backward casts them to the parameters'). With ``x̂`` the normalised input, ``g`` the
        gradient of the affine norm's output and ``w`` its weight:
        ``dpre = rstd * (g w - mean(g w) - x̂ mean(g w x̂))`` with means over the normalised axis,
        which for LayerNorm is within a chunk (one pass) and for GroupNorm over a row's time (a
        second pass applies the means).
        """
        if self.spec.norm is None:
            for row, start, stop in _chunks(self.shape):
                chunk = grad[row, start:stop]
                chunk.copy_(torch.ops.aten.gelu_backward(chunk, self.pre[row, start:stop]))
            return ()
        batch, _, channels = self.shape
        weight_grad = grad.new_zeros(channels, dtype=self.dtype)
        bias_grad = grad.new_zeros(channels, dtype=self.dtype)
        sum_g = grad.new_zeros(batch, channels, dtype=self.dtype)
        sum_gx = grad.new_zeros(batch, channels, dtype=self.dtype)
        for row, start, stop in _chunks(self.shape):
            chunk, x = grad[row, start:stop], self._normalised(row, start, stop)
            normed = self._affine(x, row, start, stop).to(self.pre.dtype)
            g = torch.ops.aten.gelu_backward(chunk, normed).to(self.dtype)
            if self.valid[row] < stop:  # padded frames were set to a constant
                g[max(self.valid[row] - start, 0):] = 0
            gx = g * x
            weight_grad += gx.sum(0)
            bias_grad += g.sum(0)
            if self.spec.norm == "channel":
                gw = g.mul_(self.weight)
                dx = gw.sub_(gw.mean(1, keepdim=True)).sub_(x.mul_((gx.mul_(self.weight)).mean(1, keepdim=True)))
                var, _ = torch.var_mean(self.pre[row, start:stop].to(self.dtype), dim=1, keepdim=True, unbiased=False)
                chunk.copy_(dx.mul_(torch.rsqrt(var + self.spec.eps)))
            else:
                sum_gx[row] += gx.sum(0)
                sum_g[row] += g.sum(0)
                chunk.copy_(g)
        if self.spec.norm == "time":
            counts = torch.tensor([max(v, 1) for v in self.valid], dtype=self.dtype, device=grad.device)[:, None]
            mean_g = sum_g.mul_(self.weight).div_(counts)
            mean_gx = sum_gx.mul_(self.weight).div_(counts)
            for row, start, stop in _chunks(self.shape):
                chunk, x = grad[row, start:stop], self._normalised(row, start, stop)
                dx = (chunk.to(self.dtype) * self.weight).sub_(mean_g[row]).sub_(x.mul_(mean_gx[row]))
                dx.mul_(self.rstd[row])
                if self.valid[row] < stop:
                    dx[max(self.valid[row] - start, 0):] = 0
                chunk.copy_(dx)
        return weight_grad, bias_grad


def _time_statistics(pre: Tensor, valid: Sequence[int], eps: float, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """Per row and channel mean and 1/std over each row's valid frames, ``(batch, channels)`` each.

    Two passes (mean, then centred squares) for accuracy, chunked so that no full-size copy is made.
    """
    batch, _, channels = pre.shape
    mean = torch.zeros(batch, channels, dtype=dtype, device=pre.device)
    rstd = torch.ones(batch, channels, dtype=dtype, device=pre.device)
    for row in range(batch):
        if valid[row] == 0:
            continue
        total = torch.zeros(channels, dtype=dtype, device=pre.device)
        for start, stop in _spans(valid[row]):
            total += pre[row, start:stop].to(dtype).sum(0)
        mean[row] = total / valid[row]
        squares = torch.zeros(channels, dtype=dtype, device=pre.device)
        for start, stop in _spans(valid[row]):
            squares += (pre[row, start:stop].to(dtype) - mean[row]).square_().sum(0)
        rstd[row] = torch.rsqrt(squares / valid[row] + eps)
    return mean, rstd


def _spans(frames: int) -> List[Tuple[int, int]]:
    return [(start, min(start + CHUNK_FRAMES, frames)) for start in range(0, frames, CHUNK_FRAMES)]


def _chunks(shape: Sequence[int]) -> List[Tuple[int, int, int]]:
    """``(row, start, stop)`` over a ``(batch, frames, ...)`` tensor in chunks of CHUNK_FRAMES."""
    return [(row, start, stop) for row in range(shape[0]) for start, stop in _spans(shape[1])]


def _split(params: Sequence[Tensor], specs: Sequence[_LayerSpec]
           ) -> List[Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]]:
    """Per layer ``(conv weight, conv bias, norm weight, norm bias)`` from the flat list."""
    out, at = [], 0
    for spec in specs:
        weight = params[at]
        at += 1
        bias = None
        if spec.has_bias:
            bias, at = params[at], at + 1
        norm_weight = norm_bias = None
        if spec.norm is not None:
            norm_weight, norm_bias, at = params[at], params[at + 1], at + 2
        out.append((weight, bias, norm_weight, norm_bias))
    return out


def _tap_groups(kernel: int, stride: int) -> List[Tuple[int, int]]:
    """``(first tap, taps)`` groups: within one group the taps of an output frame are contiguous
    input frames and the rows of consecutive output frames do not overlap."""
    return [(first, min(stride, kernel - first)) for first in range(0, kernel, stride)]


def _rows(x: Tensor, first: int, taps: int, stride: int, frames: int) -> Tensor:
    """``(frames, taps * channels)`` view of ``x (time, channels)``: output frame ``t`` reads input
    frames ``stride * t + first ... + taps - 1``, flattened frame-major. ``x`` must be contiguous."""
    channels = x.shape[1]
    return x.as_strided((frames, taps * channels), (stride * channels, 1),
                        x.storage_offset() + first * channels)


def _tap_matrix(weight: Tensor, first: int, taps: int) -> Tensor:
    """``(taps * in_channels, out_channels)`` slice of a Conv1d weight matching :func:`_rows`."""
    return weight[:, :, first:first + taps].permute(2, 1, 0).reshape(taps * weight.shape[1], weight.shape[0])


def _output_frames(input_frames: int, kernel: int, stride: int) -> int:
    frames = conv_frames(input_frames, [(0, kernel, stride)])
    if frames <= 0:
        raise ValueError(f"conv_features: an input of {input_frames} frames is shorter than a kernel of {kernel}")
    return frames


def _layers(specs: Sequence[_LayerSpec]) -> List[Tuple[int, int, int]]:
    """``(channels, kernel, stride)`` per layer, the form of ``data/frames.py`` (channels unused there)."""
    return [(0, spec.kernel, spec.stride) for spec in specs]


def _conv_chunks(frames: int, kernel: int, stride: int) -> List[Tuple[int, int, int, int]]:
    """Output frame chunks ``(start, stop)`` with the input frames ``(in_start, in_stop)`` they read."""
    return [(start, stop, stride * start, stride * (stop - 1) + kernel) for start, stop in _spans(frames)]


def _conv(layer_input: LayerInput, input_shape: Sequence[int], weight: Tensor, stride: int) -> Tensor:
    """Unpadded Conv1d over a channels-last input ``(batch, time, in)`` → ``(batch, frames, out)``."""
    kernel = weight.shape[2]
    frames = _output_frames(input_shape[1], kernel, stride)
    first_frame = layer_input(0, 0, 1)
    out = first_frame.new_empty(input_shape[0], frames, weight.shape[0])
    matrices = [(first, taps, _tap_matrix(weight, first, taps).to(out.dtype))
                for first, taps in _tap_groups(kernel, stride)]
    for row in range(input_shape[0]):
        for start, stop, in_start, in_stop in _conv_chunks(frames, kernel, stride):
            x = layer_input(row, in_start, in_stop).contiguous()
            for number, (first, taps, matrix) in enumerate(matrices):
                rows = _rows(x, first, taps, stride, stop - start)
                if number == 0:
                    torch.mm(rows, matrix, out=out[row, start:stop])
                else:
                    out[row, start:stop].addmm_(rows, matrix)
    return out


def _conv_weight_grad(layer_input: LayerInput, grad: Tensor, shape: torch.Size, stride: int) -> Tensor:
    """Gradient of the Conv1d weight (``shape``) from its input (recomputed by chunks) and output
    gradient; the chunks' products are summed in float32 at least."""
    out_channels, in_channels, kernel = shape
    weight_grad = grad.new_zeros(kernel, in_channels, out_channels, dtype=torch.promote_types(grad.dtype, torch.float32))
    groups = _tap_groups(kernel, stride)
    for row in range(grad.shape[0]):
        for start, stop, in_start, in_stop in _conv_chunks(grad.shape[1], kernel, stride):
            x = layer_input(row, in_start, in_stop).contiguous()
            for first, taps in groups:
                block = weight_grad[first:first + taps].view(taps * in_channels, out_channels)
                rows = _rows(x, first, taps, stride, stop - start).t()
                if block.dtype == grad.dtype:
                    block.addmm_(rows, grad[row, start:stop])
                else:
                    block += torch.mm(rows, grad[row, start:stop])
    return weight_grad.permute(2, 1, 0).contiguous()


def _conv_input_grad(grad: Tensor, weight: Tensor, input_shape: Sequence[int], stride: int) -> Tensor:
    """Gradient of a Conv1d's channels-last input ``input_shape`` given the output gradient."""
    kernel = weight.shape[2]
    frames = grad.shape[1]
    input_grad = grad.new_zeros(input_shape)
    for first, taps in _tap_groups(kernel, stride):
        matrix_t = _tap_matrix(weight, first, taps).to(grad.dtype).t()
        for row in range(grad.shape[0]):
            _rows(input_grad[row], first, taps, stride, frames).addmm_(grad[row], matrix_t)
    return input_grad
