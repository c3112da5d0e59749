"""``run_search`` in-process: failing candidates are recorded and the search goes on."""

from __future__ import annotations

import json

import pytest
import torch

from model.config import SHIPPED_CORPUS
from tasks.resolve import resolve_run_config
from tasks.search_runner import run_search, steps_per_candidate

pytestmark = pytest.mark.timeout(240)


def _resolved(tmp_path, symbio: dict, **flags):
    data = tmp_path / "corpus.txt"
    data.write_text(SHIPPED_CORPUS.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    explicit = {
        "symbio": True,
        "symbio_config": {"metricsInterval": 5, **symbio},
        "data": str(data),
        "device": "cpu",
        "dim": 32, "heads": 2, "layers": 1, "block": 32, "batch": 8,
        "lr": 1e-3, "eval_iters": 2, "eval_interval": 5,
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
        {"activationPool": ["gelu", "relu", "swiglu"], "populationSize": 3, "generations": 2,
         "stepsPerCandidate": 8, "mutationRate": 0.0},
    )  # fmt: skip
    outcome = run_search(resolved, use_lake=False, progress=False)

    assert outcome.status == "completed"
    gen0 = {r.activation: r for r in outcome.generations[0].ranked}
    assert gen0["gelu"].ok and gen0["gelu"].rank == 1
    # NaN losses end as "no finite validation loss" (or as the error of a hook that
    # could not digest the NaN step): either way a one-line reason is recorded
    assert gen0["relu"].status == "failed" and gen0["relu"].failure_reason
    assert gen0["swiglu"].status == "failed" and "out of memory" in gen0["swiglu"].failure_reason
    assert gen0["relu"].fitness is None and gen0["swiglu"].fitness is None  # the worst
    assert {gen0["relu"].rank, gen0["swiglu"].rank} == {2, 3}
    # generation 1 was bred from the one survivor and trained
    gen1 = outcome.generations[1].ranked
    assert [r.activation for r in gen1] == ["gelu"] * 3 and all(r.ok for r in gen1)
    assert outcome.winner["activation"] == "gelu"

    lines = [json.loads(x) for x in (resolved.run_dir / "symbio-candidates.jsonl").open()]
    assert len(lines) == 6
    failed = [x for x in lines if x["status"] == "failed"]
    assert {x["activation"] for x in failed} == {"relu", "swiglu"}
    assert all(x["failure_reason"] and x["fitness"] is None for x in failed)
    report = (resolved.run_dir / "symbio-report.md").read_text()
    assert "failed: RuntimeError: CUDA out of memory" in report


def test_a_seeded_search_is_reproducible(tmp_path, monkeypatch):
    """Same seed, one slot: same lineage and the same losses, candidate by candidate."""
    monkeypatch.setenv("ALPHA_SEARCH_PROBE_STEPS", "0")
    symbio = {"activationPool": ["gelu", "silu"], "populationSize": 2, "generations": 2,
              "stepsPerCandidate": 5, "mutationRate": 0.5, "selectionStrategy": "tournament",
              "tournamentK": 2}  # fmt: skip
    traces = []
    for i in range(2):
        (tmp_path / f"r{i}").mkdir()
        out = run_search(_resolved(tmp_path / f"r{i}", symbio), use_lake=False, progress=False)
        traces.append(
            [
                (r.candidate.candidate_id, r.activation, r.candidate.mutation_ops, r.best_val_loss)
                for g in out.generations
                for r in g.ranked
            ]  # fmt: skip
        )
    assert traces[0] == traces[1]
    assert all(t[3] is not None for t in traces[0])


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
        {"activationPool": ["gelu", "silu"], "populationSize": 2, "generations": 1,
         "stepsPerCandidate": 4},
    )  # fmt: skip
    seen = Seen()
    outcome = run_search(resolved, use_lake=False, progress=False, extra_hooks=(seen,))

    assert outcome.status == "completed"
    assert len(seen.rows) == 8
    assert {r["symbio_candidate_activation"] for r in seen.rows} == {"gelu", "silu"}
    assert all("cusum_alerts" in r for r in seen.rows)
