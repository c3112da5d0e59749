"""The search's artifacts: summary, per-candidate records, Markdown report.

Pure functions over ``GenerationResult``s; the runner writes them to the run
directory (``symbio-summary.json``, ``symbio-candidates.jsonl``,
``symbio-report.md``), the lake (``candidates`` table) and Prefect artifacts.
The winner is *reported*: nothing is applied to later runs automatically.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from symbio.search.candidate import CandidateResult
from symbio.search.loop import GenerationResult, SearchPlan

SEARCH_MODE = "ffn-activation-search"


def pick_winner(generations: Sequence[GenerationResult]) -> CandidateResult | None:
    """The best-ranked candidate of the final generation, if it trained."""
    if not generations or not generations[-1].ranked:
        return None
    best = generations[-1].ranked[0]
    return best if best.ok else None


def candidate_record(
    result: CandidateResult, gen: GenerationResult, winner_id: str | None
) -> dict[str, Any]:
    """One line of ``symbio-candidates.jsonl``."""
    return {
        **result.to_dict(),
        "is_winner": result.candidate.candidate_id == winner_id,
        "architecture_diversity": gen.architecture_diversity,
        "activation_distribution": gen.activation_distribution,
        "population_entropy": _finite_or_none(gen.population_entropy),
    }


def candidate_lake_rows(
    gen: GenerationResult, winner_id: str | None, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Rows of the lake's ``candidates`` table (column names of ``storage.schema``)."""
    now = now or datetime.now(UTC)
    rows = []
    for r in gen.ranked:
        c = r.candidate
        rows.append(
            {
                "candidate_id": c.candidate_id,
                "generation": c.generation,
                "activation": c.activation,
                "parent_ids": json.dumps(list(c.parent_ids)),
                "mutation_ops": json.dumps(list(c.mutation_ops)),
                "status": r.status,
                "failure_reason": r.failure_reason,
                "steps": r.steps,
                "step_offset": r.step_offset,
                "best_val_loss": _finite_or_none(r.best_val_loss),
                "final_loss": _finite_or_none(r.final_loss),
                "fitness": _finite_or_none(r.fitness),
                "instability": _finite_or_none(r.instability),
                "tokens_per_sec": _finite_or_none(r.tokens_per_sec),
                "param_count": r.param_count,
                "rank": r.rank,
                "is_winner": c.candidate_id == winner_id,
                "updated_at": now,
            }
        )
    return rows


def winner_record(winner: CandidateResult | None) -> dict[str, Any] | None:
    """The ``winner`` block of the summary (also ``runs.symbio_winner``)."""
    if winner is None:
        return None
    keys = (
        "candidate_id", "activation", "generation", "best_val_loss", "final_val_loss",
        "final_loss", "fitness", "tokens_per_sec", "instability", "param_count", "rank",
        "run_dir",
    )  # fmt: skip
    rec = winner.to_dict()
    return {k: rec.get(k) for k in keys}


def activation_table(generations: Sequence[GenerationResult]) -> list[dict[str, Any]]:
    """Per activation over the whole search: runs, failures, mean/best val loss, mean tok/s."""
    by_act: dict[str, list[CandidateResult]] = {}
    for gen in generations:
        for r in gen.ranked:
            by_act.setdefault(r.activation, []).append(r)
    rows = []
    for act, rs in by_act.items():
        ok = [r for r in rs if r.ok]
        vals = [r.best_val_loss for r in ok]
        tps = [r.tokens_per_sec for r in ok if r.tokens_per_sec]
        rows.append(
            {
                "activation": act,
                "candidates": len(rs),
                "failed": len(rs) - len(ok),
                "mean_best_val_loss": statistics.fmean(vals) if vals else None,
                "min_best_val_loss": min(vals) if vals else None,
                "mean_tokens_per_sec": statistics.fmean(tps) if tps else None,
            }
        )
    rows.sort(key=lambda r: (r["mean_best_val_loss"] is None, r["mean_best_val_loss"] or 0.0))
    return rows


