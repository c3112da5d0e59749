"""Compare, ``/compare?runs=a,b``: overlaid loss curves and config differences."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from dash import Dash, Input, Output, dash_table, dcc, html

from dash_app import components as c
from dash_app import data
from dash_app import figures as fig
from storage import reader
from storage.lake import Lake

MAX_RUNS = 8


def run_ids_from_query(search: str | None) -> list[str]:
    """Run ids of ``?runs=a,b``; raises ``ValueError`` on an invalid id."""
    params = parse_qs((search or "").lstrip("?"))
    raw = ",".join(params.get("runs", []))
    ids = [reader.validate_run_id(i.strip()) for i in raw.split(",") if i.strip()]
    return list(dict.fromkeys(ids))[:MAX_RUNS]


def layout(lake: Lake, search: str | None) -> html.Div:
    ids = run_ids_from_query(search)
    known = reader.list_runs(lake)["run_id"].to_list()
    picker = dcc.Dropdown(
        id="compare-select",
        options=[{"label": r, "value": r} for r in known],
        value=[i for i in ids if i in known],
        multi=True,
        placeholder="Pick runs to compare…",
    )
    return html.Div(
        [
            html.Div(
                [html.H1("Compare"), html.Span(f"up to {MAX_RUNS} runs", className="muted")],
                className="page-head",
            ),
            html.Div(picker, className="card picker"),
            html.Div(body(lake, [i for i in ids if i in known]), id="compare-body"),
        ],
        id="compare-page",
    )


def body(lake: Lake, ids: list[str]) -> list[Any]:
    if not ids:
        return [
            html.P(
                "Pick two or more runs above (or tick them in the runs list).", className="muted"
            )
        ]
    runs = [r for r in (reader.get_run(lake, i) for i in ids) if r is not None]
    frames = {r["run_id"]: data.loss_frame(lake, r["run_id"]) for r in runs}
    diff, same = data.config_diff(runs)
    table: Any
    if diff:
        table = dash_table.DataTable(
            id="config-diff",
            columns=[{"id": "key", "name": "setting"}]
            + [{"id": r["run_id"], "name": r["run_id"]} for r in runs],
            data=diff,
            sort_action="native",
            style_cell_conditional=[
                {"if": {"column_id": "key"}, "color": "#9ca3af", "fontFamily": "monospace"}
            ],
            **c.TABLE_STYLE,
        )
    else:
        table = html.P("The configs are identical.", className="muted")
    return [
        c.section(
            "Curves",
            [
                c.static_graph("compare_loss", fig.compare_figure(frames, "loss", "Training loss")),
                c.static_graph(
                    "compare_val_loss", fig.compare_figure(frames, "val_loss", "Validation loss")
                ),
            ],
            id="section-compare-curves",
        ),
        html.Section(
            [
                html.H2("Config differences", className="section-title"),
                html.Div(table, className="card"),
                html.P(f"{same} settings are the same in every run.", className="muted hint"),
            ],
            id="section-config-diff",
            className="section",
        ),
    ]


def register(app: Dash, lake: Lake) -> None:
    @app.callback(
        Output("compare-body", "children"),
        Input("compare-select", "value"),
        prevent_initial_call=True,
    )
    def _update(values: list[str] | None):
        ids = [reader.validate_run_id(v) for v in (values or [])][:MAX_RUNS]
        return body(lake, ids)
