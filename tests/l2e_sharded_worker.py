"""Run by tests/test_l2e_sharded.py: a tiny CausalLM, sharded, with the MEmeL callback on 2
processes; every rank writes its taps' statistics.

    python tests/l2e_sharded_worker.py OUT_DIR [fsdp2|fsdp1]

``fsdp2``: Lightning's ModelParallelStrategy (FSDP2, CausalLM.configure_model shards the
layers) on 2 CPU processes with gloo. ``fsdp1``: Lightning's FSDPStrategy, which needs 2
CUDA devices (Lightning refuses FSDPStrategy on CPU).
"""
import json
import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from memel_lightning.callback import MEmeLCallback  # noqa: E402
from memel_lightning.data.text import TextDataModule  # noqa: E402
from memel_lightning.models.causal_lm import CausalLM  # noqa: E402

STEPS, BATCH, SEQ = 3, 2, 16


def main(out: Path, kind: str = "fsdp2") -> None:
    docs = out / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    for i in range(8):
        (docs / f"{i}.txt").write_text(f"def f{i}(x):\n    return x * {i} + {i * i}\n" * 30)
    dm = TextDataModule(files=str(docs / "*.txt"), vocab_size=300, seq_len=SEQ, batch_size=BATCH,
                        val_fraction=0.0, cache_dir=str(out / "cache"))
    lm = CausalLM("tiny", config_overrides={"vocab_size": 384})
    callback = MEmeLCallback(taps="default", sync_stats=True, memel={
        "selector": "moving_threshold", "strategy": "regularize", "reduce_dims": [0], "late_start": 1})
    if kind == "fsdp2":
        accelerator = "cpu"
        strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=False)
    else:
        from lightning.pytorch.strategies import FSDPStrategy
        from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXLayer

        accelerator = "gpu"
        strategy = FSDPStrategy(auto_wrap_policy={GPTNeoXLayer}, use_orig_params=True)
    trainer = pl.Trainer(
        max_steps=STEPS, accelerator=accelerator, devices=2, strategy=strategy,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, callbacks=[callback],
    )
    trainer.fit(lm, datamodule=dm)
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    sharded = isinstance(lm.model, FSDPModule) or any(isinstance(m, FSDP) for m in trainer.strategy.model.modules())
    state = {"sharded": sharded, "world": trainer.world_size, "taps": {}}
    for name in callback.tap_names:
        memel = callback.memel_for(name)
        state["taps"][name] = {
            "mean": memel.moments.mean.cpu().tolist(), "var": memel.moments.var.cpu().tolist(),
            "count": memel.moments.count.cpu().tolist(),
            "tau": float(getattr(memel.selector, "tau", torch.tensor(float("nan")))),
        }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(state))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "fsdp2")
