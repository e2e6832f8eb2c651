"""Offline False Killing Rate against the inhibition ratio, per layer (L2E's Figure 6).

On a trained model and a data set whose inputs carry feature labels, for every tapped
layer and every inhibition ratio ``r`` (default 0.5, 1, 2, 3, 5, 10 %), as L2E does
offline on Pythia checkpoints (Eq. 3-4; docs/method.md §6.4, docs/l2e.md):

1. pass 1: the data set's mean ``z_bar_j`` and variance ``S_j^2`` of every neuron
   (float64 sums over all valid samples);
2. pass 2: ``phi = (z - z_bar)^2 / (S^2 + eps * mean_k S_k^2)`` (``eps = 0`` is the
   paper's Eq. 1; the default 0.01 is MEmeL's variance compensation, which does not
   change ``l*`` and keeps dead neurons finite), each neuron's feature
   ``l*_j = argmax_l mean_{inputs of label l} phi_j`` (Eq. 3, via
   :class:`~memel_lightning.inhibition.feature_fkr.FeatureFKR` without forgetting), and
   the layer's threshold ``tau_r``: the ``(1 - r)`` quantile of phi over the layer's
   (input, neuron) pairs (estimated on an evenly strided sample of at most
   ``quantile_samples`` values);
3. pass 3: at each ``tau_r`` the kills (valid labelled pairs with ``phi >= tau_r``),
   false kills (label != ``l*_j``), ``FKR = false / kills`` (Eq. 4) and the fraction
   actually selected (``selected_frac``, which the table reports next to ``r``).

Rows ``"all"`` pool the kills of every layer at each ratio. :func:`write_fkr_curve`
writes ``fkr_curve.csv`` and ``fkr_curve.png`` (FKR vs ratio, one line per layer).

Example:
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    >>> data = [(torch.randn(16, 4), torch.randint(0, 2, (16,))) for _ in range(4)]
    >>> rows = fkr_curve(net, data, ["1"], inputs=lambda b: b[0], labels=lambda b: b[1], ratios=(0.1,))
    >>> [(r.tap, r.ratio) for r in rows]
    [('1', 0.1), ('all', 0.1)]
"""
from __future__ import annotations

import argparse
import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..inhibition.feature_fkr import FeatureFKR

RATIOS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.10)


@dataclass
class FKRPoint:
    """One layer at one inhibition ratio."""

    tap: str
    ratio: float
    tau: float
    selected_frac: float
    kills: int
    false_kills: int
    fkr: float


def as_rows(z: Tensor, reduce_dims: Sequence[int] = ()) -> Tensor:
    """``(B, *S)`` -> ``(samples, neurons)``: the batch and the ``reduce_dims`` axes of ``S``
    become samples (as MEmeL lays out a tap, docs/method.md §1)."""
    pooled = [1 + d for d in sorted(reduce_dims)]
    kept = [a for a in range(1, z.dim()) if a not in pooled]
    zp = z.permute([0] + pooled + kept)
    n = int(np.prod([z.shape[a] for a in [0] + pooled]))
    return zp.reshape(n, -1)


def expand_labels(labels: Tensor, z: Tensor, reduce_dims: Sequence[int] = ()) -> Tensor:
    """Labels over a prefix of ``z``'s axes (``(B,)``, ``(B, L)``...) -> per value ``(N, F)``."""
    if labels.dim() > z.dim() or tuple(labels.shape) != tuple(z.shape[: labels.dim()]):
        raise ValueError(f"labels of shape {tuple(labels.shape)} do not match the leading axes of {tuple(z.shape)}")
    full = labels.reshape(tuple(labels.shape) + (1,) * (z.dim() - labels.dim())).expand(z.shape)
    return as_rows(full, reduce_dims)


def _capture(model: nn.Module, taps: Sequence[str]):
    modules = dict(model.named_modules())
    missing = [t for t in taps if t not in modules]
    if missing:
        raise KeyError(f"no module named {missing} in {type(model).__name__}")
    store: dict[str, Tensor] = {}
    handles = []
    for name in taps:
        def hook(_m, _a, out, name=name):
            store[name] = (out[0] if isinstance(out, tuple) else out).detach()
        handles.append(modules[name].register_forward_hook(hook))
    return store, handles


