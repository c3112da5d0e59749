"""The search with each generation (and the confirmation) trained as one batched population.

The same tiny seeded search (CPU, fp32) runs with ``batched="on"`` and ``batched="off"``:
candidates, losses, winner, ``metrics.jsonl`` and lake rows must agree; only the way
the candidates were trained differs (one ``train_population`` call per generation).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from model.config import SHIPPED_CORPUS
from model.errors import ConfigError
from storage.lake import open_lake
from storage.reader import run_metrics, search_candidates
from symbio.search.executors import BatchedExecutor
from tasks.resolve import resolve_run_config
from tasks.search_runner import resolve_batched, run_search

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("one_thread")]
REL = 1e-5


def _resolved(root: Path, corpus: Path):
    # 10 steps: the closest two candidates of a generation are 2.5e-3 apart in val loss,
    # ~1e4 x the paths' fp32 difference, so the ranking cannot flip on rounding
    explicit = {
        "symbio": True,
        "symbio_config": {
            "activationPool": ["gelu", "relu", "swiglu"], "generations": 2,
            "stepsPerCandidate": 10, "mutationRate": 1.0, "confirmSeeds": 2,
            "metricsInterval": 3,
        },
        "data": str(corpus), "device": "cpu", "dtype": "float32", "dropout": 0.0,
        "dim": 32, "heads": 2, "layers": 1, "block": 32, "batch": 8,
        "lr": 3e-3, "eval_iters": 2, "eval_interval": 3, "sample_tokens": 0,
        "run_dir": str(root / "run"),
    }  # fmt: skip
    return resolve_run_config(explicit)


def _results(outcome) -> dict[str, object]:
    out = {r.candidate.candidate_id: r for g in outcome.generations for r in g.ranked}
    out.update((r.candidate.candidate_id, r) for r in outcome.confirmation.results)
    return out


def _jsonl(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_batched_search_equals_the_one_at_a_time_search(tmp_path, monkeypatch, capsys):
    import model.population

    monkeypatch.setenv("ALPHA_SEARCH_PROBE_STEPS", "0")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SHIPPED_CORPUS.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    sizes: list[int] = []
    real = model.population.train_population

    def spy(cfgs, *args, **kwargs):
        sizes.append(len(cfgs))
        return real(cfgs, *args, **kwargs)

    monkeypatch.setattr(model.population, "train_population", spy)
    runs = {}
    for mode in ("off", "on"):
        resolved = _resolved(tmp_path / mode, corpus)
        lake = str(tmp_path / mode / "lake")
        outcome = run_search(resolved, lake_url=lake, progress=False, batched=mode)
        runs[mode] = (resolved, outcome, lake, capsys.readouterr().out)
        if mode == "off":
            assert sizes == []  # one train() per candidate
    (r_off, off, lake_off, out_off), (r_on, on, lake_on, out_on) = runs["off"], runs["on"]

    assert off.status == on.status == "completed"
    assert (off.batched, on.batched) == (False, True) and on.summary["batched"] is True
    assert "slots do not apply" in out_on and "slots do not apply" not in out_off
    n_confirm = len(on.confirmation.results)
    assert sizes == [3, 2, n_confirm] and n_confirm >= 4  # gen 0, gen 1, arms x 2 seeds

    a, b = _results(off), _results(on)
    assert list(a) == list(b)  # same candidates, same ranking order, same lineage
    for cid, x in a.items():
        y = b[cid]
        assert (y.status, y.candidate, y.steps) == (x.status, x.candidate, x.steps), cid
        for key in ("final_val_loss", "best_val_loss", "final_loss", "test_loss"):
            vx, vy = getattr(x, key), getattr(y, key)
            assert (vx is None) == (vy is None), (cid, key)
            if vx is not None:
                assert vy == pytest.approx(vx, rel=REL), (cid, key)
        assert y.fitness == pytest.approx(x.fitness, rel=REL) if x.fitness else y.fitness is None
    assert any("swap:" in op for r in b.values() for op in r.candidate.mutation_ops)
    assert all(r.test_loss is not None for r in on.confirmation.results)
    assert on.winner["activation"] == off.winner["activation"]
    assert on.winner["arm"] == off.winner["arm"]
    assert on.summary["recommendation"] == off.summary["recommendation"]

    for cid, x in a.items():  # metrics.jsonl per candidate: same keys, same steps
        rows_x, rows_y = _jsonl(Path(x.run_dir)), _jsonl(Path(b[cid].run_dir))
        assert [r["step"] for r in rows_y] == [r["step"] for r in rows_x], cid
        assert [set(r) for r in rows_y] == [set(r) for r in rows_x], cid
        assert [r["event"] for r in rows_y] == [r["event"] for r in rows_x], cid

    m_off = run_metrics(open_lake(lake_off), r_off.run_id)
    m_on = run_metrics(open_lake(lake_on), r_on.run_id)
    assert m_on.height == m_off.height > 0
    for cid in a:
        sx = m_off.filter(m_off["symbio_candidate_id"] == cid).sort("step")
        sy = m_on.filter(m_on["symbio_candidate_id"] == cid).sort("step")
        assert sy["step"].to_list() == sx["step"].to_list() and sx.height, cid
        filled_x = {c for c in sx.columns if sx[c].null_count() < sx.height}
        filled_y = {c for c in sy.columns if sy[c].null_count() < sy.height}
        assert filled_y == filled_x, cid
    c_off = search_candidates(open_lake(lake_off), r_off.run_id)
    c_on = search_candidates(open_lake(lake_on), r_on.run_id)
    assert sorted(c_on["candidate_id"].to_list()) == sorted(c_off["candidate_id"].to_list())


def test_batched_setting_resolution(monkeypatch):
    monkeypatch.delenv("ALPHA_SEARCH_BATCHED", raising=False)
    assert resolve_batched("cuda") is True and resolve_batched("cpu") is False  # auto
    assert resolve_batched("cpu", "on") is True and resolve_batched("cuda", "off") is False
    monkeypatch.setenv("ALPHA_SEARCH_BATCHED", "on")
    assert resolve_batched("cpu") is True
    assert resolve_batched("cpu", "auto") is False  # the argument wins over the environment
    monkeypatch.setenv("ALPHA_SEARCH_BATCHED", "yes")
    with pytest.raises(ConfigError, match="ALPHA_SEARCH_BATCHED: must be one of auto, on, off"):
        resolve_batched("cpu")
    with pytest.raises(ConfigError, match="search batched: must be one of"):
        resolve_batched("cpu", "2")


def test_batched_executor_hands_the_list_to_train_many():
    calls: list[str] = []

    class Many:
        def __call__(self, x):
            calls.append(f"one {x}")
            return x * 10

        def train_many(self, items):
            calls.append(f"many {len(items)}")
            return [x * 10 for (x,) in items]

    ex = BatchedExecutor()
    assert ex.map("train_candidate", Many(), [(1,), (2,), (3,)], ["a", "b", "c"]) == [10, 20, 30]
    assert ex.map("train_candidate", Many(), [(4,)], ["d"]) == [40]  # one item: per item
    assert ex.map("train_candidate", lambda x: -x, [(5,), (6,)], ["e", "f"]) == [-5, -6]
    assert calls == ["many 3", "one 4"]

    class Short(Many):
        def train_many(self, items):
            return [0]

    with pytest.raises(RuntimeError, match="1 results for 2 items"):
        ex.map("train_candidate", Short(), [(1,), (2,)], ["a", "b"])


class _Faults:
    """An extra hook (shared by every candidate): NaN weights for relu, a crash for swiglu,
    optionally Ctrl-C; all through the candidate's own ``trainer.model`` and hook calls,
    so both paths see the very same faults."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.interrupt_at = interrupt_at

    def on_train_start(self, trainer) -> None:
        pass

    def on_step_end(self, trainer, row) -> None:
        import torch

        act, local = trainer.model_config.ffn_activation, row["step"] - trainer.step_offset
        if self.interrupt_at is not None and local == self.interrupt_at and act == "relu":
            raise KeyboardInterrupt
        if act == "relu" and local == 3:
            with torch.no_grad():
                trainer.model.wte.weight[0, 0] = float("nan")
        if act == "swiglu" and local == 2:
            raise RuntimeError("CUDA out of memory (simulated)")

    def on_train_end(self, trainer, result) -> None:
        pass


