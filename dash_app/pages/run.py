"""The run page, ``/runs/<run_id>``: header, stats, every chart of PRD §13, live updates.

A running run's page polls the lake (``dcc.Interval``) and appends the rows
that landed since the last poll to its charts through ``extendData``; the
figures are never rebuilt. The step, elapsed and ETA texts follow each poll;
the header and tiles are re-rendered at most every ``HEADER_REFRESH_S``.
Polling stops when the run leaves ``running``.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

import polars as pl
from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update

from dash_app import components as c
from dash_app import data, theme
from dash_app import figures as fig
from storage.lake import Lake

log = logging.getLogger(__name__)

#: Largest number of points a live chart keeps per trace in the browser.
LIVE_MAX_POINTS = 20_000
#: Seconds between full re-renders of a live page's header and symbio tiles.
HEADER_REFRESH_S = 15.0
#: Columns a poll reads: every live chart's plus progress.
POLL_COLUMNS = tuple(sorted({*fig.LIVE_COLUMNS, "elapsed_ms"}))
SPARK_POINTS = 60
#: A running run that lands no row for this long gets a warning (its process may be gone).
STALE_AFTER_S = 600.0


# -- layout -----------------------------------------------------------------------


def layout(lake: Lake, run_id: str, *, poll_ms: int) -> Any:
    view = data.load_run_view(lake, run_id)
    if view is None:
        return c.empty_state("Run not found", f"The lake has no run {run_id!r}.")
    return render(view, poll_ms=poll_ms)


def render(view: data.RunView, *, poll_ms: int) -> html.Div:
    """The whole page for a loaded run."""
    run = view.run
    children: list[Any] = [
        html.Div(summary(view), id="run-summary"),
    ]
    if view.symbio:
        children.append(html.Div(symbio_tiles(view), id={"type": "symbio-tiles", "key": "grid"}))
    children += core_charts(view)
    if view.symbio:
        children += symbio_sections(view)
    children.append(config_panels(view))
    children += [
        dcc.Store(
            id="run-cursor",
            data={
                "run_id": run["run_id"],
                "last_step": view.last_step,
                "prev_alerts": view.last_alerts,
                "refreshed_at": time.time(),
            },
        ),
        dcc.Interval(id="run-poll", interval=poll_ms, disabled=not view.running),
    ]
    return html.Div(children, className="run-page", id="run-page")


def summary(view: data.RunView) -> list[Any]:
    """Title line with badges, a meta line, and the timing stats grid."""
    run = view.run
    badges: list[Any] = [c.status_badge(run.get("status"))]
    if view.symbio:
        badges.append(c.badge("Symbio", "symbio", id="symbio-badge"))
        activation = run.get("ffn_activation") or data.parse_json(run.get("model_config")).get(
            "ffn_activation"
        )
        badges.append(
            c.badge(theme.activation_label(activation), "activation", id="activation-tag")
        )
        mode = run.get("symbio_mode")
        if mode and mode != "none":
            badges.append(
                c.badge(theme.SEARCH_MODE_LABELS.get(mode, mode), "search", id="search-mode-tag")
            )
    silent = view.silent_for()
    if silent is not None and silent > STALE_AFTER_S:
        badges.append(
            c.badge(f"no new rows for {theme.fmt_duration(silent)}", "warn", id="stale-badge")
        )
    model = data.parse_json(run.get("model_config"))
    meta = [
        run.get("domain"),
        run.get("device")
        and f"{run['device']}" + (f" · {run['gpu_name']}" if run.get("gpu_name") else ""),
        model.get("n_layer")
        and f"{model['n_layer']}L × {model.get('n_head', '?')}H × {model.get('n_embd', '?')}d",
        run.get("param_count") and f"{theme.fmt_num(run['param_count'])} params",
        f"started {theme.fmt_time(run.get('started_at'))}",
    ]
    title = html.Div(
        [html.H1(run["run_id"], className="run-title"), html.Div(badges, className="badges")],
        className="run-head",
    )
    out: list[Any] = [
        title,
        html.Div(" · ".join(str(m) for m in meta if m), className="muted meta"),
    ]
    if run.get("error"):
        out.append(html.Div(f"error: {run['error']}", className="error-line"))
    out.append(timing_tiles(view))
    return out


def _last(df: pl.DataFrame, col: str) -> Any:
    if col not in df.columns:
        return None
    values = df[col].drop_nulls()
    return values[-1] if values.len() else None


def _spark(df: pl.DataFrame, col: str, n: int = SPARK_POINTS) -> list[float]:
    if col not in df.columns:
        return []
    values = df[col].drop_nulls()
    if values.len() > n:
        values = values.gather_every(values.len() // n + 1)
    return values.to_list()


def step_text(step: int | None, total: int | None) -> str:
    return f"{theme.fmt_num(step)} / {theme.fmt_num(total)}"


def timing_tiles(view: data.RunView) -> html.Div:
    run, s = view.run, view.series
    step, total = view.last_step or run.get("latest_step"), run.get("total_iters")
    frac = data.progress(step, total)
    val = s["val_loss"].drop_nulls() if "val_loss" in s.columns else pl.Series([], dtype=pl.Float64)
    best_val = val.min() if val.len() else run.get("best_val_loss")
    elapsed_s = view.elapsed_ms / 1000.0 if view.elapsed_ms is not None else None
    if view.running:
        eta = data.eta_seconds(step, total, view.elapsed_ms)
        end_tile = c.tile(
            "ETA", theme.fmt_duration(eta), sub="at the mean pace", id="tile-eta", live="eta"
        )
    else:
        end_tile = c.tile(
            "Finished",
            theme.fmt_time(run.get("finished_at"), "%m-%d %H:%M"),
            sub=theme.fmt_time(run.get("finished_at"), "%Y UTC")
            if run.get("finished_at")
            else None,
            id="tile-finished",
        )
    ms = s["ms_per_iter"].drop_nulls() if "ms_per_iter" in s.columns else pl.Series([])
    tiles = [
        c.tile(
            "Step",
            step_text(step, total),
            live="step",
            sub=f"{frac:.1%}" if frac is not None else None,
            extra=c.progress_bar(frac),
            id="tile-step",
        ),
        c.tile("Loss", theme.fmt_num(_last(s, "loss")), spark=_spark(s, "loss"), id="tile-loss"),
        c.tile(
            "Best val loss",
            theme.fmt_num(best_val),
            spark=_spark(s, "val_loss"),
            color=theme.ORANGE,
            id="tile-val",
        ),
        c.tile(
            "Tokens/s",
            theme.fmt_num(_last(s, "tokens_per_sec")),
            spark=_spark(s, "tokens_per_sec"),
            color=theme.CYAN,
            id="tile-tps",
        ),
        c.tile(
            "ms/iter",
            theme.fmt_num(ms.median() if ms.len() else None),
            sub="median",
            spark=_spark(s, "ms_per_iter"),
            color=theme.PURPLE,
            id="tile-ms",
        ),
        c.tile(
            "Learning rate", theme.fmt_num(_last(s, "lr")), spark=_spark(s, "lr"), color=theme.GREEN
        ),
        c.tile("Elapsed", theme.fmt_duration(elapsed_s), id="tile-elapsed", live="elapsed"),
        end_tile,
    ]
    return html.Div(tiles, className="tiles", id="timing-tiles")


def symbio_tiles(view: data.RunView) -> html.Div:
    """PRD §13.2: the eight symbio tiles."""
    s, run = view.series, view.run
    cfg = data.parse_json(run.get("symbio_config"))
    fe = s["free_energy"].drop_nulls().tail(2).to_list() if "free_energy" in s.columns else []
    trend = None
    if len(fe) > 1:
        up = fe[-1] > fe[-2]
        trend = html.Span(
            "▲" if up else "▼", className="trend " + ("trend-up" if up else "trend-down")
        )
    batch = _last(s, "adaptive_batch_size")
    tiles = [
        c.tile(
            "Weight Entropy",
            _unit(_last(s, "weight_entropy"), "bits"),
            spark=_spark(s, "weight_entropy"),
            id="tile-weight-entropy",
        ),
        c.tile(
            "Effective Rank",
            theme.fmt_num(_last(s, "effective_rank")),
            spark=_spark(s, "effective_rank"),
            color=theme.GREEN,
            id="tile-effective-rank",
        ),
        c.tile(
            "Free Energy",
            theme.fmt_num(_last(s, "free_energy")),
            extra=trend,
            spark=_spark(s, "free_energy"),
            color=theme.PINK,
            id="tile-free-energy",
        ),
        c.tile(
            "Population Entropy",
            _unit(_last(s, "population_entropy"), "nats"),
            spark=_spark(s, "population_entropy"),
            color=theme.CYAN,
            id="tile-population-entropy",
        ),
        c.tile(
            "Complexity",
            theme.fmt_num(_last(s, "complexity_score")),
            sub=data.config_value(cfg, "complexityMode") or None,
            spark=_spark(s, "complexity_score"),
            color=theme.PURPLE,
            id="tile-complexity",
        ),
        c.tile(
            "Fitness",
            theme.fmt_num(_last(s, "fitness_score")),
            spark=_spark(s, "fitness_score"),
            color=theme.YELLOW,
            id="tile-fitness",
        ),
        c.tile(
            "CUSUM Alerts",
            f"{view.alert_count:,}",
            sub=f"last at step {view.last_alert_step:,}" if view.last_alert_step else "none yet",
            color=theme.RED,
            id="tile-cusum-alerts",
        ),
        c.tile(
            "Batch Size",
            theme.fmt_num(batch),
            sub="adaptive" if data.config_value(cfg, "adaptiveBatch") else None,
            spark=_spark(s, "adaptive_batch_size"),
            color=theme.ORANGE,
            id="tile-batch-size",
        ),
    ]
    return html.Div(tiles, className="tiles symbio-tiles", id="symbio-tiles")


def _unit(value: Any, unit: str) -> str:
    text = theme.fmt_num(value)
    return text if value is None else f"{text} {unit}"


def core_charts(view: data.RunView) -> list[Any]:
    s = view.series
    live = partial(c.live_graph, running=view.running)
    segments = _candidate_segments(view.candidates)
    charts = [
        live("loss", fig.loss_figure(s, segments=segments), wide=True),
        live("lr", fig.metric_figure(s, "lr")),
        live("grad_norm", fig.metric_figure(s, "grad_norm", hline=data.grad_clip(view.run))),
        live("tokens_per_sec", fig.metric_figure(s, "tokens_per_sec")),
        live("ms_per_iter", fig.metric_figure(s, "ms_per_iter")),
    ]
    if fig.has_data(s, "clip_coef", "clip_pct") or view.running:
        charts.append(live("clip", fig.clip_figure(s), wide=True))
    return [c.section("Training", charts, id="section-training", grid="grid grid-2")]


def _candidate_segments(cands: pl.DataFrame) -> list[tuple[int, int, str]]:
    need = {"step_offset", "steps", "activation"}
    if cands.is_empty() or not need <= set(cands.columns):
        return []
    rows = cands.drop_nulls(["step_offset", "steps"]).sort("step_offset")
    return [
        (int(o), int(o + n), theme.activation_label(a))
        for o, n, a in rows.select("step_offset", "steps", "activation").iter_rows()
    ][:64]


def symbio_sections(view: data.RunView) -> list[Any]:
    s, run = view.series, view.run
    live = partial(c.live_graph, running=view.running)
    sections = [
        c.section(
            "CUSUM monitor",
            [live("cusum", fig.cusum_figure(s, data.cusum_threshold(run)), wide=True)],
            id="section-cusum",
        ),
        c.section(
            "Symbio metrics",
            [
                live("weight_entropy", fig.weight_entropy_figure(s)),
                live("effective_rank", fig.effective_rank_figure(s)),
                live("free_energy", fig.free_energy_figure(s)),
                live("fitness", fig.fitness_figure(s)),
            ],
            id="section-symbio-metrics",
            grid="grid grid-4",
        ),
        c.section(
            "Adaptive batch",
            [live("batch", fig.batch_figure(s), wide=True)],
            id="section-batch",
        ),
    ]
    tracks_mi = data.config_value(data.parse_json(run.get("symbio_config")), "trackMIProfiles")
    if fig.has_data(s, "mi_input_repr", "mi_repr_output") or (view.running and tracks_mi):
        sections.append(
            c.section(
                "Information",
                [
                    c.static_graph("information_plane", fig.information_plane_figure(s)),
                    live("mi_trajectory", fig.mi_trajectory_figure(s)),
                ],
                id="section-mi",
            )
        )
    if is_search(view):
        sections.append(search_section(view))
    return sections


def is_search(view: data.RunView) -> bool:
    mode = view.run.get("symbio_mode")
    return (mode not in (None, "", "none")) or not view.candidates.is_empty()


CANDIDATE_COLUMNS = (
    ("rank", "rank", "numeric"),
    ("candidate_id", "candidate", "text"),
    ("generation", "gen", "numeric"),
    ("activation", "activation", "text"),
    ("best_val_loss", "best val loss", "numeric"),
    ("fitness", "fitness", "numeric"),
    ("tokens_per_sec", "tokens/s", "numeric"),
    ("instability", "instability", "numeric"),
    ("param_count", "params", "numeric"),
    ("steps", "steps", "numeric"),
    ("status", "status", "text"),
    ("winner", "winner", "text"),
)


def winner_id(view: data.RunView) -> str | None:
    cands = view.candidates
    if "is_winner" in cands.columns:
        hit = cands.filter(pl.col("is_winner").fill_null(False))
        if hit.height:
            return hit["candidate_id"][0]
    return data.parse_json(view.run.get("symbio_winner")).get("candidate_id")


def candidate_table(view: data.RunView) -> Any:
    """PRD §13.10: sortable candidate comparison, winner highlighted."""
    from dash import dash_table

    cands = view.candidates
    if cands.is_empty():
        return html.P("No candidates recorded yet.", className="muted")
    win = winner_id(view)
    rows = []
    for r in cands.iter_rows(named=True):
        row = {k: r.get(k) for k, _, _ in CANDIDATE_COLUMNS if k != "winner"}
        row["activation"] = theme.activation_label(row.get("activation"))
        row["winner"] = "★" if r["candidate_id"] == win else ""
        for k in ("best_val_loss", "fitness", "instability"):
            if isinstance(row.get(k), float):
                row[k] = round(row[k], 4)
        if isinstance(row.get("tokens_per_sec"), float):
            row["tokens_per_sec"] = round(row["tokens_per_sec"], 1)
        rows.append(row)
    return dash_table.DataTable(
        id="candidate-table",
        columns=[{"id": k, "name": n, "type": t} for k, n, t in CANDIDATE_COLUMNS],
        data=rows,
        sort_action="native",
        sort_by=[{"column_id": "best_val_loss", "direction": "asc"}],
        style_data_conditional=[
            {
                "if": {"filter_query": '{winner} = "★"'},
                "backgroundColor": "rgba(250, 204, 21, 0.14)",
                "color": theme.YELLOW,
                "fontWeight": "600",
            },
            {
                "if": {"filter_query": '{status} = "failed"'},
                "color": theme.RED,
            },
        ],
        **c.TABLE_STYLE,
    )


def search_section(view: data.RunView) -> html.Section:
    winner = winner_id(view)
    return c.section(
        "FFN activation search",
        [
            c.static_graph(
                "activation_distribution",
                fig.activation_distribution_figure(view.series),
                wide=True,
            ),
            html.Div(
                [
                    html.H3(
                        [
                            "Candidates",
                            html.Span(f" winner: {winner}" if winner else "", className="muted"),
                        ],
                        className="card-title",
                    ),
                    candidate_table(view),
                ],
                id="card-candidates",
                className="card wide",
            ),
        ],
        id="section-search",
    )


def config_panels(view: data.RunView) -> html.Div:
    run = view.run
    panels = []
    if view.symbio:
        panels.append(
            c.json_panel(
                "Symbio config", data.parse_json(run.get("symbio_config")), id="panel-symbio-config"
            )
        )
    panels.append(
        c.json_panel(
            "Resolved config",
            {
                "train": data.parse_json(run.get("train_config")),
                "model": data.parse_json(run.get("model_config")),
            },
            id="panel-config",
        )
    )
    return html.Div(panels, className="panels", id="section-config")


# -- live updates -----------------------------------------------------------------


def live_update(
    lake: Lake, cursor: dict[str, Any], keys: list[str], *, now: float | None = None
) -> dict[str, Any]:
    """New points for each live graph ``key``, and what else changed.

    Every poll reads only the rows after ``cursor["last_step"]`` and the run
    row. The step, elapsed and ETA texts follow every new row; the header and
    the symbio tiles (which need the whole run) are re-rendered every
    ``HEADER_REFRESH_S`` seconds, and when the run stops.

    Returns ``{"extend": [payload or None per key], "cursor", "texts":
    {key: text}, "summary" (or None), "symbio_tiles" (or None), "running"}``.
    """
    now = time.time() if now is None else now
    run_id = data.reader.validate_run_id(str(cursor.get("run_id", "")))
    run = data.reader.get_run(lake, run_id)
    if run is None:
        raise LookupError(f"run {run_id!r} disappeared")
    since = cursor.get("last_step")
    rows = data.new_rows(lake, run_id, None if since is None else int(since), POLL_COLUMNS)
    new_cursor = dict(cursor)
    texts: dict[str, str] = {}
    if rows.height:
        last = rows.row(rows.height - 1, named=True)
        new_cursor["last_step"] = int(last["step"])
        new_cursor["prev_alerts"] = int(last.get("cusum_alerts") or 0)
        total = run.get("total_iters")
        texts = {
            "step": step_text(last["step"], total),
            "elapsed": theme.fmt_duration((last.get("elapsed_ms") or 0) / 1000.0),
            "eta": theme.fmt_duration(
                data.eta_seconds(last["step"], total, last.get("elapsed_ms"))
            ),
        }
    rows = data.alert_onsets(rows, previous=int(cursor.get("prev_alerts") or 0))
    extend = [
        fig.extend_payload(rows, fig.LIVE_TRACES[k], LIVE_MAX_POINTS)
        if k in fig.LIVE_TRACES
        else None
        for k in keys
    ]
    running = run.get("status") == "running"
    due = now - float(cursor.get("refreshed_at") or 0) >= HEADER_REFRESH_S
    head = tiles = None
    if not running or due:  # also shows a run that went silent as stale
        view = data.load_run_view(lake, run_id)
        if view is not None:
            head, running = summary(view), view.running
            tiles = symbio_tiles(view) if view.symbio else None
            new_cursor["refreshed_at"] = now
    return {
        "extend": extend,
        "cursor": new_cursor,
        "texts": texts,
        "summary": head,
        "symbio_tiles": tiles,
        "running": running,
    }


def register(app: Dash, lake: Lake) -> None:
    @app.callback(
        Output({"type": "live-graph", "key": ALL}, "extendData"),
        Output({"type": "live-text", "key": ALL}, "children"),
        Output("run-cursor", "data"),
        Output("run-summary", "children"),
        Output({"type": "symbio-tiles", "key": ALL}, "children"),
        Output("run-poll", "disabled"),
        Input("run-poll", "n_intervals"),
        State("run-cursor", "data"),
        prevent_initial_call=True,
    )
    def _poll(_n: int, cursor: dict[str, Any]):
        keys = [o["id"]["key"] for o in ctx.outputs_list[0]]
        text_keys = [o["id"]["key"] for o in ctx.outputs_list[1]]
        n_tiles = len(ctx.outputs_list[4])
        try:
            upd = live_update(lake, cursor or {}, keys)
        except Exception as exc:  # noqa: BLE001 - keep the page alive; say why in the log
            log.warning("live update failed: %s", exc)
            return (
                [no_update] * len(keys),
                [no_update] * len(text_keys),
                no_update,
                no_update,
                [no_update] * n_tiles,
                no_update,
            )
        head = upd["summary"]
        return (
            [p if p is not None else no_update for p in upd["extend"]],
            # a re-rendered header carries fresh texts already
            [upd["texts"].get(k, no_update) if head is None else no_update for k in text_keys],
            upd["cursor"],
            head if head is not None else no_update,
            [upd["symbio_tiles"] or no_update] * n_tiles,
            not upd["running"],
        )
