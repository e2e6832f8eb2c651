"""A direct float64 implementation of docs/method.md §2-§5, written from the formulas and
independent of the code under test. Neurons are handled one by one so that masks
(per-neuron sample counts) follow the definitions literally."""
from __future__ import annotations

import numpy as np
import torch


class ReferenceMoments:
    """docs/method.md §2 for one tap, neuron by neuron, in float64."""

    def __init__(self, num_neurons: int, forget_steps: int = 10) -> None:
        self.nf = forget_steps
        self.mu = np.zeros(num_neurons)
        self.v = np.zeros(num_neurons)
        self.m = np.zeros(num_neurons)  # samples merged so far
        self.c = np.zeros(num_neurons, dtype=int)  # batches merged so far

    def update(self, x: np.ndarray, mask: np.ndarray | None = None) -> None:
        x = np.asarray(x, dtype=np.float64)
        for i in range(x.shape[1]):
            col = x[:, i] if mask is None else x[mask[:, i], i]
            b = len(col)
            if b == 0:
                continue
            mb = col.mean()
            vb = ((col - mb) ** 2).mean()  # biased batch variance
            if self.c[i] == 0:
                mu, v = mb, (vb * b / (b - 1) if b > 1 else 0.0)
            else:
                m = self.m[i] if self.c[i] < self.nf else b * self.nf
                mu_old, v_old = self.mu[i], self.v[i]
                mu = (m * mu_old + b * mb) / (m + b)
                v = m * b * (mu_old - mb) ** 2 / ((m + b - 1) * (m + b)) + (b * vb + (m - 1) * v_old) / (m + b - 1)
            self.mu[i], self.v[i] = mu, v
            self.m[i] += b
            self.c[i] += 1

    def phi(self, x: np.ndarray, eps: float = 0.01) -> np.ndarray:
        """docs/method.md §3: (z - mu)^2 / (v + eps * mean_k v_k) over the neurons seen."""
        seen = self.c > 0
        floor = eps * self.v[seen].mean()
        return (np.asarray(x, dtype=np.float64) - self.mu) ** 2 / (self.v + floor)


def reference_topk(phi: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Per row, every valid value whose phi is >= the k-th largest valid phi of the row."""
    sel = np.zeros(phi.shape, dtype=bool)
    for r in range(phi.shape[0]):
        valid = np.ones(phi.shape[1], dtype=bool) if mask is None else mask[r]
        vals = phi[r][valid]
        if len(vals) == 0:
            continue
        kth = np.sort(vals)[::-1][min(k, len(vals)) - 1]
        sel[r] = valid & (phi[r] >= kth)
    return sel


def reference_strategy(z: torch.Tensor, selected: torch.Tensor, mu: torch.Tensor, strategy: str, delta: float = 1.0):
    """docs/method.md §5 table written literally with detach() as sg(), in float64 autograd."""
    z = z.double()
    mu = mu.double()
    if strategy == "reverse":
        inhibited = -delta * z + (mu + delta * z).detach()
    elif strategy == "mean_nograd":
        inhibited = mu.expand_as(z).detach()
    elif strategy == "mean_passthrough":
        inhibited = z + (mu - z).detach()
    elif strategy == "none":
        inhibited = z
    else:
        raise ValueError(strategy)
    return torch.where(selected, inhibited, z)
