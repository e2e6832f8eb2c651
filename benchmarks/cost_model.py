"""Predicted H100 step time and overhead of MEmeL and L2E, without a GPU.

For each model and method, one training forward+backward of the tapped model runs on
fake tensors (``FakeTensorMode``: shapes only, nothing computed or allocated) under
:class:`dispatch_counter.DispatchCounter`, which charges every ATen op to the model or
to the inhibition and counts its kernel launches, bytes read and written, and matmul
FLOPs (counting rules: ``benchmarks/dispatch_counter.py``). A roofline per op turns
the counts into time.

Models, as the project runs them (taps from the models' ``memel_taps()`` rules):

- Swin-T: timm ``swin_tiny_patch4_window7_224`` (pretrained=False), batch 128 images
  of 224x224, cross-entropy over 1000 classes; taps: stage-3 blocks 1-4 (the block
  outputs, ``(B, 14, 14, 384)``), every value of an image a neuron.
- BERT-base: ``BertForSequenceClassification(BertConfig())`` (2 labels), batch 32 x 128
  tokens with an attention mask (all valid); taps: encoder blocks 4-7 (the middle four,
  ``(B, 128, 768)``), ``variable_shape`` and the attention mask as the MEmeL mask, as
  the GLUE config does.
- Pythia-70M / 410M / 2.8B: ``GPTNeoXConfig`` of the published sizes (6 x 512,
  24 x 1024, 32 x 2560; vocabulary 50304; MLP 4 x hidden), sequences of 2048 tokens,
  8 / 4 / 1 sequences per GPU (micro-batch; a smaller batch is the harder case for the
  inhibition, whose per-launch costs do not shrink with it). Taps: the MLP activation
  (``layers.<i>.mlp.act``, ``(B, 2048, 4*hidden)``) with ``reduce_dims=[0]`` (a token
  is a sample), on every layer ("all", the project's default) and on the two middle
  layers ("mid2", L2E's placement).

Methods: ``memel`` = MEmeL top-1 (``selector=topk, k=1, strategy=reverse, delta=1``);
``l2e`` = moving threshold (``target_ratio=0.02``) + ``regularize`` (``reg_lambda=1e-3``).
Both past their late start (statistics, scoring, selection and inhibition all run) on
a non-logging step (no metrics recorded), as on almost every step of a run.

Assumptions of the time model (all printed with the table, all settable):

- Precision: bf16 autocast (CPU autocast's policy stands in for CUDA's: the same
  matmuls and attention run in bf16; CUDA additionally keeps layer norms, softmax and
  losses in float32, so on a GPU the model moves somewhat *more* bytes and the
  predicted overhead is, if anything, overstated). ``--dtype fp32`` runs without autocast.
- Attention: the fused flash kernel (what CPU fake runs dispatch to, and what an H100
  runs for these shapes); causal attention (Pythia; Hugging Face passes the causal
  mask as a tensor on fake tensors) counts half the L x L products.
- Per op, time = max(bytes / (HBM bandwidth x efficiency), FLOPs / (peak x fraction),
  launch floor): HBM 3.35 TB/s at ``--hbm-eff`` (default 0.8), bf16 dense matmul at
  ``--mm-eff`` (default 0.6) of 989 TFLOP/s (float32 matmuls at the TF32 rate, 494.5),
  and ``--launch-us`` (default 4 us) as the least time any kernel takes, the launch and
  dispatch interval of eager PyTorch. The "additive" column adds the launch time to
  every kernel instead (no overlap of launches with work): a pessimistic bound.
- Caches are ignored (every byte goes to HBM), kernels never overlap, the optimizer
  step, data loading and communication are not included: the step is forward+backward
  only, which makes the overhead (inhibition time / model time) larger than over a full
  step.
- The MEmeL core is the current one (``memel_lightning.inhibition.MEmeL``), attached by
  a plain forward hook on each tap module that replaces its output, as the callback does.

    python benchmarks/cost_model.py                         # all models, ~3 min on a shared 2-core CPU
    python benchmarks/cost_model.py --models pythia-70m bert-base --markdown table.md
    python benchmarks/cost_model.py --hbm-eff 0.7 --mm-eff 0.5 --launch-us 6
    python benchmarks/cost_model.py --models pythia-410m --breakdown   # the inhibition's costliest ops
    python benchmarks/cost_model.py --models pythia-tiny                # smoke test (2 layers of 64), seconds
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from core_overhead import fused_kernels_as_one  # noqa: E402
from dispatch_counter import DispatchCounter, OpRecord  # noqa: E402
from memel_lightning.inhibition import MEmeL  # noqa: E402

try:  # the project's tap placement rules, in one module since the models/taps.py refactor
    from memel_lightning.models.taps import middle_blocks, timm_default_taps
except ImportError:  # before it: where the rules lived with their models
    from memel_lightning.models.glue import middle_blocks
    from memel_lightning.models.image import timm_default_taps

INHIBITION = "inhibition"
METHODS: dict[str, dict[str, Any]] = {
    "memel": dict(selector="topk", k=1, strategy="reverse", delta=1.0),
    "l2e": dict(selector="moving_threshold", target_ratio=0.02, strategy="regularize", reg_lambda=1e-3),
}


@dataclass(frozen=True)
class Hardware:
    """The roofline of one GPU (defaults: H100 SXM)."""

    hbm_bytes_per_s: float = 3.35e12
    hbm_eff: float = 0.8
    bf16_flops_per_s: float = 989e12
    mm_eff: float = 0.6
    launch_s: float = 4e-6

    def op_time(self, r: OpRecord, additive: bool = False) -> float:
        """Seconds for one op (module docstring): 0 for ops that launch nothing."""
        if r.kernels == 0:
            return 0.0
        peak = self.bf16_flops_per_s if r.dtype in (torch.bfloat16, torch.float16) else self.bf16_flops_per_s / 2
        work = max((r.bytes_read + r.bytes_written) / (self.hbm_bytes_per_s * self.hbm_eff),
                   r.flops / (peak * self.mm_eff))
        return work + self.launch_s * r.kernels if additive else max(work, self.launch_s * r.kernels)

    def describe(self) -> str:
        return (f"H100 roofline: HBM {self.hbm_bytes_per_s / 1e12:.2f} TB/s x {self.hbm_eff:g}, bf16 matmul "
                f"{self.bf16_flops_per_s / 1e12:.0f} TFLOP/s x {self.mm_eff:g} (fp32 at half), "
                f"{self.launch_s * 1e6:g} us launch floor per kernel")


@dataclass
class Workload:
    """A model ready to run on fake tensors, its tap modules and one batch."""

    name: str
    model: nn.Module
    taps: dict[str, nn.Module]           # tap name -> module whose output is inhibited
    step: Callable[[nn.Module], Tensor]  # runs the forward, returns the loss
    tap_shape: tuple[int, ...]           # (B, *S) of one tap's output
    memel_options: dict[str, Any]        # per-model MEmeL settings (reduce_dims, variable_shape)
    mask: Optional[Tensor] = None        # the MEmeL mask (B, L) (fake), if the model has one
    causal: bool = False                 # its attention masks are causal ones
    batch_desc: str = ""


# --------------------------------------------------------------------------- models
def _fake_model(fake: FakeTensorMode, build: Callable[[], nn.Module]) -> nn.Module:
    """Build on the meta device (host-side init code still works), then give every
    parameter and buffer fake storage: no memory is allocated at any size."""
    with torch.device("meta"):
        model = build()
    with fake:
        model.to_empty(device="cpu")
    return model.train()


def _classification_step(x: Tensor, y: Tensor) -> Callable[[nn.Module], Tensor]:
    def step(model: nn.Module) -> Tensor:
        return nn.functional.cross_entropy(model(x).float(), y)

    return step


def swin_tiny(fake: FakeTensorMode, batch: int) -> Workload:
    import timm

    model = _fake_model(fake, lambda: timm.create_model("swin_tiny_patch4_window7_224", pretrained=False))
    modules = dict(model.named_modules())
    taps = {name: modules[name] for name in timm_default_taps(model)}
    with fake:
        x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))
    return Workload("swin-t", model, taps, _classification_step(x, y), (batch, 14, 14, 384), {},
                    batch_desc=f"{batch} x 224^2")


def bert_base(fake: FakeTensorMode, batch: int, seq: int = 128) -> Workload:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(num_labels=2)
    config._attn_implementation = "sdpa"
    model = _fake_model(fake, lambda: BertForSequenceClassification(config))
    layers = model.bert.encoder.layer
    taps = {f"bert.encoder.layer.{i}": layers[i] for i in middle_blocks(len(layers))}
    with fake:
        ids = torch.randint(0, config.vocab_size, (batch, seq))
        mask = torch.ones(batch, seq, dtype=torch.long)
        y = torch.randint(0, 2, (batch,))

    def step(m: nn.Module) -> Tensor:
        return nn.functional.cross_entropy(m(input_ids=ids, attention_mask=mask).logits.float(), y)

    return Workload("bert-base", model, taps, step, (batch, seq, config.hidden_size), {"variable_shape": True},
                    mask=mask, batch_desc=f"{batch} x {seq}")


def pythia(fake: FakeTensorMode, preset: str, batch: int, placements: tuple[str, ...] = ("all", "mid2"),
           seq: int = 2048) -> list[Workload]:
    """One workload per tap placement ("all" layers, "mid2": the two middle ones), sharing one model."""
    from transformers import GPTNeoXForCausalLM

    from memel_lightning.models.causal_lm import gpt_neox_config

    config = gpt_neox_config(preset)
    config._attn_implementation = "sdpa"
    model = _fake_model(fake, lambda: GPTNeoXForCausalLM(config))
    layers = model.gpt_neox.layers
    n = len(layers)
    with fake:
        ids = torch.randint(0, config.vocab_size, (batch, seq + 1))

    def step(m: nn.Module) -> Tensor:
        logits = m(input_ids=ids[:, :-1], use_cache=False).logits
        return nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())

    works = []
    for placement in placements:
        if placement not in ("all", "mid2"):
            raise ValueError(f"unknown tap placement {placement!r}; choose 'all' or 'mid2'")
        chosen = range(n) if placement == "all" else [n // 2 - 1, n // 2]
        taps = {f"gpt_neox.layers.{i}.mlp.act": layers[i].mlp.act for i in chosen}
        works.append(Workload(f"{preset}/{placement}", model, taps, step, (batch, seq, config.intermediate_size),
                              {"reduce_dims": [0]}, batch_desc=f"{batch} x {seq}", causal=True))
    return works


PYTHIA_BATCH = {"pythia-70m": 8, "pythia-410m": 4, "pythia-2.8b": 1}
MODELS = ["swin-t", "bert-base", "pythia-70m", "pythia-410m", "pythia-2.8b"]


def workloads(name: str, fake: FakeTensorMode, batch: Optional[int] = None,
              seq: Optional[int] = None) -> list[Workload]:
    """The workload(s) of one model name (Pythia: both placements); ``batch``/``seq`` override."""
    if name == "swin-t":
        return [swin_tiny(fake, batch or 128)]
    if name == "bert-base":
        return [bert_base(fake, batch or 32, seq or 128)]
    if name in PYTHIA_BATCH:
        return pythia(fake, name, batch or PYTHIA_BATCH[name], seq=seq or 2048)
    if name == "pythia-tiny":  # 2 layers of 64: a smoke test of the whole script in seconds
        return pythia(fake, "tiny", batch or 2, seq=seq or 64)
    raise ValueError(f"unknown model {name!r}; choose from {MODELS + ['pythia-tiny']}")


# --------------------------------------------------------------------------- attaching
def _first_tensor_hook(memel: MEmeL, mask: Optional[Tensor]):
    # A plain forward hook that replaces the tap's output (the first element of a tuple),
    # as MEmeLCallback does; it becomes the core's public attach() once that exists.
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (memel(output[0], mask),) + tuple(output[1:])
        return memel(output, mask)

    return hook


def make_memel(options: dict[str, Any], tap_shape: tuple[int, ...], dtype: torch.dtype,
               with_mask: bool) -> MEmeL:
    """A MEmeL past its late start, warmed up on one small *real* batch (one sample of
    the tap's per-sample shape: statistics sized, moving threshold started), so that
    the counted step is a steady-state one."""
    memel = MEmeL(late_start=0, **options).train()
    z = torch.randn((1,) + tuple(tap_shape[1:]), dtype=dtype)
    memel(z, torch.ones(z.shape[:2], dtype=torch.bool) if with_mask else None)
    return memel


def _set_recording_off(memels: list[MEmeL]) -> None:
    for m in memels:
        if hasattr(m, "begin_step"):
            m.begin_step(record=False)
        else:
            m.record_metrics = False


@dataclass
class Measured:
    """Counts and predicted times of one model x method."""

    model: str
    method: str
    taps: int
    batch: str
    tap_elements: int
    records: list[OpRecord]
    wall_s: float

    def select(self, region: str) -> list[OpRecord]:
        return [r for r in self.records if (r.region == INHIBITION) == (region == INHIBITION)]


def measure(work: Workload, method: Optional[str], fake: FakeTensorMode, dtype: str = "bf16") -> Measured:
    """One forward+backward of ``work`` with ``method``'s MEmeL on every tap (None: no taps)."""
    t0 = time.perf_counter()
    act_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    counter = DispatchCounter(causal_masks=work.causal)
    handles, memels = [], []
    if method is not None:
        # Every tap of a workload has the same shape: warm one MEmeL, copy its state to the others.
        warm = make_memel({**METHODS[method], **work.memel_options}, work.tap_shape, act_dtype,
                          work.mask is not None)
        for name, module in work.taps.items():
            memel = copy.deepcopy(warm)
            memel.name = name
            memels.append(memel)
            handles += counter.attribute(memel, INHIBITION)
            handles.append(module.register_forward_hook(_first_tensor_hook(memel, work.mask)))
    _set_recording_off(memels)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()
    try:
        # a fused kernel of the fast path (inhibition/fused.py) is one kernel, as compiled on a GPU
        with fake, fused_kernels_as_one(counter), counter:
            with autocast:
                loss = work.step(work.model)
            loss.backward()
            with counter.region(INHIBITION):
                for m in memels:
                    if hasattr(m, "end_step"):
                        m.end_step()
    finally:
        for h in handles:
            h.remove()
        for p in work.model.parameters():
            p.grad = None
    n_el = 1
    for s in work.tap_shape:
        n_el *= s
    return Measured(work.name, method or "none", len(work.taps), work.batch_desc, n_el * len(work.taps),
                    counter.records, time.perf_counter() - t0)


# --------------------------------------------------------------------------- report
@dataclass
class Row:
    model: str
    method: str
    taps: int
    batch: str
    model_kernels: int
    model_gb: float
    model_tflop: float
    model_ms: float
    inh_kernels: int
    inh_gb: float
    inh_bytes_per_el: float
    inh_ms: float
    overhead: float
    overhead_additive: float


def summarize(m: Measured, hw: Hardware) -> Row:
    model, inh = m.select("model"), m.select(INHIBITION)

    def total(rs: list[OpRecord], additive: bool = False) -> float:
        return sum(hw.op_time(r, additive) for r in rs)

    inh_bytes = sum(r.bytes_read + r.bytes_written for r in inh)
    return Row(
        model=m.model, method=m.method, taps=m.taps, batch=m.batch,
        model_kernels=sum(r.kernels for r in model),
        model_gb=sum(r.bytes_read + r.bytes_written for r in model) / 1e9,
        model_tflop=sum(r.flops for r in model) / 1e12,
        model_ms=1e3 * total(model),
        inh_kernels=sum(r.kernels for r in inh),
        inh_gb=inh_bytes / 1e9,
        inh_bytes_per_el=inh_bytes / max(m.tap_elements, 1),
        inh_ms=1e3 * total(inh),
        overhead=100 * total(inh) / total(model),
        overhead_additive=100 * total(inh, True) / total(model, True),
    )


HEADER = ["model/taps", "method", "taps", "batch", "model launches", "model GB", "model TFLOP", "model ms",
          "inh. launches", "inh. GB", "inh. B/elem", "inh. ms", "overhead", "overhead (additive)"]


def _cells(r: Row) -> list[str]:
    return [r.model, r.method, str(r.taps), r.batch, str(r.model_kernels), f"{r.model_gb:.2f}",
            f"{r.model_tflop:.2f}", f"{r.model_ms:.2f}", str(r.inh_kernels), f"{r.inh_gb:.3f}",
            f"{r.inh_bytes_per_el:.1f}", f"{r.inh_ms:.3f}", f"{r.overhead:.2f}%", f"{r.overhead_additive:.2f}%"]


def format_table(rows: list[Row], markdown: bool = False) -> str:
    cells = [HEADER] + [_cells(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(c) + " |" for c in cells]
        lines.insert(1, "|" + "|".join(" --- " for _ in HEADER) + "|")
        return "\n".join(lines)
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    return "\n".join("  ".join(c[i].rjust(widths[i]) if i > 1 else c[i].ljust(widths[i])
                               for i in range(len(HEADER))) for c in cells)


def assumptions(hw: Hardware, dtype: str) -> str:
    precision = "bf16 autocast (CPU policy)" if dtype == "bf16" else "float32, no autocast"
    return (f"forward+backward only (no optimizer step); {precision}; {hw.describe()}; "
            "per op time = max(bytes/BW, FLOPs/peak, launch floor), 'additive' = bytes/BW or FLOPs/peak "
            "+ launch; no caches, no overlap; methods past late start, no metrics recorded; "
            f"memel = {METHODS['memel']}; l2e = {METHODS['l2e']}; torch {torch.__version__}")


def breakdown(m: Measured, hw: Hardware, top: int = 12) -> str:
    """The inhibition's ops of one tap, most expensive first: launches, bytes, predicted us."""
    per_op: dict[tuple[str, str], list[float]] = {}
    for r in m.select(INHIBITION):
        if r.kernels:
            acc = per_op.setdefault((r.phase, r.op), [0, 0, 0.0])
            acc[0] += r.kernels
            acc[1] += r.bytes_read + r.bytes_written
            acc[2] += hw.op_time(r)
    rows = sorted(per_op.items(), key=lambda kv: -kv[1][2])
    lines = [f"  {m.model} {m.method}, per tap: {'phase':<8} {'op':<28} {'launches':>8} {'MB':>9} {'us':>8}"]
    for (phase, op), (k, b, t) in rows[:top]:
        lines.append(f"  {'':<{len(m.model) + len(m.method) + 10}} {phase:<8} {op:<28} {k / m.taps:>8.1f} "
                     f"{b / m.taps / 1e6:>9.2f} {t / m.taps * 1e6:>8.1f}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS + ["pythia-tiny"])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--batch", type=int, default=None, help="override every model's batch (sequences/images)")
    p.add_argument("--seq", type=int, default=None, help="override the sequence length (BERT, Pythia)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--hbm-eff", type=float, default=0.8)
    p.add_argument("--mm-eff", type=float, default=0.6)
    p.add_argument("--launch-us", type=float, default=4.0)
    p.add_argument("--markdown", metavar="FILE", default=None, help="also write the table as markdown")
    p.add_argument("--breakdown", action="store_true", help="also print the inhibition's costliest ops per tap")
    args = p.parse_args(argv)
    for flag, value in (("--hbm-eff", args.hbm_eff), ("--mm-eff", args.mm_eff)):
        if not 0.0 < value <= 1.0:
            p.error(f"{flag} must be in (0, 1], got {value}")
    if args.launch_us < 0:
        p.error(f"--launch-us must be >= 0, got {args.launch_us}")
    hw = Hardware(hbm_eff=args.hbm_eff, mm_eff=args.mm_eff, launch_s=args.launch_us * 1e-6)
    torch.manual_seed(0)
    rows: list[Row] = []
    t0 = time.perf_counter()
    for name in args.models:
        fake = FakeTensorMode(allow_non_fake_inputs=True)
        for work in workloads(name, fake, args.batch, args.seq):
            for method in args.methods:
                measured = measure(work, method, fake, args.dtype)
                rows.append(summarize(measured, hw))
                print(format_table(rows[-1:]).splitlines()[-1], flush=True)
                if args.breakdown:
                    print(breakdown(measured, hw), flush=True)
    table = format_table(rows)
    note = assumptions(hw, args.dtype)
    print(f"\n{table}\n\nAssumptions: {note}\n(counted in {time.perf_counter() - t0:.0f} s)")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(format_table(rows, markdown=True) + f"\n\nAssumptions: {note}\n")
    return rows


if __name__ == "__main__":
    main()
