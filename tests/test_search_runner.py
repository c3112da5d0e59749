"""``run_search`` in-process on tiny real models: failures, health gates, fairness, replay."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from model.config import SHIPPED_CORPUS
from symbio.search.candidate import Candidate
from symbio.search.executors import ThreadExecutor
from symbio.search.loop import population_info
from tasks.resolve import resolve_run_config
from tasks.search_runner import CandidateTrainer, run_search, steps_per_candidate

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("one_thread")]


def _resolved(tmp_path, symbio: dict, **flags):
    data = tmp_path / "corpus.txt"
    data.write_text(SHIPPED_CORPUS.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    explicit = {
        "symbio": True,
        "symbio_config": {"metricsInterval": 5, "confirmSeeds": 2, **symbio},
        "data": str(data),
        "device": "cpu",
        "dim": 32, "heads": 2, "layers": 1, "block": 32, "batch": 8,
        "lr": 3e-3, "eval_iters": 2, "eval_interval": 5, "sample_tokens": 0,
        "run_dir": str(tmp_path / "run"),
        **flags,
    }  # fmt: skip
    return resolve_run_config(explicit)


def test_explicit_iters_sets_steps_per_candidate(tmp_path):
    assert steps_per_candidate(_resolved(tmp_path, {"stepsPerCandidate": 7})) == 7
    assert steps_per_candidate(_resolved(tmp_path, {"stepsPerCandidate": 7}, iters=9)) == 9


def test_failing_candidates_are_recorded_and_the_search_goes_on(tmp_path, monkeypatch):
    """relu made to emit NaN (real NaN losses through the engine) and swiglu crashing."""
    monkeypatch.setenv("ALPHA_SEARCH_PROBE_STEPS", "0")
    real_relu = torch.nn.functional.relu
    monkeypatch.setattr(torch.nn.functional, "relu", lambda x, *a, **k: real_relu(x) * torch.nan)

    def crash(self, x):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    monkeypatch.setattr("model.gpt.SwiGLU.forward", crash)
    resolved = _resolved(
        tmp_path,
        {"activationPool": ["gelu", "relu", "swiglu"], "generations": 2,
         "stepsPerCandidate": 8, "mutationRate": 0.0},
    )  # fmt: skip
    outcome = run_search(resolved, use_lake=False, progress=False)

    assert outcome.status == "completed"
    gen0 = {r.activation: r for r in outcome.generations[0].ranked}
    assert gen0["gelu"].ok and gen0["gelu"].rank == 1
    # NaN losses end unhealthy (stalled: every step NaN-skipped, or the error of a hook
    # that could not digest the NaN step): either way a one-line reason is recorded
    assert gen0["relu"].status in ("failed", "stalled") and gen0["relu"].failure_reason
    assert gen0["swiglu"].status == "failed" and "out of memory" in gen0["swiglu"].failure_reason
    assert gen0["relu"].fitness is None and gen0["swiglu"].fitness is None  # the worst
    assert {gen0["relu"].rank, gen0["swiglu"].rank} == {2, 3}
    # generation 1 continues the one healthy survivor
    (g1,) = outcome.generations[1].ranked
    assert g1.activation == "gelu" and g1.ok and g1.candidate.resume_from == "g0-c00"
    assert (g1.inherited_steps, g1.steps, g1.total_steps) == (8, 8, 16)
    # the baseline (swiglu, from the preset) crashes in confirmation too: never recommended
    assert outcome.winner["activation"] == "gelu" and outcome.winner["confirmed"]
    assert "swiglu failed its confirmation runs" in outcome.summary["recommendation"]

    lines = [json.loads(x) for x in (resolved.run_dir / "symbio-candidates.jsonl").open()]
    assert len(lines) == 4 + 2 * 2  # 3 + 1 search candidates, 2 arms x 2 seeds
    bad = [x for x in lines if x["status"] != "ok"]
    assert {x["activation"] for x in bad} == {"relu", "swiglu"}
    assert all(x["failure_reason"] and x["fitness"] is None for x in bad)
    assert [x["is_winner"] for x in lines].count(True) == 1
    report = (resolved.run_dir / "symbio-report.md").read_text()
    assert "failed: RuntimeError: CUDA out of memory" in report


def test_stalled_and_diverged_candidates_are_never_ok_nor_recommended(tmp_path, monkeypatch):
    """The lr gene over [1e-9, 1e3]: lr 1e-7 never moves the loss, lr 10 diverges."""
    monkeypatch.setenv("ALPHA_SEARCH_PROBE_STEPS", "0")
    resolved = _resolved(
        tmp_path,
        {"activationPool": ["gelu", "relu"], "populationSize": 6, "generations": 2,
         "stepsPerCandidate": 12, "lrGene": True, "lrGeneRange": [1e-9, 1e3],
         "mutationRate": 0.0},
        spike_threshold=0.0, warmup_iters=0,
    )  # fmt: skip
    outcome = run_search(resolved, use_lake=False, progress=False)

    gen0 = outcome.generations[0].ranked
    by_lr = {round(r.candidate.lr, 9): r for r in gen0 if r.activation == "gelu"}
    assert sorted(by_lr) == [1e-7, 1e-3, 10.0]
    slow, fast = by_lr[1e-7], by_lr[10.0]
    assert slow.status == "stalled" and "training loss moved" in slow.failure_reason
    assert fast.status == "failed" and "diverged" in fast.failure_reason
    assert [r.ok for r in gen0] == [True, True, False, False, False, False]  # unhealthy last
    assert all(r.fitness is None for r in gen0[2:])
    assert {round(r.candidate.lr, 9) for r in outcome.generations[1].ranked} == {1e-3}
    assert outcome.winner["lr"] in (None, pytest.approx(1e-3))
    lines = [json.loads(x) for x in (resolved.run_dir / "symbio-candidates.jsonl").open()]
    unhealthy = [x for x in lines if x["status"] != "ok"]
    assert len(unhealthy) == 4 and not any(x["is_winner"] for x in unhealthy)


def test_a_search_whose_every_step_is_skipped_recommends_nothing(tmp_path, monkeypatch):
    """Spike guard on every step (no re-baselining): all stalled, none ok, no winner."""
    monkeypatch.setenv("ALPHA_SEARCH_PROBE_STEPS", "0")
    resolved = _resolved(
        tmp_path, {"activationPool": ["gelu", "swiglu"], "generations": 2, "stepsPerCandidate": 6},
        spike_threshold=1e-9, spike_patience=0,
    )  # fmt: skip
    outcome = run_search(resolved, use_lake=False, progress=False)

    (gen0,) = outcome.generations  # nothing survived to continue
    assert [r.status for r in gen0.ranked] == ["stalled", "stalled"]
    assert all("6/6 steps skipped" in r.failure_reason for r in gen0.ranked)
    assert outcome.status == "failed" and outcome.winner is None
    assert outcome.summary["recommendation"].startswith("No ")


def test_common_random_numbers_on_a_real_model(tmp_path, monkeypatch):
    """Twins (same activation, same seeds) in one generation, trained in two threads at
    once, get identical val losses; every candidate draws the very same training batches."""
    from model.data import TokenData

    drawn: dict[int, list[str]] = {}
    real_get_batch = TokenData.get_batch

    def spy(self, split, batch_size):
        x, y = real_get_batch(self, split, batch_size)
        if split == "train":
            drawn.setdefault(id(self), []).append(hashlib.sha1(x.numpy().tobytes()).hexdigest())
        return x, y

    monkeypatch.setattr(TokenData, "get_batch", spy)
    resolved = _resolved(tmp_path, {"adaptiveBatch": False}, dropout=0.0)
    trainer = CandidateTrainer(
        base=resolved.train, symbio=resolved.symbio_config, run_id="crn", run_dir=tmp_path / "r",
        step_stride=100, sink=None, progress=False, run_meta={},
    )  # fmt: skip
    cands = [
        Candidate(f"g0-c{i:02d}", act, 0, i, i, 5, ("init",), data_seed=6, iters=12, horizon=12)
        for i, act in enumerate(["gelu", "gelu", "relu", "swiglu"])
    ]
    info = population_info(0, cands, None)
    results = ThreadExecutor(2, inline=False).map(
        "train_candidate", trainer, [(c, info) for c in cands], [c.candidate_id for c in cands]
    )
    gelu, twin, relu, swiglu = results
    assert gelu.final_val_loss == twin.final_val_loss and gelu.final_loss == twin.final_loss
    assert relu.final_val_loss != gelu.final_val_loss != swiglu.final_val_loss
    streams = [seq for seq in drawn.values()]
    assert len(streams) == 4 and all(len(s) >= 12 for s in streams)
    assert all(s[:12] == streams[0][:12] for s in streams)  # the same batches, in order


def test_a_seeded_search_is_reproducible(tmp_path, monkeypatch):
    """Same seed, one slot: same lineage and the same losses, candidate by candidate."""
    monkeypatch.setenv("ALPHA_SEARCH_PROBE_STEPS", "0")
    symbio = {"activationPool": ["gelu", "silu", "relu"], "generations": 2,
              "stepsPerCandidate": 5, "mutationRate": 1.0, "selectionStrategy": "tournament",
              "tournamentK": 2, "confirmSeeds": 1}  # fmt: skip
    traces = []
    for i in range(2):
        (tmp_path / f"r{i}").mkdir()
        out = run_search(_resolved(tmp_path / f"r{i}", symbio), use_lake=False, progress=False)
        traces.append(
            [
                (r.candidate.candidate_id, r.activation, r.candidate.mutation_ops, r.final_val_loss)
                for g in out.generations
                for r in g.ranked
            ]
            + [(r.candidate.candidate_id, r.test_loss) for r in out.confirmation.results]
        )
    assert traces[0] == traces[1]
    assert all(t[-1] is not None for t in traces[0])
    ops = [t[2] for t in traces[0] if len(t) == 4 and t[0].startswith("g1")]
    assert ("continue",) in ops and any(o[0].startswith("exploit:") for o in ops)


def test_extra_hooks_see_every_candidates_complete_rows(tmp_path, monkeypatch):
    """Notifiers plug in as extra hooks: they run per candidate, after the symbio fields."""
    from model.hooks import TrainerHook

    class Seen(TrainerHook):
        def __init__(self) -> None:
            self.rows: list[dict] = []

        def on_step_end(self, trainer, row):
            self.rows.append(dict(row))

    monkeypatch.setenv("ALPHA_SEARCH_PROBE_STEPS", "0")
    resolved = _resolved(
        tmp_path,
        {"activationPool": ["gelu", "silu"], "generations": 1, "stepsPerCandidate": 4,
         "confirmSeeds": 1},
        activation="gelu",
    )  # fmt: skip
    seen = Seen()
    outcome = run_search(resolved, use_lake=False, progress=False, extra_hooks=(seen,))

    assert outcome.status == "completed"
    n_conf = len(outcome.confirmation.results)
    assert len(seen.rows) == 2 * 4 + n_conf * 4
    assert {r["symbio_candidate_activation"] for r in seen.rows} == {"gelu", "silu"}
    assert all("cusum_alerts" in r for r in seen.rows)
    assert len({r["step"] for r in seen.rows}) == len(seen.rows)  # unique steps