def _small(root: Path, corpus: Path):
    resolved = _resolved(root, corpus)
    symbio = resolved.symbio_config.model_copy(
        update={"generations": 1, "steps_per_candidate": 6, "confirm_seeds": 1}
    )
    return dataclasses.replace(resolved, symbio_config=symbio)


def test_failures_and_interrupts_are_the_same_in_both_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("ALPHA_SEARCH_PROBE_STEPS", "0")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SHIPPED_CORPUS.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    seen = {}
    for mode in ("off", "on"):
        resolved = _small(tmp_path / mode, corpus)
        out = run_search(resolved, use_lake=False, progress=False, batched=mode,
                         extra_hooks=(_Faults(),))  # fmt: skip
        seen[mode] = [(cid, r.status, r.failure_reason, r.rank) for cid, r in _results(out).items()]
        assert out.winner is not None and out.winner["activation"] == "gelu"
    assert seen["on"] == seen["off"]
    by_id = {cid: (status, reason) for cid, status, reason, _ in seen["on"]}
    assert by_id["g0-c02"] == ("failed", "RuntimeError: CUDA out of memory (simulated)")
    assert by_id["g0-c01"][0] in ("failed", "stalled") and by_id["g0-c01"][1]  # NaN-skipped
    assert by_id["g0-c00"] == ("ok", None)

    for mode in ("off", "on"):
        resolved = _small(tmp_path / f"stop-{mode}", corpus)
        with pytest.raises(KeyboardInterrupt):
            run_search(resolved, use_lake=False, progress=False, batched=mode,
                       extra_hooks=(_Faults(interrupt_at=2),))  # fmt: skip
        summary = json.loads((Path(resolved.run_dir) / "symbio-summary.json").read_text())
        assert summary["status"] == "cancelled" and summary["generations"] == []
