"""``model.compile``: the training step compiled layer by layer with ``torch.compile``.

A Zipformer layer is hundreds of small ops; on a fast GPU the host issuing them, not the device, sets
the pace. Compiled, each layer's forward and backward become a few fused kernels. Layers are the
unit: the code around them (front-end, downsampling, loss) has data-dependent shapes and few ops,
and layers of the same shape share one compiled graph, so a model compiles a handful of graphs (one
per distinct layer shape, more when input shapes first vary: see ``LayerCompiler``) and never
recompiles as training advances (schedules and random draws enter the graph as tensors).

Only training-mode calls are compiled; evaluation runs eagerly (a tool that loads a checkpoint
trained with ``compile: true`` never compiles).
"""

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import torch
from fairseq.dataclass import FairseqDataclass
from torch import nn

logger = logging.getLogger(__name__)

#: ``torch.compile`` modes (inductor's option sets); ``reduce-overhead`` adds CUDA graphs.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: Graphs one compiled function may hold (torch's default of 8 is below what a model needs: about
#: four per distinct layer shape, see ``LayerCompiler``).
RECOMPILE_LIMIT = 64


def _tensors(value: Any) -> Iterable[torch.Tensor]:
    """The tensors in nested tuples, lists and dicts."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _call(forward: Callable, layer: nn.Module, *args: Any, **kwargs: Any) -> Any:
    return forward(layer, *args, **kwargs)


class LayerCompiler:
    """One ``torch.compile``'d call that runs a layer's ``forward``, shared by the layers it is
    attached to (``attach``). Layers with the same structure and shapes share a graph; a layer
    shape compiles once with its first input shapes and once more when they first change (its
    batch and frame axes then become symbolic), plus once for a batch of one and once for each
    kind of padding mask (present or not): bounded, whatever the data. ``compiles`` counts the
    graphs compiled, each also logged.

    Args:
        backend: ``torch.compile`` backend; ``inductor`` generates kernels, ``aot_eager`` only
            traces (a quick check that everything traces, and of the numbers).
        mode: inductor's option set (``COMPILE_MODES``); None or ``default``: the default one.
        name: what the log calls the compiled layers.
    """

    def __init__(self, backend: str = "inductor", mode: Optional[str] = None, name: str = "layer") -> None:
        if mode not in (None, *COMPILE_MODES):
            raise ValueError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
        self.backend, self.mode, self.name = backend, mode, name
        self.compiles = 0
        self.shapes: set = set()  # distinct layer structures attached
        self._compiled = torch.compile(_call, backend=self._compile_graph)
        if torch._dynamo.config.recompile_limit < RECOMPILE_LIMIT:
            torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT

    def _compile_graph(self, graph: torch.fx.GraphModule, example_inputs: list) -> Callable:
        self.compiles += 1
        shapes = [tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor) and t.ndim >= 2][:2]
        logger.info("compiled %s graph %d of at most %d (%s backend, %d nodes; inputs %s ...)", self.name,
                    self.compiles, self.expected_compiles, self.backend, len(graph.graph.nodes), shapes)
        if self.compiles > self.expected_compiles:
            logger.warning("%s: %d graphs compiled, more than the %d expected; input shapes vary in a way "
                           "the compiled layers do not absorb", self.name, self.compiles, self.expected_compiles)
        if self.backend == "inductor":
            from torch._inductor import list_mode_options
            from torch._inductor.compile_fx import compile_fx

            patches = list_mode_options(self.mode) if self.mode not in (None, "default") else {}
            return compile_fx(graph, example_inputs, config_patches=patches)
        from torch._dynamo.backends.registry import lookup_backend

        return lookup_backend(self.backend)(graph, example_inputs)

    def run(self, forward: Callable, layer: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """``forward(layer, ...)``: compiled in training mode, eager otherwise."""
        if layer.training and not torch.compiler.is_compiling():
            # Contiguous inputs: a graph is specialised on its inputs' layout too (the first stack's
            # input is a transposed view, the last one's is not).
            args = tuple(arg.contiguous() if isinstance(arg, torch.Tensor) else arg for arg in args)
            for tensor in _tensors((args, kwargs)):
                for dim in range(tensor.ndim):  # batch and frame axes: symbolic from the first compile
                    torch._dynamo.maybe_mark_dynamic(tensor, dim)
            return self._compiled(forward, layer, *args, **kwargs)
        return forward(layer, *args, **kwargs)

    def attach(self, layers: Iterable[nn.Module]) -> None:
        """Route every call of each layer through ``run`` (its ``forward`` is replaced on the instance,
        so parameter names, state dicts and hooks stay as they are) and mark it ``compiled = True``."""
        for layer in layers:
            layer.forward = functools.partial(self.run, type(layer).forward, layer)
            layer.compiled = True
            self.shapes.add((type(layer), tuple(tuple(p.shape) for p in layer.parameters())))

    @property
    def expected_compiles(self) -> int:
        """At most this many graphs, whatever the data: per distinct layer shape, one for batches of
        2-15 sequences, one for a batch of one and one for 16 or more (torch specialises those batch
        sizes), in each gradient mode (k2ssl_ctc runs its frozen encoder without gradients). On a
        CPU, inductor's C++ code also picks how it sums by the size of each reduction (over 4,096
        elements or not), so batches of very few frames (under 4096 / channels) add graphs."""
        return 3 * 2 * len(self.shapes)

    def __deepcopy__(self, memo: dict) -> "LayerCompiler":
        return self  # holds no module: copies of a model share it


@dataclass
class CompileConfig(FairseqDataclass):
    """The ``compile`` settings of every plugin model (``model.compile=true`` in any preset)."""

    compile: bool = field(default=False, metadata={
        "help": "compile each encoder layer's training step with torch.compile (forward and backward fused "
                "into a few kernels per layer; evaluation stays eager)"})
    compile_mode: Optional[str] = field(default=None, metadata={
        "help": f"torch.compile mode: one of {', '.join(COMPILE_MODES)} (reduce-overhead adds CUDA graphs); "
                "null: default"})
    compile_backend: str = field(default="inductor", metadata={
        "help": "torch.compile backend: inductor generates kernels; aot_eager only traces (checks that the "
                "step compiles, without generating code)"})


def compile_layers(cfg: CompileConfig, layers: Iterable[nn.Module], name: str) -> Optional[LayerCompiler]:
    """Attach a ``LayerCompiler`` for ``cfg`` to ``layers`` when ``cfg.compile`` (else nothing)."""
    if not cfg.compile:
        return None
    compiler = LayerCompiler(cfg.compile_backend, cfg.compile_mode, name)
    compiler.attach(layers)
    logger.info("%s: training steps compiled per layer (torch.compile backend %s, mode %s)", name,
                cfg.compile_backend, cfg.compile_mode or "default")
    return compiler
