"""The runs list, ``/``: every run in the lake, filterable and sortable, with progress."""

from __future__ import annotations

import logging
from typing import Any

import polars as pl
from dash import Dash, Input, Output, dash_table, dcc, html
from dash.dash_table.Format import Format, Scheme

from dash_app import components as c
from dash_app import data, theme
from storage import reader
from storage.lake import Lake

log = logging.getLogger(__name__)

COLUMNS = [
    {"id": "run", "name": "run", "presentation": "markdown"},
    {"id": "status", "name": "status"},
    {"id": "domain", "name": "domain"},
    {"id": "activation", "name": "activation"},
    {"id": "symbio", "name": "symbio"},
    {"id": "steps", "name": "steps"},
    {
        "id": "progress",
        "name": "progress",
        "type": "numeric",
        "format": Format(precision=0, scheme=Scheme.percentage),
    },
    {
        "id": "best_val_loss",
        "name": "best val loss",
        "type": "numeric",
        "format": Format(precision=4, scheme=Scheme.fixed),
    },
    {"id": "started", "name": "started (UTC)"},
]


def table_rows(lake: Lake, runs: pl.DataFrame) -> list[dict[str, Any]]:
    """One table row per run; running runs get their newest landed step."""
    live = data.latest_steps(lake, runs)
    rows = []
    for r in runs.iter_rows(named=True):
        try:  # the id goes into a markdown link: only well-formed ids get one
            run_id = reader.validate_run_id(r["run_id"])
        except ValueError:
            log.warning("skipping run with a malformed id %r", str(r["run_id"])[:80])
            continue
        step = live.get(run_id, r.get("latest_step"))
        total = r.get("total_iters")
        activation = r.get("ffn_activation") or data.parse_json(r.get("model_config")).get(
            "ffn_activation"
        )
        winner = data.parse_json(r.get("symbio_winner")).get("activation")
        label = theme.activation_label(activation) if activation else ""
        if winner:  # a finished search: the activation it recommends
            best = theme.activation_label(winner)
            label = f"{best} (winner)" if winner == activation else f"{label} → {best} (winner)"
        mode = r.get("symbio_mode")
        rows.append(
            {
                "id": run_id,
                "run": f"[{run_id.replace('_', chr(92) + '_')}](/runs/{run_id})",
                "status": r.get("status") or "",
                "domain": r.get("domain") or "",
                "activation": label,
                "symbio": ("Symbio" + (" · search" if mode and mode != "none" else ""))
                if data.is_symbio(r)
                else "",
                "steps": f"{step or 0:,} / {total:,}" if total else f"{step or 0:,}",
                "progress": data.progress(step, total),
                "best_val_loss": r.get("best_val_loss"),
                "started": theme.fmt_time(r.get("started_at")),
            }
        )
    return rows


def row_styles(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Status colours, the Symbio badge and a data bar in the progress cell."""
    styles: list[dict[str, Any]] = [
        {"if": {"column_id": "status", "filter_query": f'{{status}} = "{s}"'}, "color": color}
        for s, color in (
            ("running", theme.CYAN),
            ("completed", theme.GREEN),
            ("failed", theme.RED),
            ("cancelled", theme.MUTED),
        )
    ]
    styles.append(
        {
            "if": {"column_id": "symbio", "filter_query": '{symbio} contains "Symbio"'},
            "color": theme.PINK,
            "fontWeight": "600",
        }
    )
    for row in rows:
        frac = row.get("progress")
        if frac is None:
            continue
        pct = round(frac * 100, 1)
        color = (
            "rgba(34, 211, 238, 0.35)" if row["status"] == "running" else "rgba(52, 211, 153, 0.22)"
        )
        styles.append(
            {
                "if": {"column_id": "progress", "filter_query": f'{{id}} = "{row["id"]}"'},
                "background": f"linear-gradient(90deg, {color} 0%, {color} {pct}%, transparent {pct}%)",
            }
        )
    return styles


def layout(lake: Lake, *, poll_ms: int) -> html.Div:
    runs = reader.list_runs(lake)
    if runs.is_empty():
        return c.empty_state(
            "No runs yet",
            "Train with `alpha train --lake <this lake>` and the run appears here.",
        )
    rows = table_rows(lake, runs)
    head = html.Div(
        [
            html.H1("Runs"),
            html.Span(f"{len(rows)} runs", id="runs-count", className="muted"),
            html.Div(className="spacer"),
            dcc.Link(
                "Compare selected", id="compare-link", href="/compare", className="button disabled"
            ),
        ],
        className="page-head",
    )
    table = dash_table.DataTable(
        id="runs-table",
        columns=COLUMNS,
        data=rows,
        filter_action="native",
        sort_action="native",
        sort_mode="multi",
        row_selectable="multi",
        selected_row_ids=[],
        page_size=50,
        markdown_options={"link_target": "_self"},
        style_data_conditional=row_styles(rows),
        **c.TABLE_STYLE,
    )
    hint = html.P(
        "Type in the row under the headers to filter (e.g. `running`, `> 2.5`); click a header to sort; "
        "tick runs and press Compare.",
        className="muted hint",
    )
    return html.Div(
        [
            head,
            html.Div(table, className="card"),
            hint,
            dcc.Interval(id="runs-poll", interval=poll_ms * 2),
        ],
        id="runs-page",
    )


def register(app: Dash, lake: Lake) -> None:
    @app.callback(
        Output("runs-table", "data"),
        Output("runs-table", "style_data_conditional"),
        Output("runs-count", "children"),
        Input("runs-poll", "n_intervals"),
        prevent_initial_call=True,
    )
    def _refresh(_n: int):
        rows = table_rows(lake, reader.list_runs(lake))
        return rows, row_styles(rows), f"{len(rows)} runs"

    @app.callback(
        Output("compare-link", "href"),
        Output("compare-link", "className"),
        Input("runs-table", "selected_row_ids"),
    )
    def _compare_link(selected: list[str] | None):
        ids = [reader.validate_run_id(i) for i in (selected or [])]
        if len(ids) < 2:
            return "/compare" + (f"?runs={ids[0]}" if ids else ""), "button disabled"
        return f"/compare?runs={','.join(ids)}", "button"
