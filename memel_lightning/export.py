"""Export a trained CausalLM checkpoint as a Hugging Face folder (model + tokenizer).

L2E scores its Pythia models on MMLU, BBL and ARC (the paper's Tables 6-7) with an LM
evaluation harness; every such harness loads a Hugging Face folder. ``export_hf``
rebuilds the ``GPTNeoXForCausalLM`` of a :class:`~memel_lightning.models.CausalLM`
Lightning checkpoint (its saved hyper-parameters give the architecture, its
``state_dict`` the weights), and writes it with ``save_pretrained`` together with the
tokenizer the training data was tokenised with, as a ``PreTrainedTokenizerFast``. The
MEmeL taps add no parameter and leave no trace in the model (they are forward hooks
whose statistics live in the callback's state), so the exported model is the plain
network: ``transformers`` reloads it with logits identical to the checkpoint's.

The tokenizer comes from ``tokenizer`` (a ``tokenizer.json`` or a folder holding one)
or else from the checkpoint's saved ``TextDataModule`` hyper-parameters: its
``tokenizer`` setting, or the BPE it trained into its token cache (present on the
machine that prepared the data). A sharded (FSDP) checkpoint directory must first be
consolidated into one file (``python -m lightning.pytorch.utilities.consolidate_checkpoint DIR``).

Example (command line)::

    python cli.py export --ckpt_path runs/pythia_l2e_demo/version_0/checkpoints/last.ckpt --out hf/l2e_demo
    lm_eval --model hf --model_args pretrained=hf/l2e_demo --tasks arc_easy,mmlu --num_fewshot 0
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch

MODEL_PREFIX = "model."


class ExportError(ValueError):
    """The checkpoint cannot be exported (not a CausalLM checkpoint, no tokenizer...)."""


def _load_checkpoint(ckpt_path: Union[str, Path]) -> dict:
    path = Path(ckpt_path)
    if path.is_dir():
        raise ExportError(
            f"{path} is a directory (a sharded checkpoint?); consolidate it into one file first: "
            f"python -m lightning.pytorch.utilities.consolidate_checkpoint {path}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise ExportError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    return ckpt


def build_model(hparams: Mapping[str, Any]):
    """The (randomly initialised) ``GPTNeoXForCausalLM`` a CausalLM with ``hparams`` trained."""
    from transformers import AutoConfig, GPTNeoXForCausalLM

    from .models.causal_lm import gpt_neox_config

    name = hparams.get("model")
    if name is None:
        raise ExportError("the checkpoint's hyper-parameters have no 'model': not a CausalLM checkpoint")
    overrides = dict(hparams.get("config_overrides") or {})
    if os.path.isdir(str(name)):
        config = AutoConfig.from_pretrained(name, local_files_only=True, **overrides)
    else:
        config = gpt_neox_config(str(name), **overrides)
    return GPTNeoXForCausalLM(config)


def _model_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {k[len(MODEL_PREFIX):]: v for k, v in state_dict.items() if k.startswith(MODEL_PREFIX)}
    if not out:
        raise ExportError(f"the checkpoint's state_dict has no '{MODEL_PREFIX}*' weights: not a CausalLM checkpoint")
    return out


def load_tokenizer(ckpt: Mapping[str, Any], tokenizer: Optional[Union[str, Path]] = None):
    """A ``tokenizers.Tokenizer``: ``tokenizer`` if given, else the checkpoint's data module's."""
    from tokenizers import Tokenizer

    if tokenizer is not None:
        path = Path(tokenizer)
        path = path / "tokenizer.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {tokenizer}")
        return Tokenizer.from_file(str(path))
    dm_hparams = ckpt.get("datamodule_hyper_parameters")
    if not dm_hparams:
        raise ExportError("the checkpoint saved no data module settings; pass the tokenizer (--tokenizer PATH)")
    from .data.text import TextDataModule

    params = {k: v for k, v in dict(dm_hparams).items() if not k.startswith("_")}
    try:
        dm = TextDataModule(**params)
        return dm.load_tokenizer()
    except Exception as err:  # no cache on this machine, or a data module of another kind
        raise ExportError(
            f"could not load the training tokenizer from the checkpoint's data module ({err}); "
            "pass it explicitly (--tokenizer PATH)"
        ) from None


def hf_tokenizer(tok, eos: str = "<|endoftext|>"):
    """Wrap a ``tokenizers.Tokenizer`` as a ``PreTrainedTokenizerFast`` (end-of-text as BOS/EOS/UNK/PAD)."""
    from transformers import PreTrainedTokenizerFast

    if tok.token_to_id(eos) is None:
        raise ExportError(f"the tokenizer has no {eos!r} token")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eos, eos_token=eos, unk_token=eos, pad_token=eos)


def export_hf(
    ckpt_path: Union[str, Path],
    out_dir: Union[str, Path],
    tokenizer: Optional[Union[str, Path]] = None,
    dtype: Optional[str] = None,
) -> Path:
    """Write ``out_dir`` (``config.json``, weights, tokenizer files) from a CausalLM checkpoint.

    ``dtype`` ("float32", "bfloat16", "float16") casts the weights; default: as saved.
    Returns ``out_dir``."""
    ckpt = _load_checkpoint(ckpt_path)
    model = build_model(ckpt.get("hyper_parameters") or {})
    state = _model_state(ckpt["state_dict"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    # rotary caches and attention biases are rebuilt buffers, not weights
    missing = [k for k in missing if not k.endswith(("rotary_emb.inv_freq", "attention.bias", "masked_bias"))]
    if missing or unexpected:
        raise ExportError(
            f"the checkpoint's weights do not fit the model its hyper-parameters describe: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    if dtype is not None:
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ExportError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
        model = model.to(getattr(torch, dtype))
    tok = hf_tokenizer(load_tokenizer(ckpt, tokenizer))
    model.config.bos_token_id = model.config.eos_token_id = tok.eos_token_id
    if len(tok) > model.config.vocab_size:
        raise ExportError(f"the tokenizer has {len(tok)} tokens but the model only {model.config.vocab_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def export_main(argv: Sequence[str]) -> Path:
    """``python cli.py export --ckpt_path CKPT --out DIR [--tokenizer PATH] [--dtype bfloat16]``."""
    parser = argparse.ArgumentParser(prog="cli.py export", description=export_hf.__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True, help="a CausalLM Lightning checkpoint (.ckpt)")
    parser.add_argument("--out", required=True, help="the Hugging Face folder to write")
    parser.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the training data module's)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(list(argv))
    out = export_hf(args.ckpt_path, args.out, tokenizer=args.tokenizer, dtype=args.dtype)
    print(f"wrote {out}")
    return out
