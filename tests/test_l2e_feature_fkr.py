"""The labelled False Killing Rate state (Eq. 3-4): constructed streams and a float64 reference."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from memel_lightning.inhibition.feature_fkr import FeatureFKR
from memel_lightning.inhibition.moments import RunningMoments

C, F, N = 4, 12, 96


def _stream_fkr(own_label: bool, steps: int = 120, seed: int = 0) -> float:
    """FKR over the second half of a stream where spikes (the only extreme values) of
    neuron j come from inputs of label j % C (own_label) or from inputs of any label."""
    g = torch.Generator().manual_seed(seed)
    moments = RunningMoments(forget_steps=10)
    fkr = FeatureFKR(forget_steps=10)
    false_total = kills_total = 0.0
    owner = torch.arange(F) % C
    for step in range(steps):
        labels = torch.randint(0, C, (N,), generator=g)
        z = torch.rand(N, F, generator=g) * 2 - 1  # bounded noise: no extreme value by chance
        spike = torch.rand(N, F, generator=g) < 0.15
        if own_label:
            spike &= labels[:, None] == owner[None, :]
        z = torch.where(spike, z + 12.0, z)
        moments.update(z)
        phi = (z - moments.mean) ** 2 / (moments.var + 0.01 * moments.var.mean())
        selected = phi > 4.0
        false, kills = fkr(phi, selected, labels)
        if step >= steps // 2:
            false_total += float(false)
            kills_total += float(kills)
    assert kills_total > 500  # the spikes are selected
    return false_total / kills_total


def test_fkr_is_zero_when_each_neurons_extremes_come_from_its_own_label():
    assert _stream_fkr(own_label=True) == 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_fkr_is_one_minus_one_over_c_when_extremes_come_from_random_labels(seed):
    assert _stream_fkr(own_label=False, seed=seed) == pytest.approx(1 - 1 / C, abs=0.05)


def test_l_star_is_the_label_of_largest_mean_phi_not_of_largest_mass():
    fkr = FeatureFKR()
    # label 0: many values of phi 1 (mass 10); label 1: one value of phi 5 (mass 5, mean 5)
    phi = torch.tensor([[1.0]] * 10 + [[5.0]])
    labels = torch.tensor([0] * 10 + [1])
    fkr.update(phi, labels)
    l_star, known = fkr.feature()
    assert l_star.tolist() == [1] and known.tolist() == [True]


class Float64Reference:
    """The state update written out directly, in float64 numpy."""

    def __init__(self, forget_steps: int) -> None:
        self.nf = forget_steps
        self.mass = np.zeros((0, 0))
        self.count = np.zeros((0, 0))
        self.updates = 0

    def step(self, phi, selected, labels, mask):
        n, f = phi.shape
        if labels.ndim == 1:
            labels = np.repeat(labels[:, None], f, axis=1)
        counts = self.kills(selected, labels, mask)
        c = max(self.mass.shape[0], labels.max() + 1)
        mass, count = np.zeros((c, f)), np.zeros((c, f))
        mass[: self.mass.shape[0], : self.mass.shape[1]] = self.mass
        count[: self.count.shape[0], : self.count.shape[1]] = self.count
        g = self.nf / (self.nf + 1) if self.updates >= self.nf else 1.0
        mass *= g
        count *= g
        for i in range(n):
            for j in range(f):
                if labels[i, j] >= 0 and mask[i, j]:
                    mass[labels[i, j], j] += phi[i, j]
                    count[labels[i, j], j] += 1
        self.mass, self.count, self.updates = mass, count, self.updates + 1
        return counts

    def kills(self, selected, labels, mask):
        mass, count = self.mass, self.count
        c = mass.shape[0]
        n, f = selected.shape
        false = kills = 0
        for j in range(min(f, mass.shape[1])):
            means = [mass[l, j] / count[l, j] if count[l, j] > 0 else -np.inf for l in range(c)]
            if not any(count[:, j] > 0):
                continue
            l_star = int(np.argmax(means))
            for i in range(n):
                if selected[i, j] and mask[i, j] and labels[i, j] >= 0:
                    kills += 1
                    false += labels[i, j] != l_star
        return false, kills


@pytest.mark.parametrize("per_value", [False, True])
def test_state_update_matches_a_float64_reference(per_value):
    rng = np.random.default_rng(3)
    nf = 3
    ours, ref = FeatureFKR(forget_steps=nf), Float64Reference(nf)
    for step in range(8):
        n, f = 10, 5
        phi = rng.exponential(size=(n, f)) * (1 + np.arange(f))
        top = 3 if step < 4 else 5  # the label axis grows mid-stream
        labels = rng.integers(-1, top, size=(n, f) if per_value else (n,))
        mask = rng.random((n, f)) > 0.2
        selected = rng.random((n, f)) > 0.7
        false, kills = ours(torch.tensor(phi, dtype=torch.float32), torch.tensor(selected),
                            torch.tensor(labels), torch.tensor(mask))
        rf, rk = ref.step(phi, selected, labels, mask)  # kills judged before the merge
        assert (float(false), float(kills)) == (rf, rk)
        np.testing.assert_allclose(ours.mass.numpy(), ref.mass, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ours.count.numpy(), ref.count, rtol=1e-6)


def test_state_dict_round_trip_and_unlabelled_values():
    a = FeatureFKR(forget_steps=2)
    phi = torch.rand(6, 3)
    a.update(phi, torch.tensor([0, 1, 2, -100, 1, 0]))
    b = FeatureFKR(forget_steps=2)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.mass, a.mass) and torch.equal(b.count, a.count) and int(b.updates) == 1
    assert float(a.count.sum()) == 5 * 3  # the -100 row is unlabelled
    sel = torch.ones(6, 3, dtype=torch.bool)
    _, kills = a.count_kills(sel, torch.tensor([0, 1, 2, -100, 1, 0]))
    assert float(kills) == 15


def test_num_labels_ignores_larger_labels_without_a_sync():
    fkr = FeatureFKR(num_labels=2)
    fkr.update(torch.ones(3, 2), torch.tensor([0, 1, 5]))
    assert fkr.shape == (2, 2) and float(fkr.count.sum()) == 4


def test_bad_labels_raise_one_line_errors():
    fkr = FeatureFKR(name="t")
    with pytest.raises(TypeError, match="feature labels must be integers"):
        fkr.update(torch.rand(3, 2), torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="match neither the samples"):
        fkr.update(torch.rand(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="forget_steps"):
        FeatureFKR(forget_steps=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(7)
    fkr = FeatureFKR(forget_steps=2, sync_dist=True)
    for _ in range(4):
        phi, labels = torch.rand(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
        # each rank merges its half of the global batch; rank 1 sees an extra label
        half = slice(0, 4) if rank == 0 else slice(4, 8)
        lab = labels[half] if rank == 0 else torch.where(labels[half] == 2, 3, labels[half])
        fkr.update(phi[half], lab)
    torch.save({"mass": fkr.mass, "count": fkr.count}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_ranks_hold_the_state_of_the_global_batch(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    g = torch.Generator().manual_seed(7)
    single = FeatureFKR(forget_steps=2)
    for _ in range(4):
        phi, labels = torch.rand(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
        labels = torch.cat([labels[:4], torch.where(labels[4:] == 2, 3, labels[4:])])
        single.update(phi, labels)
    for r in (r0, r1):
        torch.testing.assert_close(r["mass"], single.mass)
        torch.testing.assert_close(r["count"], single.count)


def test_masked_nan_does_not_leak_and_a_nonfinite_batch_is_skipped():
    fkr = FeatureFKR()
    phi = torch.tensor([[1.0, float("nan")], [2.0, 3.0]])
    mask = torch.tensor([[True, False], [True, True]])
    fkr.update(phi, torch.tensor([0, 1]), mask)
    assert torch.isfinite(fkr.mass).all() and fkr.count.tolist() == [[1.0, 0.0], [1.0, 1.0]]
    before = fkr.mass.clone()
    fkr.update(phi, torch.tensor([0, 1]))  # the NaN is valid: the batch is skipped
    assert torch.equal(fkr.mass, before)


def test_variable_number_of_neurons_fills_the_first_ones():
    """Dynamically padded taps: a batch with fewer neurons than the state merges into the first ones."""
    fkr = FeatureFKR()
    fkr.update(torch.ones(2, 5), torch.tensor([0, 1]))
    fkr.update(torch.full((2, 3), 2.0), torch.tensor([1, 1]))
    assert fkr.shape == (2, 5)
    assert fkr.mass.tolist() == [[1.0] * 5, [5.0, 5.0, 5.0, 1.0, 1.0]]
    false, kills = fkr.count_kills(torch.ones(2, 3, dtype=torch.bool), torch.tensor([0, 0]))
    assert (float(false), float(kills)) == (6.0, 6.0)  # l* = 1 on the first three neurons