def _batches(model, loader, taps, inputs, labels, reduce_dims, max_batches, device):
    """Yield ``{tap: (values (N, F) float64, labels (N, F))}`` per batch."""
    store, handles = _capture(model, taps)
    try:
        with torch.no_grad():
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                store.clear()
                x = inputs(batch)
                args = x if isinstance(x, tuple) else (x,)
                model(*(a.to(device) if isinstance(a, Tensor) else a for a in args))
                lab = labels(batch)
                out = {}
                for tap in taps:
                    z = store[tap]
                    out[tap] = (as_rows(z, reduce_dims).double(), expand_labels(lab.to(z.device), z, reduce_dims))
                yield out
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def fkr_curve(
    model: nn.Module,
    loader: Iterable[Any],
    taps: Sequence[str],
    inputs: Callable[[Any], Any],
    labels: Callable[[Any], Tensor],
    ratios: Sequence[float] = RATIOS,
    eps: float = 0.01,
    reduce_dims: Sequence[int] = (),
    max_batches: Optional[int] = None,
    quantile_samples: int = 1 << 22,
) -> list[FKRPoint]:
    """FKR at every ratio for every tap, and pooled over taps (``tap="all"``); see the module doc.

    ``inputs(batch)`` is what the model is called with (a tuple: positional arguments),
    ``labels(batch)`` the integer
    feature labels over a prefix of each tap's output axes (negative: unlabelled, e.g.
    padding or document separators)."""
    if not ratios or any(not 0 < r < 1 for r in ratios):
        raise ValueError(f"ratios must be in (0, 1), got {list(ratios)}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    args = (model, loader, taps, inputs, labels, reduce_dims, max_batches, device)
    try:
        # pass 1: data-set mean and variance of every neuron
        sums: dict[str, list[Tensor]] = {}
        for out in _batches(*args):
            for tap, (x, lab) in out.items():
                valid = (lab >= 0).double()
                s = sums.setdefault(tap, [0.0, 0.0, 0.0])
                s[0] = s[0] + valid.sum(0)
                s[1] = s[1] + (x * valid).sum(0)
                s[2] = s[2] + (x * x * valid).sum(0)
        if not sums:
            raise ValueError("the loader yielded no batch")
        scale = {}
        for tap, (n, s1, s2) in sums.items():
            mean = s1 / n.clamp(min=1)
            var = ((s2 - n * mean**2) / (n - 1).clamp(min=1)).clamp(min=0)
            scale[tap] = (mean, var + eps * var.mean())
        # pass 2: l* (Eq. 3) and the thresholds
        features = {tap: FeatureFKR(forget_steps=1 << 62) for tap in taps}
        samples: dict[str, list[np.ndarray]] = {tap: [] for tap in taps}
        for out in _batches(*args):
            for tap, (x, lab) in out.items():
                mean, denom = scale[tap]
                phi = (x - mean) ** 2 / denom
                valid = lab >= 0
                features[tap].update(phi, lab, valid)
                values = phi[valid]
                stride = max(1, int(np.ceil(values.numel() * len(sums) / quantile_samples)))
                samples[tap].append(values[::stride].float().cpu().numpy())
        taus = {tap: np.quantile(np.concatenate(samples[tap]), [1 - r for r in ratios]) for tap in taps}
        l_star = {tap: features[tap].feature() for tap in taps}
        # pass 3: kills and false kills at every threshold (Eq. 4)
        kills = {tap: np.zeros(len(ratios), dtype=np.int64) for tap in taps}
        false = {tap: np.zeros(len(ratios), dtype=np.int64) for tap in taps}
        valid_count = {tap: 0 for tap in taps}
        for out in _batches(*args):
            for tap, (x, lab) in out.items():
                mean, denom = scale[tap]
                phi = (x - mean) ** 2 / denom
                feat, known = (t.to(phi.device) for t in l_star[tap])
                valid = (lab >= 0) & known[None, :]
                wrong = lab != feat[None, :]
                valid_count[tap] += int(valid.sum())
                for k, tau in enumerate(taus[tap]):
                    hit = valid & (phi >= float(tau))
                    kills[tap][k] += int(hit.sum())
                    false[tap][k] += int((hit & wrong).sum())
    finally:
        model.train(was_training)
    rows: list[FKRPoint] = []
    for tap in taps:
        for k, r in enumerate(ratios):
            rows.append(FKRPoint(tap, float(r), float(taus[tap][k]), kills[tap][k] / max(valid_count[tap], 1),
                                 int(kills[tap][k]), int(false[tap][k]), false[tap][k] / max(kills[tap][k], 1)))
    total_valid = max(sum(valid_count.values()), 1)
    for k, r in enumerate(ratios):
        kk = sum(int(kills[t][k]) for t in taps)
        ff = sum(int(false[t][k]) for t in taps)
        rows.append(FKRPoint("all", float(r), float("nan"), kk / total_valid, kk, ff, ff / max(kk, 1)))
    return rows


def write_fkr_curve(rows: Sequence[FKRPoint], out: str | Path, title: str = "") -> dict[str, Path]:
    """``fkr_curve.csv`` (one row per tap and ratio) and ``fkr_curve.png`` in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / "fkr_curve.csv", out / "fkr_curve.png"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(FKRPoint.__dataclass_fields__))
        writer.writeheader()
        for r in rows:
            writer.writerow(asdict(r))
    fig, ax = plt.subplots(figsize=(6, 4))
    taps = list(dict.fromkeys(r.tap for r in rows))
    for tap in taps:
        pts = [r for r in rows if r.tap == tap]
        style = dict(color="black", linewidth=2.5) if tap == "all" else dict(alpha=0.8)
        ax.plot([100 * p.ratio for p in pts], [p.fkr for p in pts], marker="o", label=tap, **style)
    ax.set_xlabel("inhibition ratio (%)")
    ax.set_ylabel("False Killing Rate")
    ax.set_title(title or "FKR vs inhibition ratio (L2E Eq. 4)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return {"csv": csv_path, "png": png_path}


def format_table(rows: Sequence[FKRPoint]) -> str:
    lines = ["| tap | ratio | tau | selected | kills | false kills | FKR |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r.tap}` | {100 * r.ratio:g} % | {r.tau:.3g} | {100 * r.selected_frac:.2f} % | "
                     f"{r.kills} | {r.false_kills} | {r.fkr:.3f} |")
    return "\n".join(lines)


def _batch_inputs(model: nn.Module) -> Callable[[Any], Any]:
    """How the command calls a LightningModule on a batch of its data module."""
    def inputs(batch: Any) -> Any:
        if isinstance(batch, dict):
            if hasattr(model, "memel_target_ratio"):  # CausalLM: read L tokens, predict L
                return batch["input_ids"][:, :-1]
            return tuple(batch.get(k) for k in ("input_ids", "attention_mask", "token_type_ids"))
        return batch[0] if isinstance(batch, (tuple, list)) else batch
    return inputs


def code_language_loader(data: Any, seq_len: int, batch_size: int, seed: int = 0, docs_per_language: int = 64):
    """Windows of the code-language set tokenised with ``data``'s tokenizer (a TextDataModule)."""
    from torch.utils.data import DataLoader

    from ..data.code_languages import LabelledWindows, code_language_documents, encode_labelled
    from ..data.text import EOS

    data.prepare_data()
    tok = data.load_tokenizer()
    ids, labels = encode_labelled(tok, code_language_documents(seed, docs_per_language), tok.token_to_id(EOS))
    return DataLoader(LabelledWindows(ids, labels, seq_len), batch_size=batch_size)


def fkr_curve_main(argv: Optional[Sequence[str]] = None, *, cli_main: Callable[..., Any]) -> dict[str, Path]:
    """``python cli.py fkr_curve --ckpt_path CKPT [--config CONFIG] [--labels code_languages]``
    (``cli_main``: the command line's entry point, handed in: analysis never imports the CLI)."""
    from ..inhibition import resolve_taps
    from ..run_record import CHECKPOINT_KEY
    from .cli import _memel_settings, build_from_config, check_pairing

    parser = argparse.ArgumentParser(prog="cli.py fkr_curve", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint of the run")
    parser.add_argument("--config", default=None, help="the run's config (default: the one saved in the checkpoint)")
    parser.add_argument("--out", default=None, help="output folder (default: <ckpt folder>/fkr_curve)")
    parser.add_argument("--labels", choices=["model", "code_languages"], default="model",
                        help="model: the validation set with the model's memel_labels(batch); code_languages: "
                        "the code-language set tokenised with the run's tokenizer (causal LMs)")
    parser.add_argument("--taps", nargs="+", default=None, help="glob patterns (default: the model's memel_taps())")
    parser.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS))
    parser.add_argument("--eps", type=float, default=None, help="default: the run's, else 0.01")
    parser.add_argument("--max_batches", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=8, help="batch size of the code-language windows")
    args = parser.parse_args(argv)

    if not Path(args.ckpt_path).is_file():
        raise SystemExit(f"error: checkpoint {args.ckpt_path} does not exist")
    checkpoint = torch.load(args.ckpt_path, map_location="cpu", weights_only=False)
    config = args.config or checkpoint.get(CHECKPOINT_KEY)
    if config is None:
        raise SystemExit(f"error: {args.ckpt_path} carries no config: pass --config RUN/config.yaml")
    model, data, cli = build_from_config(config, cli_main=cli_main)
    if args.config is not None:
        check_pairing(cli, checkpoint, args.config, args.ckpt_path)
    settings = _memel_settings(cli)
    bind = getattr(data, "bind", None)
    if callable(bind):  # e.g. GLUE: the data's task builds the model's network
        bind(model)
    model.load_state_dict(checkpoint["state_dict"])
    taps = resolve_taps(model, args.taps or model.memel_taps())
    if args.labels == "code_languages":
        loader = code_language_loader(data, int(getattr(data, "seq_len", 128)), args.batch_size)
        get_labels = lambda b: b["feature_labels"][:, :-1]  # noqa: E731  (the input tokens' labels)
    else:
        get_labels = getattr(model, "memel_labels", None)
        if get_labels is None:
            raise SystemExit(f"error: {type(model).__name__} defines no memel_labels(batch); "
                             "use --labels code_languages")
        data.setup("validate")
        loader = data.val_dataloader()
    eps = args.eps if args.eps is not None else float(settings.get("eps", 0.01))
    rows = fkr_curve(model, loader, taps, inputs=_batch_inputs(model), labels=get_labels, ratios=args.ratios,
                     eps=eps, reduce_dims=tuple(settings.get("reduce_dims", ()) or ()), max_batches=args.max_batches)
    out = Path(args.out or Path(args.ckpt_path).parent / "fkr_curve")
    paths = write_fkr_curve(rows, out, title=f"FKR vs inhibition ratio: {Path(args.ckpt_path).name}")
    print(format_table(rows))
    return paths
