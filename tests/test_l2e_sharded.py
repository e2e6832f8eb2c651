"""The sharded path: FSDP2 (Lightning's ModelParallelStrategy) with MEmeL taps, on CPU with gloo."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(tmp_path, kind: str) -> list[dict]:
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "l2e_sharded_worker.py"), str(tmp_path), kind],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def _check(ranks: list[dict]) -> None:
    from memel_lightning.models.causal_lm import CausalLM

    expected = CausalLM("tiny", config_overrides={"vocab_size": 384}).memel_taps()
    for state in ranks:
        assert state["sharded"] and state["world"] == 2
        assert sorted(state["taps"]) == sorted(expected)  # the names as without sharding
    from tests.l2e_sharded_worker import BATCH, SEQ, STEPS

    for name in expected:
        a, b = ranks[0]["taps"][name], ranks[1]["taps"][name]
        assert a == b  # identical statistics and threshold on both ranks
        # every neuron merged every token of both ranks: the global batch
        assert set(a["count"]) == {STEPS * 2 * BATCH * SEQ}


@pytest.mark.slow
def test_fsdp2_taps_resolve_and_statistics_are_those_of_the_global_batch(tmp_path):
    _check(_run(tmp_path, "fsdp2"))


@pytest.mark.gpu
def test_fsdp1_wrapped_names_do_not_matter(tmp_path):
    """Lightning's FSDPStrategy (FSDP1) inserts ``_fsdp_wrapped_module.`` into module names
    when it wraps the model, after the callback has attached its hooks (in ``setup``); the
    hooks stay on the wrapped modules. Lightning refuses FSDPStrategy on CPU: 2 GPUs."""
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    _check(_run(tmp_path, "fsdp1"))
