"""Small reusable pieces of page layout: badges, stat tiles, chart cards, panels."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from dash import dcc, html

from dash_app import theme
from dash_app.figures import sparkline_figure, without_no_data_note

GRAPH_CONFIG = {"displaylogo": False, "responsive": True}


def badge(text: str, kind: str = "neutral", **kw: Any) -> html.Span:
    return html.Span(text, className=f"badge badge-{kind}", **kw)


def status_badge(status: str | None) -> html.Span:
    status = status or "unknown"
    return badge(status, theme.STATUS_CLASSES.get(status, "neutral"), id="run-status")


def live_graph(key: str, figure: dict, *, wide: bool = False, running: bool = False) -> html.Div:
    """A chart card whose graph takes live ``extendData`` (id type ``live-graph``).

    ``running``: the run is still training, so an empty chart will fill in;
    it gets no "no data yet" note (appended points would not remove it).
    """
    if running:
        figure = without_no_data_note(figure)
    return html.Div(
        dcc.Graph(id={"type": "live-graph", "key": key}, figure=figure, config=GRAPH_CONFIG),
        id=f"card-{key}",
        className="card chart" + (" wide" if wide else ""),
    )


def static_graph(key: str, figure: dict, *, wide: bool = False) -> html.Div:
    return html.Div(
        dcc.Graph(id=f"graph-{key}", figure=figure, config=GRAPH_CONFIG),
        id=f"card-{key}",
        className="card chart" + (" wide" if wide else ""),
    )


def section(title: str, children: Sequence[Any], *, id: str, grid: str = "grid") -> html.Section:
    return html.Section(
        [html.H2(title, className="section-title"), html.Div(list(children), className=grid)],
        id=id,
        className="section",
    )


def tile(
    label: str,
    value: str,
    *,
    sub: str | None = None,
    spark: Sequence[float] | None = None,
    color: str = theme.BLUE,
    id: str | None = None,
    extra: Any = None,
    live: str | None = None,
) -> html.Div:
    """A stat tile: label, big value, optional sub-line, trend marker and sparkline.

    ``live`` gives the value a ``{"type": "live-text", "key": live}`` id, so
    that polls can update it without re-rendering the tile.
    """
    value_kw = {"id": {"type": "live-text", "key": live}} if live else {}
    children: list[Any] = [
        html.Div(label, className="tile-label"),
        html.Div(
            [html.Span(value, className="tile-value", **value_kw), extra], className="tile-main"
        ),
    ]
    if sub:
        children.append(html.Div(sub, className="tile-sub"))
    if spark is not None and len(spark) > 1:
        children.append(
            dcc.Graph(
                figure=sparkline_figure(spark, color),
                config={"staticPlot": True, "displayModeBar": False},
                className="sparkline",
            )
        )
    kw = {"id": id} if id else {}
    return html.Div(children, className="tile", **kw)


def progress_bar(fraction: float | None) -> html.Div:
    pct = 0.0 if fraction is None else max(0.0, min(1.0, fraction)) * 100
    return html.Div(
        html.Div(className="progress-fill", style={"width": f"{pct:.1f}%"}), className="progress"
    )


def json_panel(title: str, value: dict[str, Any], *, id: str, open: bool = False) -> html.Details:
    """A collapsible pretty-printed JSON block (PRD §13.11)."""
    return html.Details(
        [
            html.Summary(title),
            html.Pre(json.dumps(value, indent=2, sort_keys=True, default=str), className="json"),
        ],
        id=id,
        className="card details",
        open=open,
    )


def empty_state(title: str, text: str) -> html.Div:
    return html.Div([html.H2(title), html.P(text, className="muted")], className="card empty")


def warning_banner(text: str, **kw: Any) -> html.Div:
    """A one-line warning above a page (e.g. lake objects the reader skipped)."""
    return html.Div(
        [html.Span("⚠", className="warn-icon"), html.Span(text)],
        className="warning-banner",
        role="alert",
        **kw,
    )


# -- shared DataTable styling ------------------------------------------------------

TABLE_STYLE = dict(
    style_table={"overflowX": "auto"},
    style_header={
        "backgroundColor": theme.BG,
        "color": theme.MUTED,
        "fontWeight": "600",
        "border": "none",
        "borderBottom": f"1px solid {theme.BORDER}",
        "textTransform": "uppercase",
        "fontSize": "11px",
        "letterSpacing": "0.04em",
    },
    style_cell={
        "backgroundColor": theme.PANEL,
        "color": theme.TEXT,
        "border": "none",
        "borderBottom": f"1px solid {theme.BORDER}",
        "fontFamily": "Inter, system-ui, sans-serif",
        "fontSize": "13px",
        "padding": "8px 10px",
        "textAlign": "left",
        "whiteSpace": "nowrap",
    },
    style_filter={"backgroundColor": theme.BG, "color": theme.TEXT, "border": "none"},
    css=[
        {"selector": ".dash-spreadsheet td div", "rule": "line-height: 1.3;"},
        {
            "selector": "td.cell--selected, td.focused",
            "rule": f"background-color: {theme.BORDER} !important;",
        },
        {
            "selector": ".dash-cell-value a, .dash-cell a",
            "rule": f"color: {theme.BLUE}; text-decoration: none;",
        },
        {"selector": ".dash-cell p", "rule": "margin: 0;"},
        {"selector": ".dash-filter input", "rule": f"color: {theme.TEXT} !important;"},
    ],
)
