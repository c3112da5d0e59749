"""Symbio metrics: weight entropy, effective rank, free energy, population
entropy, activation distribution, complexity, instability, fitness, MI (PRD §8.3–8.9, §14.3)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from symbio.config import SymbioConfig
from symbio.metrics import (
    InstabilityTracker,
    MIProbe,
    SymbioMetricsCollector,
    activation_distribution,
    architecture_diversity,
    binned_mi,
    complexity_score,
    effective_rank,
    fitness,
    free_energy,
    instability_score,
    loss_window_entropy,
    model_activation_distribution,
    population_entropy,
    weight_entropy,
)
from symbio.metrics.weights import matrix_effective_rank


def test_weight_entropy_is_higher_for_random_than_for_structured_weights() -> None:
    torch.manual_seed(0)
    random_w = [torch.randn(64, 64), torch.randn(64)]
    structured = [torch.ones(64, 64), torch.zeros(64)]  # two values only
    sparse = [torch.zeros(64, 64).index_fill_(1, torch.tensor([3]), 1.0)]
    h_random = weight_entropy(random_w)
    assert 4.0 < h_random <= math.log2(100)
    assert weight_entropy(structured) < 1.0 < h_random
    assert weight_entropy(sparse) < 1.0
    assert weight_entropy([torch.zeros(5)]) == 0.0


def test_weight_entropy_equals_the_histogram_of_the_flattened_vector() -> None:
    torch.manual_seed(1)
    params = [torch.randn(30, 7), torch.randn(11) * 3]
    flat = torch.cat([p.flatten() for p in params]).abs()
    counts = torch.histc(flat, bins=100, min=0, max=float(flat.max()))
    p = counts[counts > 0] / counts.sum()
    assert weight_entropy(params) == pytest.approx(float(-(p * torch.log2(p)).sum()), rel=1e-6)


def test_weight_entropy_of_a_module_uses_its_parameters() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    assert weight_entropy(model.parameters()) > 0


@pytest.mark.parametrize(("m", "n"), [(8, 8), (32, 12), (5, 40)])
def test_effective_rank_is_within_one_and_min_dim(m: int, n: int) -> None:
    torch.manual_seed(m * n)
    w = torch.randn(m, n)
    r = matrix_effective_rank(w)
    assert 1 <= r <= min(m, n)
    s = torch.linalg.svdvals(w.double())
    assert r == int((s > 0.01 * s.max()).sum())  # matches a plain SVD


def test_effective_rank_counts_singular_values_above_one_percent() -> None:
    u, _ = torch.linalg.qr(torch.randn(20, 20, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))
    s = torch.tensor([10.0, 5, 1, 0.5, 0.2, 0.11, 0.09, 0.01, 0.0, 0.0], dtype=torch.float64)
    w = u[:, :10] @ torch.diag(s) @ v.T
    assert matrix_effective_rank(w) == 6  # > 0.1 = 1 % of 10
    assert matrix_effective_rank(torch.outer(torch.randn(9), torch.randn(7))) == 1
    assert matrix_effective_rank(torch.zeros(4, 4)) == 0


def test_effective_rank_averages_the_linear_layers() -> None:
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 8))
    with torch.no_grad():
        model[0].weight.copy_(torch.outer(torch.randn(16), torch.randn(16)))  # rank 1
        model[1].weight.copy_(torch.eye(16)[:8])  # rank 8
    assert effective_rank(model) == pytest.approx(4.5)
    assert effective_rank([model[1].weight, torch.randn(3)]) == 8


def test_free_energy_combines_loss_and_entropy() -> None:
    assert free_energy(2.0, 5.0, 0.01) == pytest.approx(2.05)
    assert free_energy(2.0, 5.0, 0.0) == 2.0


def test_population_entropy_is_max_for_equal_fitness_and_falls_with_dominance() -> None:
    assert population_entropy([1.0] * 6) == pytest.approx(math.log(6))
    assert population_entropy([0.0, 0.0, 50.0]) < 1e-6
    spread = population_entropy([-1.0, -2.0, -3.0])
    assert 0 < spread < math.log(3)
    assert population_entropy([1.0]) == 0.0
    assert population_entropy([1.0, float("nan"), 1.0]) == pytest.approx(math.log(2))


def test_loss_window_entropy_treats_lower_loss_as_fitter() -> None:
    assert loss_window_entropy([2.0, 3.0]) == pytest.approx(population_entropy([-2.0, -3.0]))
    assert loss_window_entropy([2.0] * 10) == pytest.approx(math.log(10))


def test_activation_distribution_is_a_json_count_map() -> None:
    assert json.loads(model_activation_distribution("swiglu", 6)) == {"swiglu": 6}
    assert activation_distribution(["silu", "gelu", "silu"]) == '{"gelu":1,"silu":2}'
    assert architecture_diversity(["gelu", "gelu", "silu", "relu"]) == 0.75
    assert architecture_diversity([]) == 0.0


def test_complexity_modes_each_give_valid_scores() -> None:
    assert complexity_score("params", 1000) == pytest.approx(0.5)
    assert complexity_score("params", 10**6) < complexity_score("params", 10**3)
    assert complexity_score("entropy", 2**20, weight_entropy=5.0) == pytest.approx(5.0 / 20)
    assert complexity_score("mdl", 1024, effective_rank=16.0) == pytest.approx(16 * 10 / 1024)
    for mode, kw in [
        ("params", {}),
        ("entropy", {"weight_entropy": 3.0}),
        ("mdl", {"effective_rank": 4.0}),
    ]:
        score = complexity_score(mode, 50_000, **kw)
        assert math.isfinite(score) and score > 0
    with pytest.raises(ValueError):
        complexity_score("entropy", 100)
    with pytest.raises(ValueError):
        complexity_score("bits", 100)


def test_fitness_ranks_known_candidates() -> None:
    a = fitness(1.5)
    b = fitness(1.8)
    assert a > b  # lower val loss wins with the default weights
    assert fitness(None) == -math.inf and fitness(float("nan")) == -math.inf
    # throughput only matters when perfWeight > 0
    fast = fitness(1.8, tokens_per_sec_mean=1e6, perf_weight=0.1)
    slow = fitness(1.5, tokens_per_sec_mean=1e3, perf_weight=0.1)
    assert fast == pytest.approx(-1.8 + 0.1 * math.log(1e6))
    assert fast > slow
    # instability only matters when stabilityWeight > 0
    assert fitness(1.5, instability=2.0) == fitness(1.5)
    assert fitness(1.5, instability=2.0, stability_weight=1.0) < fitness(1.8, stability_weight=1.0)
    ranked = sorted(
        {"gelu": 1.70, "relu": 1.90, "silu": 1.65, "swiglu": 1.60}.items(),
        key=lambda kv: fitness(kv[1]),
        reverse=True,
    )
    assert [name for name, _ in ranked] == ["swiglu", "silu", "gelu", "relu"]


def test_instability_score_components() -> None:
    calm = instability_score(
        [1.0] * 10, [1.0] * 10, [None] * 10, [100.0] * 10, spike_threshold=5.0, warmup_steps=2
    )
    assert calm.score == 0.0
    rough = instability_score(
        [1.0, 20.0, 1.0, float("nan")],
        [1.0, 0.1, 0.4, 1.0],
        [None, "spike_skip", None, "nan_skip"],
        [100.0, 100.0, 50.0, 150.0],
        spike_threshold=5.0,
        warmup_steps=1,
    )
    assert rough.spike_rate == 0.25
    assert rough.clip_saturation == 0.5
    assert rough.skip_rate == 0.5
    assert rough.step_time_cv == pytest.approx(50.0 / 100.0)  # std of 100,50,150 / mean
    assert rough.score == pytest.approx(0.25 + 0.5 + 0.5 + 0.5)


def test_instability_tracker_matches_the_series_function() -> None:
    series = [
        (1.0 + i % 3, 1.0 - 0.2 * (i % 4), "nan_skip" if i == 5 else None, 10.0 + i)
        for i in range(20)
    ]
    tracker = InstabilityTracker(2.5, 3)
    for g, c, e, ms in series:
        tracker.add(g, c, e, ms)
    columns = list(zip(*series, strict=True))
    assert tracker.result() == instability_score(*columns, spike_threshold=2.5, warmup_steps=3)


def test_binned_mi_finds_a_dependent_neuron_and_ignores_noise() -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (4000,))
    t = torch.stack([labels.float() + 0.01 * torch.randn(4000), torch.randn(4000)], dim=1)
    mi = binned_mi(t, labels, 30)
    assert mi[0] == pytest.approx(2.0, abs=0.05)  # H(labels) = 2 bits
    assert mi[1] < 0.05


class _TinyLM(nn.Module):
    def __init__(self, vocab: int = 16, dim: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(dim, dim), nn.Tanh()) for _ in range(2))
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_mi_probe_measures_the_last_block_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = _TinyLM().train()
    x = torch.randint(0, 16, (8, 32))
    y = torch.roll(x, -1, dims=1)
    probe = MIProbe(x, y, num_bins=10)
    out = probe.measure(model)
    assert set(out) == {"mi_input_repr", "mi_repr_output", "mi_compression"}
    assert 0 < out["mi_input_repr"] <= math.log2(10) + 1e-9
    assert 0 <= out["mi_repr_output"] <= math.log2(10) + 1e-9
    assert out["mi_compression"] == pytest.approx(out["mi_repr_output"] / out["mi_input_repr"])
    assert model.training, "measure must restore train mode"
    assert not model.blocks[-1]._forward_hooks, "the capture hook must be removed"
    assert probe.measure(model) == out  # fixed probe, fixed neurons: deterministic


def test_collector_computes_only_the_enabled_metrics() -> None:
    model = _TinyLM()
    cfg = SymbioConfig(metrics_interval=5, track_effective_rank=False, complexity_mode="params")
    col = SymbioMetricsCollector(cfg, param_count=1000, activation="silu", n_layer=2)
    for loss in [3.0, 2.9, 2.8]:
        col.observe_loss(loss)
    out = col.collect(model, loss=2.8)
    assert "effective_rank" not in out and "mi_input_repr" not in out
    assert out["complexity_score"] == pytest.approx(0.5)
    assert out["free_energy"] == pytest.approx(2.8 + 0.01 * out["weight_entropy"])
    assert out["activation_distribution"] == '{"silu":2}'
    assert 0 < out["population_entropy"] <= math.log(3)
    full = SymbioMetricsCollector(
        SymbioConfig(track_mi_profiles=True, complexity_mode="mdl"),
        param_count=1000,
        activation="gelu",
        n_layer=2,
        probe=MIProbe(torch.randint(0, 16, (2, 8)), torch.randint(0, 16, (2, 8))),
    ).collect(model, loss=1.0)
    assert {"effective_rank", "mi_input_repr", "mi_repr_output"} <= set(full)
    assert full["complexity_score"] == pytest.approx(
        complexity_score("mdl", 1000, effective_rank=full["effective_rank"])
    )


def test_matmul_only_rank_counting_matches_the_eigensolver() -> None:
    """The CUDA path (matrix sign by Newton-Schulz) agrees with eigvalsh, here on CPU."""
    torch.manual_seed(0)
    for trial in range(24):
        m, n = torch.randint(2, 48, (2,)).tolist()
        k = min(m, n)
        if trial % 3 == 0:
            w = torch.randn(m, n)
        elif trial % 3 == 1:
            w = torch.randn(m, 3) @ torch.randn(3, n)
        else:  # spread spectrum, no value exactly at the 1 % threshold
            u, _ = torch.linalg.qr(torch.randn(m, k, dtype=torch.float64))
            v, _ = torch.linalg.qr(torch.randn(n, k, dtype=torch.float64))
            w = u @ torch.diag(torch.logspace(0, -4.1, k, dtype=torch.float64)) @ v.T
        assert matrix_effective_rank(w, method="sign") == matrix_effective_rank(w, method="eigh")
    assert matrix_effective_rank(torch.zeros(6, 4), method="sign") == 0
    model = nn.Sequential(nn.Linear(24, 40), nn.Linear(40, 24), nn.Linear(24, 24))
    assert effective_rank(model, method="sign") == effective_rank(model, method="eigh")
    with pytest.raises(ValueError):
        effective_rank(model, method="svd-ish")


# -- device-tensor versions (no host sync) and the matrix-sign rank --------------------


def test_tensor_versions_equal_the_float_versions() -> None:
    from symbio.metrics.weights import effective_rank_tensor, weight_entropy_tensor

    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(24, 40), nn.GELU(), nn.Linear(40, 12))
    h = weight_entropy_tensor(model.parameters())
    r = effective_rank_tensor(model)
    assert h.dim() == 0 and r.dim() == 0 and r.dtype == torch.float64
    assert float(h) == weight_entropy(model.parameters())
    assert float(r) == effective_rank(model) == 18.0  # both full rank: (24 + 12) / 2
    assert float(weight_entropy_tensor([])) == 0.0
    assert float(effective_rank_tensor([torch.randn(3)])) == 0.0


def test_weight_entropy_is_zero_for_non_finite_weights() -> None:
    assert weight_entropy([torch.tensor([1.0, float("inf")])]) == 0.0
    assert weight_entropy([torch.tensor([1.0, float("nan"), 2.0])]) == 0.0


def test_weight_entropy_counts_are_exact_across_histogram_chunks(monkeypatch) -> None:
    import symbio.metrics.weights as weights

    torch.manual_seed(5)
    params = [torch.randn(40, 30), torch.rand(77)]
    whole = weight_entropy(params)
    monkeypatch.setattr(weights, "_HIST_CHUNK", 7)  # many histc calls, counts summed
    assert weight_entropy(params) == pytest.approx(whole, abs=1e-12)


def _with_singular_values(s: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = s.numel()
    u, _ = torch.linalg.qr(torch.randn(m, k, dtype=torch.float64, generator=g))
    v, _ = torch.linalg.qr(torch.randn(k, k, dtype=torch.float64, generator=g))
    return u @ torch.diag(s) @ v.T


@pytest.mark.parametrize("offset", [-1e-4, 1e-4])
def test_sign_rank_agrees_with_eigh_next_to_the_threshold(offset: float) -> None:
    # a spread spectrum (1 .. 1e-4 of the top) with one value 1e-4 (relative) from 1 %
    s = torch.logspace(0, -4, 48, dtype=torch.float64)
    s = s[(s - 0.01).abs() > 0.002]
    s = torch.cat([s, torch.tensor([0.01 * (1 + offset)], dtype=torch.float64)])
    w = _with_singular_values(s, 60, seed=7)
    expected = int((s > 0.01).sum())
    assert matrix_effective_rank(w, method="eigh") == expected
    assert matrix_effective_rank(w, method="sign") == expected


def test_sign_rank_matches_eigh_on_a_model_and_in_batches() -> None:
    torch.manual_seed(6)
    mats = [torch.randn(32, 48), torch.randn(48, 32), torch.randn(32, 32) * 5]
    mats.append(torch.outer(torch.randn(32), torch.randn(32)))  # rank 1
    mats.append(torch.zeros(32, 32))  # rank 0
    assert effective_rank(mats, method="sign") == effective_rank(mats, method="eigh")
    from symbio.metrics.weights import SIGN_SCHEDULE

    assert len(SIGN_SCHEDULE) < 32  # the scaled iteration: about half plain Newton-Schulz


def test_collector_uses_weight_metrics_passed_in() -> None:
    cfg = SymbioConfig(metrics_interval=5, track_mi_profiles=False, free_energy_beta=0.5)
    coll = SymbioMetricsCollector(cfg, param_count=1000, activation="gelu", n_layer=2)
    model = nn.Sequential(nn.Linear(8, 8))
    out = coll.collect(model, 2.0, weights=(3.0, 7.0))
    assert out["weight_entropy"] == 3.0 and out["effective_rank"] == 7.0
    assert out["free_energy"] == pytest.approx(2.0 + 0.5 * 3.0)
    direct = coll.collect(model, 2.0)
    assert direct["weight_entropy"] == weight_entropy(model.parameters())
    assert direct["effective_rank"] == effective_rank(model) == 8.0
