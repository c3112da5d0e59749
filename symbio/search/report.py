"""The search's artifacts: summary, per-candidate records, Markdown report.

Pure functions over a ``SearchRun`` (generations + confirmation); the runner
writes them to the run directory (``symbio-summary.json``,
``symbio-candidates.jsonl``, ``symbio-report.md``), the lake (``candidates``
table) and Prefect artifacts. The winner and the recommendation come from the
confirmation on the held-out test split (``symbio.search.confirm``), never
from the split the search selected on. The winner is *reported*: nothing is
applied to later runs automatically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from symbio.search.candidate import CandidateResult
from symbio.search.confirm import Arm, Confirmation
from symbio.search.loop import GenerationResult, SearchPlan, SearchRun, nominee

SEARCH_MODE = "ffn-activation-search"
_RESULT_KEYS = (
    "candidate_id", "activation", "lr", "generation", "best_val_loss", "final_val_loss",
    "final_loss", "fitness", "tokens_per_sec", "instability", "param_count", "rank",
    "total_steps", "run_dir",
)  # fmt: skip


# -- the winner -------------------------------------------------------------------


def representative(run: SearchRun, arm: Arm) -> CandidateResult | None:
    """The search candidate standing for ``arm``: the nominee, else the latest-generation
    best-ranked candidate of its activation (and lr)."""
    top = run.nominee
    if top is not None and "top" in arm.roles:
        return top
    results = [r for gen in reversed(run.generations) for r in gen.ranked]
    same = [r for r in results if r.activation == arm.activation]
    exact = [r for r in same if r.candidate.lr == arm.lr]
    return (exact or same or [None])[0]


def winner_record(run: SearchRun) -> dict[str, Any] | None:
    """The ``winner`` block of the summary (also ``runs.symbio_winner``).

    Confirmed: the recommended arm with its test-loss statistics. Without a
    confirmation (``confirmSeeds: 0``) the search's nominee, ``confirmed: false``.
    """
    conf = run.confirmation
    if conf is None:
        top = run.nominee
        return None if top is None else {**_result_fields(top), "confirmed": False}
    arm = conf.winner()
    if arm is None:
        return None
    rep = representative(run, arm)
    row = next(row for row in conf.arm_rows() if row["arm"] == arm.name)
    healthy = [r for r in conf.results_of(arm) if r.ok]
    vs = row["vs_baseline"]
    return {
        "activation": arm.activation,
        "lr": arm.lr,
        "arm": arm.name,
        "confirmed": True,
        "significant": bool(vs and vs["significant"]),
        "switch": conf.switch(),
        "test_loss_mean": row["test_loss_mean"],
        "test_loss_sd": row["test_loss_sd"],
        "n_seeds": row["n"],
        "vs_baseline": vs,
        "vs_gelu": row["vs_gelu"],
        "total_steps": conf.steps,
        # means over the arm's healthy confirmation runs
        "best_val_loss": _mean([r.best_val_loss for r in healthy]),
        "final_val_loss": _mean([r.final_val_loss for r in healthy]),
        "final_loss": _mean([r.final_loss for r in healthy]),
        "tokens_per_sec": _mean([r.tokens_per_sec for r in healthy]),
        "param_count": healthy[0].param_count if healthy else None,
        "run_dir": healthy[0].run_dir if healthy else None,
        # the search candidate standing for it (the dashboard highlights it)
        "candidate_id": rep.candidate.candidate_id if rep else None,
        "generation": rep.candidate.generation if rep else None,
        "search_rank": rep.rank if rep else None,
        "search_val_loss": _finite_or_none(rep.final_val_loss) if rep else None,
    }


def recommendation(run: SearchRun, baseline: str) -> str:
    """One sentence: what the confirmation says about switching from ``baseline``."""
    conf = run.confirmation
    if conf is None:
        top = run.nominee
        if top is None:
            return "No candidate finished training healthy; no recommendation."
        return (
            f"Unconfirmed (confirmSeeds 0): the search ranked {top.activation} first "
            f"(val loss {top.final_val_loss:.4f}); confirm it before switching from {baseline}."
        )
    winner, base = conf.winner(), conf.arm("baseline")
    if winner is None:
        return "No confirmation run finished healthy; no recommendation."
    if base is None or not conf.healthy(base):
        return (
            f"The baseline {baseline} failed its confirmation runs; {winner.name} was the best "
            f"healthy configuration (test loss {conf.summary(winner).mean:.4f})."
        )
    if winner is base:
        return (
            f"Keep --activation {baseline}: it had the lowest test loss of the confirmed "
            f"activations over {conf.seeds} paired seeds."
        )
    d = conf.diff(winner, base)
    stats = f"test loss {_signed(d.mean)} vs {baseline} (95% CI {_ci(d.ci95)}, {d.n} paired seeds)"
    if not conf.switch():
        return (
            f"No significant difference: {winner.name} had the lowest mean, {stats}; "
            f"keep --activation {baseline} (or confirm with more confirmSeeds)."
        )
    lr = f" --lr {winner.lr:.3g}" if winner.lr is not None else ""
    return f"Consider --activation {winner.activation}{lr}: {stats}. Not applied automatically."


# -- records ------------------------------------------------------------------------


def candidate_record(
    result: CandidateResult, gen: GenerationResult | None, winner_id: str | None
) -> dict[str, Any]:
    """One line of ``symbio-candidates.jsonl`` (``gen`` None for a confirmation run)."""
    rec = {**result.to_dict(), "is_winner": result.candidate.candidate_id == winner_id}
    if gen is not None:
        rec["architecture_diversity"] = gen.architecture_diversity
        rec["activation_distribution"] = gen.activation_distribution
        rec["population_entropy"] = _finite_or_none(gen.population_entropy)
    return rec


def candidate_lake_rows(
    results: Sequence[CandidateResult], winner_id: str | None, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Rows of the lake's ``candidates`` table (column names of ``storage.schema``).

    ``steps`` is the candidate's own steps; its inherited steps and total are in
    ``symbio-candidates.jsonl`` and the summary.
    """
    now = now or datetime.now(UTC)
    rows = []
    for r in results:
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