def build_summary(
    *,
    run_id: str,
    plan: SearchPlan,
    symbio_config: dict[str, Any],
    train_config: dict[str, Any],
    baseline_activation: str,
    generations: Sequence[GenerationResult],
    status: str,
    elapsed_s: float,
    estimate_s: float | None,
) -> dict[str, Any]:
    """The content of ``symbio-summary.json``."""
    winner = pick_winner(generations)
    final = generations[-1] if generations else None
    return {
        "run_id": run_id,
        "mode": SEARCH_MODE,
        "status": status,
        "strategy": plan.strategy,
        "baseline_activation": baseline_activation,
        "config": {"symbio": symbio_config, "train": train_config},
        "winner": winner_record(winner),
        "recommendation": recommendation(winner, baseline_activation),
        "final_population": [r.to_dict() for r in final.ranked] if final else [],
        "generations": [
            {
                "generation": g.generation,
                "best_candidate_id": g.best.candidate.candidate_id if g.ranked else None,
                "best_activation": g.best.activation if g.ranked else None,
                "best_val_loss": _finite_or_none(g.best.best_val_loss) if g.ranked else None,
                "architecture_diversity": g.architecture_diversity,
                "activation_distribution": g.activation_distribution,
                "population_entropy": _finite_or_none(g.population_entropy),
                "failed": sum(not r.ok for r in g.ranked),
                "wall_s": round(g.wall_s, 3),
            }
            for g in generations
        ],
        "activations": activation_table(generations),
        "elapsed_s": round(elapsed_s, 3),
        "estimated_s": round(estimate_s, 1) if estimate_s is not None else None,
    }


def recommendation(winner: CandidateResult | None, baseline: str) -> str:
    if winner is None:
        return "No candidate finished training; no recommendation."
    if winner.activation == baseline:
        return f"Keep --activation {baseline}: it won the search."
    return (
        f"Consider --activation {winner.activation} (best val loss "
        f"{winner.best_val_loss:.4f}) instead of {baseline}. Not applied automatically."
    )


def report_markdown(summary: dict[str, Any], generations: Sequence[GenerationResult]) -> str:
    """``symbio-report.md``: winner, recommendation, per-activation deltas, rankings."""
    w = summary["winner"]
    base = summary["baseline_activation"]
    lines = [
        f"# Symbio FFN activation search — run `{summary['run_id']}`",
        "",
        f"Strategy **{summary['strategy']}**, status **{summary['status']}**, "
        f"{len(generations)} generation(s), wall time {_dur(summary['elapsed_s'])}"
        + (f" (estimated {_dur(summary['estimated_s'])})." if summary["estimated_s"] else "."),
        "",
        "## Winner",
        "",
    ]
    if w:
        lines += [
            f"**{w['activation']}** (`{w['candidate_id']}`, generation {w['generation']}): "
            f"best val loss {_f(w['best_val_loss'])}, fitness {_f(w['fitness'])}, "
            f"{_f(w['tokens_per_sec'], 0)} tok/s.",
        ]
    else:
        lines.append("No candidate finished training.")
    lines += ["", f"**Recommendation:** {summary['recommendation']}", ""]
    lines += _activation_section(summary["activations"], base)
    for g in generations:
        lines += _generation_section(g)
    return "\n".join(lines).rstrip() + "\n"


def _activation_section(rows: list[dict[str, Any]], base: str) -> list[str]:
    ref = next((r["mean_best_val_loss"] for r in rows if r["activation"] == base), None)
    out = [
        f"## Activations (delta vs the starting activation, {base})",
        "",
        "| activation | candidates | failed | mean best val loss | delta | best | mean tok/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r["mean_best_val_loss"]
        delta = f"{m - ref:+.4f}" if m is not None and ref is not None else "–"
        out.append(
            f"| {r['activation']} | {r['candidates']} | {r['failed']} | {_f(m)} | {delta} "
            f"| {_f(r['min_best_val_loss'])} | {_f(r['mean_tokens_per_sec'], 0)} |"
        )
    return out + [""]


def _generation_section(g: GenerationResult) -> list[str]:
    dist = ", ".join(f"{k}: {v}" for k, v in g.activation_distribution.items())
    out = [
        f"## Generation {g.generation}",
        "",
        f"Diversity {g.architecture_diversity:.2f}; distribution {dist}; population entropy "
        f"{_f(g.population_entropy)}; wall time {_dur(g.wall_s)}.",
        "",
        "| rank | candidate | activation | parents | mutation | best val loss | fitness "
        "| tok/s | status |",
        "|---:|---|---|---|---|---:|---:|---:|---|",
    ]
    for r in g.ranked:
        c = r.candidate
        status = r.status if r.ok else f"failed: {r.failure_reason or 'no finite val loss'}"
        out.append(
            f"| {r.rank} | {c.candidate_id} | {c.activation} | {', '.join(c.parent_ids) or '–'} "
            f"| {', '.join(c.mutation_ops)} | {_f(r.best_val_loss)} | {_f(r.fitness)} "
            f"| {_f(r.tokens_per_sec, 0)} | {status} |"
        )
    return out + [""]


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _f(x: float | None, digits: int = 4) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:,.{digits}f}" if digits == 0 else f"{x:.{digits}f}"


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
