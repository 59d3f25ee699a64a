"""Counting what a step asks of the device (``k2ssl_fairseq.bench.dispatch``): dispatched ops with
views and value reads, and launches counted alike for eager and compiled code."""
import pytest
import torch

from k2ssl_fairseq.bench.dispatch import count_launches, count_ops, enable_compiled_kernel_events


def test_dispatched_ops_include_views_and_value_reads():
    x, y = torch.randn(4, 3), torch.randn(4, 5)
    counter = count_ops(lambda: float((x.t() @ y).sum()))
    assert counter.ops["aten::t"] == counter.ops["aten::mm"] == counter.ops["aten::sum"] == 1
    assert counter.value_reads == counter.ops["aten::_local_scalar_dense"] == 1
    assert counter.device_value_reads == 0  # a CPU tensor read on the host does not wait for a device
    assert counter.total == sum(counter.ops.values()) == 4


def test_launches_leave_out_views_allocations_and_work_inside_another_op():
    a, b = torch.randn(3, 8, 5), torch.randn(3, 8, 6)
    # bmm of a transposed (non-contiguous) input copies it inside the CPU kernel: still one launch
    assert count_launches(lambda: torch.bmm(a.transpose(1, 2), b)) == 1
    assert count_launches(lambda: a.view(24, 5).t().unsqueeze(0).expand(2, 5, 24)) == 0
    assert count_launches(lambda: torch.empty(10).fill_(1.0).add_(a.sum())) == 3  # fill_, sum, add_


@pytest.mark.e2e
def test_kernels_generated_by_torch_compile_are_counted():
    enable_compiled_kernel_events()
    x = torch.randn(64, 64)

    def pointwise(t):
        return (t.sin() * 2 + t.cos()).exp()

    compiled = torch.compile(pointwise)
    compiled(x)
    assert count_launches(lambda: pointwise(x)) == 5  # sin, mul, cos, add, exp
    assert count_launches(lambda: compiled(x)) == 1  # one fused kernel