def compute_record(plan: SearchPlan, run: SearchRun, elapsed_s: float) -> dict[str, Any]:
    """Compute spent, and what an exhaustive sweep with replicates would have cost."""
    search = [r for g in run.generations for r in g.ranked]
    conf = run.confirmation.results if run.confirmation else []
    s_steps, c_steps = sum(r.steps for r in search), sum(r.steps for r in conf)
    reps = max(1, plan.confirm_seeds)
    arms = plan.initial_size
    exhaustive = arms * reps * plan.confirm_length
    total = s_steps + c_steps
    return {
        "search_runs": len(search),
        "search_steps": s_steps,
        "inherited_steps": sum(r.inherited_steps for r in search),
        "confirm_runs": len(conf),
        "confirm_steps": c_steps,
        "total_runs": len(search) + len(conf),
        "total_steps": total,
        "search_wall_s": round(sum(g.wall_s for g in run.generations), 3),
        "confirm_wall_s": round(run.confirmation.wall_s, 3) if run.confirmation else 0.0,
        "wall_s": round(elapsed_s, 3),
        "exhaustive": {
            "arms": arms,
            "replicates": reps,
            "steps_per_run": plan.confirm_length,
            "steps": exhaustive,
        },
        "fraction_of_exhaustive": round(total / exhaustive, 4) if exhaustive else None,
    }


