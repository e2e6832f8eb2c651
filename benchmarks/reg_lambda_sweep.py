"""Sweep the regulariser's weight on the L2E demo, scaled down to minutes on a CPU.

Trains ``configs/pythia_l2e_demo.yaml``'s model (GPT-NeoX "tiny-4l" on the Python
documentation text, moving threshold 2 %, every layer's MLP activation tapped, every
token a sample) for ``--steps`` steps per setting, one thread, seed 0, and prints per
setting the validation loss at the end (20 batches) and the mean over the last 5
logged steps of the taps' ``mono_ratio`` (share of neurons whose batch-max phi
exceeds 9), ``phi_max`` and ``selected_frac``. ``none`` is the baseline (statistics
and selection, no inhibition). The default ``reg_lambda`` of the log form was chosen
with it as the largest weight whose validation loss stays within 1 % of the baseline
(docs/method.md §5.2).

    OMP_NUM_THREADS=1 python benchmarks/reg_lambda_sweep.py                 # ~15 min
    OMP_NUM_THREADS=1 python benchmarks/reg_lambda_sweep.py --settings log:1e-3 none:0
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

from memel_lightning import MEmeLCallback  # noqa: E402
from memel_lightning.inhibition import MEmeLConfig  # noqa: E402

DEFAULT_SETTINGS = ["none:0", "log:1e-4", "log:1e-3", "log:1e-2", "log:1e-1", "quadratic:1e-3"]
TAP_METRICS = ("mono_ratio", "phi_max", "selected_frac")


class LastTapMetrics(pl.Callback):
    """The logged ``memel/<tap>/<metric>`` means over taps, at every logged step."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        cm = trainer.callback_metrics
        row = {}
        for metric in TAP_METRICS:
            values = [float(v) for k, v in cm.items() if k.startswith("memel/") and k.endswith("/" + metric)
                      and k.count("/") == 2]
            if values:
                row[metric] = sum(values) / len(values)
        if row and (not self.rows or row != self.rows[-1]):
            self.rows.append(row)


def run(form: str, lam: float, steps: int) -> dict:
    from memel_lightning.data import TextDataModule
    from memel_lightning.models import CausalLM

    pl.seed_everything(0)
    strategy = dict(strategy="none") if form == "none" else dict(strategy="regularize", reg_form=form, reg_lambda=lam)
    memel = MEmeLConfig(selector="moving_threshold", target_ratio=0.02, reduce_dims=[0], forget_steps=10,
                        late_start=10, **strategy)
    record = LastTapMetrics()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, val_check_interval=steps, check_val_every_n_epoch=None,
        limit_val_batches=20, log_every_n_steps=10, gradient_clip_val=1.0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[MEmeLCallback(taps="default", memel=memel, log_every_n_steps=10, hist_every_n_steps=10**9),
                   record],
    )
    start = time.time()
    trainer.fit(CausalLM(model="tiny-4l", lr=0.001, warmup_ratio=0.05),
                TextDataModule(demo=True, vocab_size=4096, seq_len=128, batch_size=16, val_fraction=0.05))
    last = record.rows[-5:]
    means = {m: sum(r[m] for r in last) / len(last) for m in TAP_METRICS if last and all(m in r for r in last)}
    return dict(form=form, reg_lambda=lam, steps=steps, val_loss=float(trainer.callback_metrics["val_loss"]),
                seconds=round(time.time() - start, 1), **means)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="*", default=DEFAULT_SETTINGS, help="form:lambda (form: none|log|quadratic)")
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for setting in args.settings:
        form, _, lam = setting.partition(":")
        if form not in ("none", "log", "quadratic"):
            parser.error(f"setting {setting!r}: form must be none, log or quadratic")
        rows.append(run(form, float(lam or 0.0), args.steps))
        print(json.dumps(rows[-1]), flush=True)
    base = next((r["val_loss"] for r in rows if r["form"] == "none"), None)
    print("\n| form | reg_lambda | val loss | vs none | mono_ratio | phi_max | selected_frac |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        rel = "" if base is None else f"{100 * (r['val_loss'] / base - 1):+.1f} %"
        print(f"| {r['form']} | {r['reg_lambda']:g} | {r['val_loss']:.3f} | {rel} | {r.get('mono_ratio', float('nan')):.3f} "
              f"| {r.get('phi_max', float('nan')):.1f} | {r.get('selected_frac', float('nan')):.4f} |")


if __name__ == "__main__":
    main()
