"""The dispatch counter's kernel, byte and FLOP counts on ops whose costs are known exactly,
its region attribution (forward and backward), and that fake tensors count like real ones."""
from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

from dispatch_counter import DispatchCounter, footprint  # noqa: E402
from memel_lightning.inhibition import MEmeL  # noqa: E402


def count(fn) -> DispatchCounter:
    counter = DispatchCounter()
    with counter:
        fn()
    return counter


def test_matmul_exact_flops_and_bytes():
    a, b = torch.randn(8, 16), torch.randn(16, 4, dtype=torch.float32)
    c = count(lambda: a @ b).total()
    assert (c.kernels, c.flops) == (1, 2 * 8 * 16 * 4)
    assert (c.bytes_read, c.bytes_written) == ((8 * 16 + 16 * 4) * 4, 8 * 4 * 4)


def test_bf16_addmm_bytes_use_element_size():
    x, w, bias = (torch.randn(5, 7, dtype=torch.bfloat16), torch.randn(3, 7, dtype=torch.bfloat16),
                  torch.randn(3, dtype=torch.bfloat16))
    counter = count(lambda: nn.functional.linear(x, w, bias))
    c = counter.total()
    assert c.ops == {"aten::addmm": 1}  # the transpose of w is a view: no kernel
    assert c.flops == 2 * 5 * 7 * 3
    assert c.bytes_read == (5 * 7 + 3 * 7 + 3) * 2 and c.bytes_written == 5 * 3 * 2


def test_elementwise_bytes():
    a, b = torch.randn(10, 10), torch.randn(10, 10)
    c = count(lambda: a + b).total()
    assert (c.kernels, c.bytes_read, c.bytes_written, c.flops) == (1, 800, 400, 0)
    # the same tensor twice is read once
    assert count(lambda: a * a).total().bytes_read == 400


def test_inplace_counts_the_destination_once():
    a, b = torch.randn(10, 10), torch.randn(10, 10)
    c = count(lambda: a.add_(b)).total()
    assert (c.kernels, c.bytes_read, c.bytes_written) == (1, 800, 400)


def test_write_only_ops_do_not_read_their_destination():
    dst, src = torch.empty(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    c = count(lambda: dst.copy_(src)).total()
    assert (c.kernels, c.bytes_read, c.bytes_written) == (1, 240, 240)
    c = count(lambda: dst.zero_()).total()
    assert (c.kernels, c.bytes_read, c.bytes_written) == (1, 0, 240)
    out = torch.empty(6, 5, dtype=torch.float64)
    c = count(lambda: torch.add(src, src, out=out)).total()
    assert (c.bytes_read, c.bytes_written) == (240, 240)


def test_broadcast_inputs_count_their_footprint():
    x, bias = torch.randn(32, 64), torch.randn(64)
    c = count(lambda: x + bias.expand(32, 64)).total()
    assert c.bytes_read == (32 * 64 + 64) * 4
    assert footprint(torch.ones(4, 1, dtype=torch.bool).expand(4, 9)) == 4


def test_views_and_allocations_launch_nothing():
    x = torch.randn(4, 6)

    def views():
        x.view(24), x.t(), x.permute(1, 0), x[1:], x.unsqueeze(0), x.detach(), torch.empty(3, 3)

    c = count(views).total()
    assert (c.kernels, c.bytes) == (0, 0)


def test_gathers_read_what_they_gather():
    table, idx = torch.randn(1000, 8), torch.randint(0, 1000, (3, 5))
    c = count(lambda: nn.functional.embedding(idx, table)).total()
    assert c.bytes_read == 15 * 8 * 4 + 15 * 8 and c.bytes_written == 15 * 8 * 4


def test_mlp_forward_backward_flops_exact():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4))
    x = torch.randn(8, 16)  # no input gradient: the first layer's backward is its weight gradient only
    counter = count(lambda: net(x).sum().backward())
    fwd = 2 * 8 * 16 * 32 + 2 * 8 * 32 * 4
    bwd = 2 * (2 * 8 * 32 * 4) + 2 * 8 * 16 * 32
    assert counter.cost(phase="forward").flops == fwd
    assert counter.cost(phase="backward").flops == bwd