def activation_table(run: SearchRun) -> list[dict[str, Any]]:
    """Per activation: search segments and the furthest generation reached; confirmation stats."""
    conf = run.confirmation
    by_act: dict[str, list[CandidateResult]] = {}
    for gen in run.generations:
        for r in gen.ranked:
            by_act.setdefault(r.activation, []).append(r)
    if conf is not None:
        for arm in conf.arms:
            by_act.setdefault(arm.activation, [])
    rows = []
    for act, rs in by_act.items():
        ok = [r for r in rs if r.ok]
        furthest = max(ok, key=lambda r: (r.candidate.generation, -(r.final_val_loss or 0)),
                       default=None)  # fmt: skip
        row: dict[str, Any] = {
            "activation": act,
            "candidates": len(rs),
            "unhealthy": len(rs) - len(ok),
            "furthest_generation": furthest.candidate.generation if furthest else None,
            "val_loss_there": _finite_or_none(furthest.final_val_loss) if furthest else None,
            "total_steps_there": furthest.total_steps if furthest else None,
        }
        arm = next((a for a in conf.arms if a.activation == act), None) if conf else None
        if conf is not None and arm is not None:
            s = conf.summary(arm)
            base, ref = conf.arm("baseline"), conf.arm("gelu")
            row.update(
                {
                    "confirm_arm": arm.name,
                    "test_n": s.n,
                    "test_loss_mean": s.mean,
                    "test_loss_sd": s.sd,
                    "vs_baseline": conf.diff(arm, base).to_dict() if base and arm is not base
                    else None,
                    "vs_gelu": conf.diff(arm, ref).to_dict() if ref and arm is not ref else None,
                }
            )  # fmt: skip
        rows.append(row)
    rows.sort(key=lambda r: (r.get("test_loss_mean") is None, r.get("test_loss_mean") or 0.0,
                             r["val_loss_there"] is None, r["val_loss_there"] or 0.0))  # fmt: skip
    return rows


def build_summary(
    *,
    run_id: str,
    plan: SearchPlan,
    symbio_config: dict[str, Any],
    train_config: dict[str, Any],
    baseline_activation: str,
    run: SearchRun,
    status: str,
    elapsed_s: float,
    estimate_s: float | None,
    warnings: Sequence[str] = (),
) -> dict[str, Any]:
    """The content of ``symbio-summary.json``."""
    gens = run.generations
    final = gens[-1] if gens else None
    conf = run.confirmation
    top = nominee(gens)
    return {
        "run_id": run_id,
        "mode": SEARCH_MODE,
        "status": status,
        "strategy": plan.strategy,
        "baseline_activation": baseline_activation,
        "config": {"symbio": symbio_config, "train": train_config},
        "winner": winner_record(run),
        "recommendation": recommendation(run, baseline_activation),
        "nominee": {**_result_fields(top), "ops": list(top.candidate.mutation_ops)} if top else None,
        "confirmation": None if conf is None else {
            "split": "test",
            "seeds": conf.seeds,
            "steps": conf.steps,
            "arms": conf.arm_rows(),
            "wall_s": round(conf.wall_s, 3),
        },  # fmt: skip
        "final_population": [r.to_dict() for r in final.ranked] if final else [],
        "generations": [_generation_record(g) for g in gens],
        "planned_generation_sizes": plan.rung_sizes,
        "lr_horizon": plan.horizon,
        "activations": activation_table(run),
        "compute": compute_record(plan, run, elapsed_s),
        "warnings": list(warnings),
        "elapsed_s": round(elapsed_s, 3),
        "estimated_s": round(estimate_s, 1) if estimate_s is not None else None,
    }


def _generation_record(g: GenerationResult) -> dict[str, Any]:
    best = g.best if g.ranked else None
    return {
        "generation": g.generation,
        "size": len(g.ranked),
        "best_candidate_id": best.candidate.candidate_id if best else None,
        "best_activation": best.activation if best else None,
        "best_val_loss": _finite_or_none(best.final_val_loss) if best else None,
        "total_steps": max((r.total_steps for r in g.ranked), default=0),
        "steps": sum(r.steps for r in g.ranked),
        "architecture_diversity": g.architecture_diversity,
        "activation_distribution": g.activation_distribution,
        "population_entropy": _finite_or_none(g.population_entropy),
        "failed": sum(r.status == "failed" for r in g.ranked),
        "stalled": sum(r.status == "stalled" for r in g.ranked),
        "wall_s": round(g.wall_s, 3),
    }


