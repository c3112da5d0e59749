"""End to end on the CPU: ``alpha train --symbio --symbio-config <file>`` runs a search."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.config import SHIPPED_CORPUS

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_search_from_the_cli(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text(SHIPPED_CORPUS.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    cfg = tmp_path / "symbio.json"
    cfg.write_text(
        json.dumps(
            {
                "populationSize": 4,
                "generations": 2,
                "stepsPerCandidate": 30,
                "metricsInterval": 10,
                "mutationRate": 0.5,
                "confirmSeeds": 2,
            }
        )  # fmt: skip
    )
    run_dir, lake = tmp_path / "run", tmp_path / "lake"
    cmd = [
        sys.executable, "-m", "flows.cli", "train", "--symbio", "--symbio-config", str(cfg),
        "--data", str(data), "--device", "cpu", "--dim", "32", "--heads", "2", "--layers", "1",
        "--block", "32", "--batch", "8", "--lr", "1e-3", "--eval-iters", "2",
        "--eval-interval", "15", "--checkpoint-interval", "30", "--sample-tokens", "0", "--run-dir", str(run_dir), "--lake", str(lake),
    ]  # fmt: skip
    env = {**os.environ, "ALPHA_SEARCH_PROBE_STEPS": "3", "ALPHA_SEARCH_SLOTS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "estimated search time" in proc.stdout  # printed before the search starts
    assert proc.stdout.index("estimated search time") < proc.stdout.index("[g0-c00")

    # -- artifacts
    summary = json.loads((run_dir / "symbio-summary.json").read_text())
    lines = [json.loads(x) for x in (run_dir / "symbio-candidates.jsonl").open()]
    report = (run_dir / "symbio-report.md").read_text()
    assert summary["mode"] == "ffn-activation-search" and summary["status"] == "completed"
    assert summary["config"]["symbio"]["populationSize"] == 4
    assert summary["config"]["train"]["steps_per_candidate"] == 30
    search = [x for x in lines if x["role"] == "search"]
    confirm = [x for x in lines if x["role"] == "confirm"]
    assert [x["generation"] for x in search] == [0] * 4 + [1] * 2  # halving: 4 -> 2
    assert len(summary["final_population"]) == 2
    assert all(v is not None and math.isfinite(v) for v in (x["final_val_loss"] for x in lines))
    assert {x["activation"] for x in search[:4]} == {"gelu", "relu", "silu", "swiglu"}
    assert len({x["seed"] for x in search[:4]}) == 1  # common random numbers
    for x in search[4:]:  # survivors continue generation 0's checkpoints
        assert x["parent_ids"][0] in {y["candidate_id"] for y in search[:4]}
        assert x["mutation_ops"][0] in ("continue",) or x["mutation_ops"][0].startswith("exploit:")
        assert (x["inherited_steps"], x["steps"], x["total_steps"]) == (30, 30, 60)
    # confirmation: the pick, the baseline (swiglu) and gelu, 2 paired seeds x 60 steps, test split
    arms = {x["activation"] for x in confirm}
    assert {"swiglu", "gelu"} <= arms and len(confirm) == 2 * len(arms)
    assert all(x["steps"] == 60 and x["test_loss"] is not None for x in confirm)
    winner = summary["winner"]
    assert winner["confirmed"] and winner["activation"] in arms and winner["n_seeds"] == 2
    assert winner["test_loss_mean"] == min(
        a["test_loss_mean"] for a in summary["confirmation"]["arms"] if a["n"]
    )
    assert [x for x in lines if x["is_winner"]] == [
        x for x in lines if x["candidate_id"] == winner["candidate_id"]
    ]
    assert summary["compute"]["total_steps"] == 4 * 30 + 2 * 30 + len(confirm) * 60
    assert "## Confirmation" in report and "95%" in report and "## Compute" in report
    assert proc.stdout.strip().splitlines()[-1].startswith("  lake")  # footer printed
    assert f"winner      {winner['activation']}" in proc.stdout

    # -- the lake
    from storage import reader
    from storage.lake import open_lake

    lk = open_lake(str(lake))
    run = reader.list_runs(lk).to_dicts()
    assert len(run) == 1 and run[0]["symbio_mode"] == "ffn-activation-search"
    assert run[0]["status"] == "completed"
    assert json.loads(run[0]["symbio_winner"])["activation"] == winner["activation"]
    rid = run[0]["run_id"]
    m = reader.run_metrics(lk, rid)
    total = summary["compute"]["total_steps"]
    assert m.height == total and m["step"].n_unique() == total  # offsets keep steps unique
    cols = ["symbio_candidate_id", "symbio_candidate_activation", "symbio_generation",
            "architecture_diversity", "activation_distribution"]  # fmt: skip
    assert all(m[c].null_count() == 0 for c in cols)
    assert m["symbio_candidate_id"].n_unique() == len(lines)
    g1 = m.filter(m["symbio_generation"] == 1)
    assert g1["population_entropy"].null_count() == 0  # the parents' fitness entropy
    evaluated = m.drop_nulls("val_loss")["symbio_candidate_id"].unique()
    assert evaluated.len() == len(lines)  # every candidate was evaluated before ranking
    cands = reader.search_candidates(lk, rid)
    assert cands.height == len(lines) and cands["is_winner"].sum() == 1