class Tapped(nn.Module):
    """linear -> gelu -> (MEmeL on the activation) -> linear, like a transformer MLP."""

    def __init__(self, memel: MEmeL | None) -> None:
        super().__init__()
        self.up, self.act, self.down = nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16)
        if memel is not None:
            self.act.register_forward_hook(lambda mod, args, out: memel(out))

    def forward(self, x):
        return self.down(self.act(self.up(x)))


def warm(strategy: str, selector: str = "topk") -> MEmeL:
    opts = dict(k=1) if selector == "topk" else dict(target_ratio=0.1)
    m = MEmeL(selector=selector, strategy=strategy, late_start=0, reduce_dims=[0], **opts)
    m(torch.randn(2, 5, 64))
    m.record_metrics = False
    return m


def run_counted(memel: MEmeL | None, fake: bool) -> DispatchCounter:
    torch.manual_seed(0)
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
    if mode is not None:
        with torch.device("meta"):
            net = Tapped(memel)
        with mode:
            net.to_empty(device="cpu")
    else:
        net = Tapped(memel)
    counter = DispatchCounter()
    handles = counter.attribute(memel, "inhibition") if memel is not None else []
    ctx = mode if mode is not None else torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)
    with ctx:
        x = torch.randn(2, 5, 16, requires_grad=True)
        with counter:
            net(x).square().sum().backward()
    for h in handles:
        h.remove()
    return counter


def signature(counter: DispatchCounter, region: str | None = None):
    # ops that launch nothing are left out: fake tensors add metadata queries (prim::device)
    return [(r.op, r.phase, r.kernels, r.bytes_read, r.bytes_written, r.flops)
            for r in counter.records if r.kernels and (region is None or r.region == region)]


@pytest.mark.parametrize("strategy", ["reverse", "regularize"])
def test_attribution_leaves_the_model_as_without_inhibition(strategy):
    base = run_counted(None, fake=False)
    tapped = run_counted(warm(strategy), fake=False)
    # every op of the model (forward and backward) is charged to the model, nothing else
    assert signature(tapped, "model") == signature(base, "model")
    inh = tapped.cost("inhibition", "backward")
    assert inh.kernels > 0 and tapped.cost("inhibition", "forward").kernels > 0
    if strategy == "reverse":
        # ReplaceWithMean's backward for delta = 1: where(selected, grad * -1, grad)
        assert dict(inh.ops) == {"aten::mul": 1, "aten::where": 1}
        n = 2 * 5 * 64
        # mul reads grad; where reads the bool selection, grad * -1 and grad; each writes n floats
        assert inh.bytes_read == n * 4 + (n + 2 * n * 4) and inh.bytes_written == 2 * n * 4


@pytest.mark.parametrize("selector", ["topk", "moving_threshold"])
def test_fake_tensors_count_like_real_ones(selector):
    real = run_counted(warm("reverse", selector), fake=False)
    fake = run_counted(warm("reverse", selector), fake=True)
    assert signature(fake) == signature(real)
    assert {r.region for r in fake.records} == {"model", "inhibition"}


def test_region_context_manager_nests():
    counter = DispatchCounter()
    x = torch.randn(3)
    with counter:
        x + 1
        with counter.region("a"):
            x * 2
            with counter.region("b"):
                x - 1
        x / 2
    assert {k: v.kernels for k, v in counter.by_region().items()} == {"model": 2, "a": 1, "b": 1}


def test_attention_flops_and_causal_halving():
    q = torch.randn(2, 3, 16, 8)
    sdpa = nn.functional.scaled_dot_product_attention
    full = count(lambda: sdpa(q, q, q)).total()
    assert full.flops == 2 * (2 * 2 * 3 * 16 * 16 * 8)  # q k^T and p v
    assert count(lambda: sdpa(q, q, q, is_causal=True)).total().flops == full.flops // 2
    mask = torch.ones(16, 16, dtype=torch.bool).tril()
    assert count(lambda: sdpa(q, q, q, attn_mask=mask)).total().flops == full.flops  # a mask of unknown kind
    counter = DispatchCounter(causal_masks=True)
    with counter:
        sdpa(q, q, q, attn_mask=mask)
    assert counter.total().flops == full.flops // 2


def test_python_scalars_are_not_kernels():
    x, cond = torch.randn(10), torch.rand(10) > 0.5
    c = count(lambda: torch.where(cond, x, 0.0)).total()
    assert dict(c.ops) == {"aten::where": 1}
    assert c.bytes_read - (10 + 40) in (4, 8)  # the mask, x and the 0-dim scalar (one element)