# -- Markdown -------------------------------------------------------------------------


def report_markdown(summary: dict[str, Any], run: SearchRun) -> str:
    """``symbio-report.md``: recommendation, confirmation with CIs, compute, the search."""
    sizes = ", ".join(str(g["size"]) for g in summary["generations"]) or "none"
    lines = [
        f"# Symbio FFN activation search — run `{summary['run_id']}`",
        "",
        f"Strategy **{summary['strategy']}**, status **{summary['status']}**; generation "
        f"sizes {sizes}; wall time {_dur(summary['elapsed_s'])}"
        + (f" (estimated {_dur(summary['estimated_s'])})." if summary["estimated_s"] else "."),
        "",
        f"**Recommendation:** {summary['recommendation']}",
        "",
    ]
    lines += _winner_section(summary)
    lines += _confirmation_section(summary)
    lines += _compute_section(summary["compute"])
    if summary["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in summary["warnings"]] + [""]
    lines += _activation_section(summary["activations"], summary["baseline_activation"])
    for g in run.generations:
        lines += _generation_section(g)
    if run.confirmation is not None:
        lines += _runs_section(run.confirmation)
    return "\n".join(lines).rstrip() + "\n"


def _winner_section(summary: dict[str, Any]) -> list[str]:
    w, nom = summary["winner"], summary["nominee"]
    out = ["## Winner", ""]
    if w is None:
        out.append("No healthy winner.")
    elif w.get("confirmed"):
        out.append(
            f"**{w['arm']}**: test loss {_pm(w['test_loss_mean'], w['test_loss_sd'])} "
            f"(mean ± sd over {w['n_seeds']} seeds x {w['total_steps']} steps, held-out test "
            "split)"
            + ("" if w["significant"] or w["arm"] == summary["baseline_activation"]
               else "; not significantly better than the baseline")  # fmt: skip
            + "."
        )
    else:
        out.append(f"**{w['activation']}** (`{w['candidate_id']}`), not confirmed.")
    if nom:
        out.append(
            f"The search's pick was {nom['activation']} (`{nom['candidate_id']}`, val loss "
            f"{_f(nom['final_val_loss'])} after {nom['total_steps']} steps, ops "
            f"{', '.join(nom['ops'])})."
        )
    return out + [""]


def _confirmation_section(summary: dict[str, Any]) -> list[str]:
    conf = summary["confirmation"]
    if conf is None:
        return ["## Confirmation", "", "Not run (confirmSeeds 0).", ""]
    out = [
        f"## Confirmation: {conf['seeds']} paired seeds x {conf['steps']} steps, test split",
        "",
        "Differences are paired by seed (a − b, lower is better), 95% Student-t intervals.",
        "",
        "| arm | roles | lr | healthy seeds | test loss mean ± sd | vs baseline | vs gelu |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for a in conf["arms"]:
        lr = f"{a['lr']:.3g}" if a["lr"] is not None else "run's"
        out.append(
            f"| {a['arm']} | {', '.join(a['roles'])} | {lr} | {a['n']}/{conf['seeds']} "
            f"| {_pm(a['test_loss_mean'], a['test_loss_sd'])} "
            f"| {_diff(a['vs_baseline'])} | {_diff(a['vs_gelu'])} |"
        )
    bad = [u for a in conf["arms"] for u in a["unhealthy"]]
    if bad:
        out += ["", "Unhealthy confirmation runs (excluded): " + "; ".join(bad) + "."]
    return out + [""]


def _compute_section(c: dict[str, Any]) -> list[str]:
    ex = c["exhaustive"]
    frac = c["fraction_of_exhaustive"]
    return [
        "## Compute",
        "",
        "| phase | runs | steps | wall |",
        "|---|---:|---:|---:|",
        f"| search | {c['search_runs']} | {c['search_steps']:,} | {_dur(c['search_wall_s'])} |",
        f"| confirmation | {c['confirm_runs']} | {c['confirm_steps']:,} "
        f"| {_dur(c['confirm_wall_s'])} |",
        f"| total | {c['total_runs']} | {c['total_steps']:,} | {_dur(c['wall_s'])} |",
        "",
        f"Continuing survivors reused {c['inherited_steps']:,} steps instead of retraining them. "
        f"An exhaustive sweep with replicates at the same budget ({ex['arms']} arms x "
        f"{ex['replicates']} seeds x {ex['steps_per_run']:,} steps) would train "
        f"{ex['steps']:,} steps"
        + (f"; this search trained {100 * frac:.0f}% of that." if frac is not None else "."),
        "",
    ]


def _activation_section(rows: list[dict[str, Any]], base: str) -> list[str]:
    out = [
        f"## Activations (baseline: {base})",
        "",
        "| activation | search runs | unhealthy | furthest generation | val loss there "
        "| test loss mean ± sd | vs baseline |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['activation']} | {r['candidates']} | {r['unhealthy']} "
            f"| {_or(r['furthest_generation'])} | {_f(r['val_loss_there'])} "
            f"| {_pm(r.get('test_loss_mean'), r.get('test_loss_sd'))} "
            f"| {_diff(r.get('vs_baseline'))} |"
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
        "| rank | candidate | activation | lr | parents | ops | steps (total) | val loss "
        "| fitness | tok/s | status |",
        "|---:|---|---|---:|---|---|---:|---:|---:|---:|---|",
    ]
    for r in g.ranked:
        out.append(_result_line(r, rank=r.rank))
    return out + [""]


def _runs_section(conf: Confirmation) -> list[str]:
    out = [
        "## Confirmation runs",
        "",
        "| candidate | activation | lr | seed | steps | val loss | test loss | status |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in conf.results:
        c = r.candidate
        status = r.status if r.ok else f"{r.status}: {r.failure_reason}"
        lr = f"{c.lr:.3g}" if c.lr is not None else "–"
        out.append(
            f"| {c.candidate_id} | {c.activation} | {lr} | {c.seed} | {r.steps} "
            f"| {_f(r.final_val_loss)} | {_f(r.test_loss)} | {status} |"
        )
    return out + [""]


def _result_line(r: CandidateResult, rank: int | None) -> str:
    c = r.candidate
    status = r.status if r.ok else f"{r.status}: {r.failure_reason or 'no finite val loss'}"
    lr = f"{c.lr:.3g}" if c.lr is not None else "–"
    return (
        f"| {_or(rank)} | {c.candidate_id} | {c.activation} | {lr} "
        f"| {', '.join(c.parent_ids) or '–'} | {', '.join(c.mutation_ops)} "
        f"| {r.steps} ({r.total_steps}) | {_f(r.final_val_loss)} | {_f(r.fitness)} "
        f"| {_f(r.tokens_per_sec, 0)} | {status} |"
    )


# -- helpers ------------------------------------------------------------------------


def _result_fields(r: CandidateResult) -> dict[str, Any]:
    rec = r.to_dict()
    return {k: rec.get(k) for k in _RESULT_KEYS}


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(vals) / len(vals) if vals else None


def _pm(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "not confirmed"
    return f"{mean:.4f}" + (f" ± {sd:.4f}" if sd is not None else "")


def _diff(d: dict[str, Any] | None) -> str:
    if not d or d.get("mean_diff") is None:
        return "–"
    ci = d.get("ci95")
    text = f"{_signed(d['mean_diff'])} [{_ci(ci)}]" if ci else f"{_signed(d['mean_diff'])}"
    return text + (" *" if d.get("significant") else " (n.s.)" if ci else "")


def _ci(ci: Sequence[float] | None) -> str:
    return "–" if not ci else f"{ci[0]:+.4f}, {ci[1]:+.4f}"


def _signed(x: float | None) -> str:
    return "–" if x is None else f"{x:+.4f}"


def _or(x: Any) -> str:
    return "–" if x is None else str(x)


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
