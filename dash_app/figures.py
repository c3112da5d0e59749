"""Figure builders: Polars frames in, Plotly figure dicts out. No I/O, no Dash.

Every chart of a run page is built from one *series frame*: one row per step
that has something to show, the lake's column names, nulls where a metric was
not measured (sparse symbio metrics, ``val_loss`` off eval steps). A trace
plots the non-null points of its column, so gaps between ``metricsInterval``
points are bridged and a run without ``val_loss`` just has an empty trace.

Live charts are declared in :data:`LIVE_TRACES`: graph key -> one
:class:`TraceSpec` per trace, in trace order. The builders draw those traces
and :func:`extend_payload` turns newly landed rows into Dash ``extendData`` for
the same traces, so a live page appends points instead of rebuilding figures.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from dash_app import theme
from storage.schema import CUSUM_BITS

#: A figure in Plotly's JSON form: ``{"data": [trace, ...], "layout": {...}}``.
Figure = dict[str, Any]

_DUAL_AXIS_MARGIN = dict(l=56, r=60, t=66, b=40)
_HIDDEN_AXIS = dict(range=[0, 1], visible=False, fixedrange=True, overlaying="y")


@dataclass(frozen=True, eq=False)
class TraceSpec:
    """How one trace takes its points from a series frame.

    ``kind="line"``: points ``(step, y)`` where ``y`` is non-null (and ``where``
    holds). ``kind="vline"``: a vertical marker at each step where ``where``
    holds, drawn on a hidden ``[0, 1]`` axis as ``x=[s, s, None]``.
    """

    y: str
    kind: str = "line"
    where: pl.Expr | None = None

    def columns(self) -> set[str]:
        cols = {"step", self.y}
        if self.where is not None:
            cols.update(self.where.meta.root_names())
        return cols


def _alert_bit(bit: int) -> pl.Expr:
    return (pl.col("cusum_alerts").fill_null(0) & bit) != 0


def _reason(value: str) -> pl.Expr:
    return pl.col("batch_change_reason") == value


CUSUM_SIGNALS = ("grad", "clip", "tps", "val")
BATCH_REASONS = ("cusum_grad", "cusum_clip", "cusum_tps", "restore")

#: graph key -> its traces, in order. Builders and live updates share these.
LIVE_TRACES: dict[str, tuple[TraceSpec, ...]] = {
    "loss": (
        TraceSpec("loss"),
        TraceSpec("val_loss"),
        TraceSpec("event", "vline", pl.col("event").str.contains("skip")),
        TraceSpec("event", "vline", pl.col("event").str.contains("checkpoint")),
    ),
    "lr": (TraceSpec("lr"),),
    "grad_norm": (TraceSpec("grad_norm"),),
    "tokens_per_sec": (TraceSpec("tokens_per_sec"),),
    "ms_per_iter": (TraceSpec("ms_per_iter"),),
    "clip": (TraceSpec("clip_coef"), TraceSpec("clip_pct")),
    "cusum": tuple(TraceSpec(f"cusum_{s}") for s in CUSUM_SIGNALS)
    + tuple(TraceSpec("cusum_alerts", "vline", _alert_bit(CUSUM_BITS[s])) for s in CUSUM_SIGNALS),
    "weight_entropy": (TraceSpec("weight_entropy"),),
    "effective_rank": (TraceSpec("effective_rank"),),
    "free_energy": (TraceSpec("free_energy"), TraceSpec("loss")),
    "fitness": (TraceSpec("fitness_score"), TraceSpec("complexity_score")),
    "batch": (TraceSpec("adaptive_batch_size"),)
    + tuple(TraceSpec("adaptive_batch_size", where=_reason(r)) for r in BATCH_REASONS),
    "mi_trajectory": (
        TraceSpec("mi_input_repr"),
        TraceSpec("mi_repr_output"),
        TraceSpec("mi_compression"),
    ),
}

#: Every column a live update has to read.
LIVE_COLUMNS: tuple[str, ...] = tuple(
    sorted({c for specs in LIVE_TRACES.values() for s in specs for c in s.columns()})
)


# -- trace data -----------------------------------------------------------------


def trace_xy(df: pl.DataFrame, spec: TraceSpec) -> tuple[list, list]:
    """The ``(x, y)`` lists of one trace; empty when a column is missing.

    Plain lists, not numpy arrays: Plotly would ship arrays base64-encoded, and
    plotly.js keeps those as ``{dtype, bdata}`` objects in ``gd.data``, which
    ``Plotly.extendTraces`` (Dash ``extendData``) cannot extend.
    """
    if df.is_empty() or not spec.columns() <= set(df.columns):
        return [], []
    rows = df.filter(pl.col(spec.y).is_not_null())
    if spec.where is not None:
        rows = rows.filter(spec.where.fill_null(False))
    steps = rows["step"].to_list()
    if spec.kind == "vline":
        x: list = []
        y: list = []
        for s in steps:
            x += [s, s, None]
            y += [0, 1, None]
        return x, y
    return steps, rows[spec.y].to_list()


def extend_payload(
    df: pl.DataFrame, specs: Sequence[TraceSpec], max_points: int | None = None
) -> list | None:
    """Dash ``extendData`` for new rows ``df``; ``None`` when nothing is new."""
    pairs = [trace_xy(df, s) for s in specs]
    xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
    if not any(xs):
        return None
    payload: list = [{"x": xs, "y": ys}, list(range(len(specs)))]
    if max_points:
        payload.append(max_points)
    return payload


def has_data(df: pl.DataFrame, *columns: str) -> bool:
    """True if any of ``columns`` has a non-null value in ``df``."""
    present = [c for c in columns if c in df.columns]
    return (
        bool(present) and df.select(pl.any_horizontal(pl.col(present).is_not_null()).any()).item()
    )


# -- building blocks ------------------------------------------------------------
#
# Figures are plain dicts in Plotly's JSON form (what ``dcc.Graph`` takes), not
# ``go.Figure``s: validating and deep-copying twenty figures of ~2,000 points
# costs more than the whole one-second budget of a run page.


def _axis_title(text: str) -> dict:
    return dict(title=dict(text=text))


def _layout(title: str, height: int = 300, **layout: Any) -> dict:
    base = dict(
        template=theme.TEMPLATE_JSON,
        title=dict(text=title),
        height=height,
        uirevision="keep",
        xaxis=_axis_title("step"),
    )
    if layout.get("yaxis2", {}).get("side") == "right":
        base["margin"] = _DUAL_AXIS_MARGIN  # room for the right axis title
    base.update(layout)
    return base


def _line(
    df: pl.DataFrame,
    spec: TraceSpec,
    name: str,
    color: str,
    *,
    width: float = 1.6,
    markers: bool = False,
    **kw: Any,
) -> dict:
    x, y = trace_xy(df, spec)
    trace = dict(
        type="scatter",
        x=x,
        y=y,
        name=name,
        mode="lines+markers" if markers else "lines",
        line=dict(color=color, width=width),
        marker=dict(size=5, color=color),
        connectgaps=True,
    )
    trace.update(kw)
    return trace


def _marker_lines(
    df: pl.DataFrame, spec: TraceSpec, name: str, color: str, *, hover: str = "%{fullData.name}"
) -> dict:
    """Dotted vertical markers (a ``vline`` spec) on the hidden ``y2`` axis."""
    x, y = trace_xy(df, spec)
    return dict(
        type="scatter",
        x=x,
        y=y,
        name=name,
        mode="lines",
        yaxis="y2",
        line=dict(color=color, width=1, dash="dot"),
        opacity=0.7,
        hovertemplate=hover + "<extra></extra>",
    )


def _hline(y: float, text: str, color: str) -> tuple[dict, dict]:
    """A dashed horizontal reference line across the plot, and its label."""
    shape = dict(
        type="line",
        xref="paper",
        x0=0,
        x1=1,
        yref="y",
        y0=y,
        y1=y,
        line=dict(color=color, dash="dash", width=1.5),
    )
    label = dict(
        xref="paper",
        x=0,
        yref="y",
        y=y,
        text=text,
        showarrow=False,
        xanchor="left",
        yanchor="bottom",
        font=dict(color=color, size=10),
    )
    return shape, label


NO_DATA = "no-data"


def without_no_data_note(figure: Figure) -> Figure:
    """``figure`` minus its "no data yet" note (for charts that live updates will fill)."""
    notes = figure["layout"].get("annotations")
    if notes:
        figure["layout"]["annotations"] = [a for a in notes if a.get("name") != NO_DATA]
    return figure


def _figure(traces: list[dict], layout: dict) -> Figure:
    """The figure dict, with a "no data yet" note when every trace is empty."""
    if not any(len(t.get("x", ())) for t in traces):
        note = dict(
            name=NO_DATA,
            text="no data yet",
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
            showarrow=False,
            font=dict(color=theme.MUTED, size=13),
        )
        layout = {**layout, "annotations": [*layout.get("annotations", []), note]}
    return {"data": traces, "layout": layout}


# -- core charts (every run) ---------------------------------------------------

_SINGLE = {
    "lr": ("Learning rate", "lr", theme.GREEN),
    "grad_norm": ("Gradient norm", "grad norm", theme.ORANGE),
    "tokens_per_sec": ("Throughput", "tokens/s", theme.CYAN),
    "ms_per_iter": ("Step time", "ms/iter", theme.PURPLE),
}


def loss_figure(df: pl.DataFrame, *, segments: Sequence[tuple[int, int, str]] = ()) -> Figure:
    """Training loss (every step), validation loss (eval steps) and engine events.

    Steps the engine skipped (loss spike, NaN) and checkpoints are dotted
    vertical markers.

    ``segments``: ``(first_step, last_step, label)`` bands, e.g. the search
    candidates that trained one after another in the run's step range.
    """
    train, val, skips, checkpoints = LIVE_TRACES["loss"]
    traces = [
        _line(df, train, "loss", theme.BLUE, width=1.2),
        _line(df, val, "val loss", theme.ORANGE, width=2, markers=True),
        _marker_lines(df, skips, "skipped step", theme.RED),
        _marker_lines(df, checkpoints, "checkpoint", theme.MUTED),
    ]
    layout = _layout("Loss", height=340, yaxis2=_HIDDEN_AXIS)
    if segments:
        layout["shapes"] = [
            dict(
                type="rect",
                xref="x",
                yref="paper",
                x0=start,
                x1=stop,
                y0=0,
                y1=1,
                fillcolor=theme.BORDER if i % 2 else theme.BG,
                opacity=0.35,
                line=dict(width=0),
                layer="below",
            )
            for i, (start, stop, _) in enumerate(segments)
        ]
        layout["annotations"] = [
            dict(
                x=start,
                y=1,
                xref="x",
                yref="paper",
                text=label,
                showarrow=False,
                xanchor="left",
                yanchor="top",
                font=dict(size=9, color=theme.MUTED),
            )
            for start, _, label in segments
        ]
    return _figure(traces, layout)


def metric_figure(df: pl.DataFrame, key: str, *, hline: float | None = None) -> Figure:
    """One of the single-series charts: ``lr``, ``grad_norm``, ``tokens_per_sec``, ``ms_per_iter``.

    ``hline`` draws a dashed reference (the ``grad_clip`` threshold on grad norm).
    """
    title, label, color = _SINGLE[key]
    layout = _layout(title, height=260)
    if key == "lr":
        layout["yaxis"] = dict(exponentformat="e")
    if hline is not None:
        shape, note = _hline(hline, f"clip {hline:g}", theme.MUTED)
        layout.update(shapes=[shape], annotations=[note])
    return _figure([_line(df, LIVE_TRACES[key][0], label, color, width=1.2)], layout)


def clip_figure(df: pl.DataFrame) -> Figure:
    """PRD §13.4: clip_coef (left axis) and clip_pct (right axis), both 0-1."""
    coef, pct = LIVE_TRACES["clip"]
    layout = _layout(
        "Gradient clipping",
        height=280,
        yaxis=dict(title=dict(text="clip_coef"), range=[0, 1.05]),
        yaxis2=dict(
            title=dict(text="clip_pct"),
            range=[0, 1.05],
            overlaying="y",
            side="right",
            showgrid=False,
        ),
    )
    traces = [
        _line(df, coef, "clip_coef", theme.GREEN, width=1.2),
        _line(df, pct, "clip_pct", theme.RED, width=1.2, yaxis="y2"),
    ]
    return _figure(traces, layout)


# -- symbio charts ---------------------------------------------------------------


def cusum_figure(df: pl.DataFrame, threshold: float | None) -> Figure:
    """PRD §13.3: four CUSUM accumulators, the alert threshold and alert markers.

    ``threshold`` is the run's ``cusumSensitivity`` (never a constant here);
    ``None`` when the run's config does not record it. Alert onsets are dotted
    vertical lines in the signal's colour; the unified hover lists all four
    accumulators and, at an alert, which monitor fired.
    """
    specs = LIVE_TRACES["cusum"]
    traces = [
        _line(
            df, spec, f"cusum_{sig}", theme.SIGNAL_COLORS[sig], width=1.4, hovertemplate="%{y:.3f}"
        )
        for spec, sig in zip(specs[:4], CUSUM_SIGNALS, strict=True)
    ]
    traces += [
        _marker_lines(df, spec, f"{sig} alert", theme.SIGNAL_COLORS[sig], hover="ALERT")
        for spec, sig in zip(specs[4:], CUSUM_SIGNALS, strict=True)
    ]
    layout = _layout("CUSUM monitor", height=340, yaxis=_axis_title("CUSUM"), yaxis2=_HIDDEN_AXIS)
    if threshold is not None:
        shape, note = _hline(threshold, f"threshold {threshold:g}", theme.YELLOW)
        layout.update(shapes=[shape], annotations=[note])
    return _figure(traces, layout)


def weight_entropy_figure(df: pl.DataFrame) -> Figure:
    spec = LIVE_TRACES["weight_entropy"][0]
    return _figure(
        [_line(df, spec, "weight entropy", theme.BLUE, markers=True)],
        _layout("Weight entropy", height=240, yaxis=_axis_title("bits")),
    )


def effective_rank_figure(df: pl.DataFrame) -> Figure:
    spec = LIVE_TRACES["effective_rank"][0]
    return _figure(
        [_line(df, spec, "effective rank", theme.GREEN, markers=True)],
        _layout("Effective rank", height=240),
    )


def free_energy_figure(df: pl.DataFrame) -> Figure:
    """Free energy (sparse) with the training loss as a faint overlay."""
    fe, loss = LIVE_TRACES["free_energy"]
    traces = [
        _line(df, fe, "free energy", theme.PINK, markers=True),
        _line(df, loss, "loss", theme.BLUE, width=1, opacity=0.35),
    ]
    return _figure(traces, _layout("Free energy", height=240))


def fitness_figure(df: pl.DataFrame) -> Figure:
    """Fitness (left) and complexity (right) on two axes."""
    fit, cx = LIVE_TRACES["fitness"]
    layout = _layout(
        "Fitness & complexity",
        height=240,
        yaxis=_axis_title("fitness"),
        yaxis2=dict(title=dict(text="complexity"), overlaying="y", side="right", showgrid=False),
    )
    traces = [
        _line(df, fit, "fitness", theme.YELLOW, markers=True),
        _line(df, cx, "complexity", theme.PURPLE, markers=True, yaxis="y2"),
    ]
    return _figure(traces, layout)


_REASON_COLORS = dict(
    zip(BATCH_REASONS, (theme.RED, theme.ORANGE, theme.CYAN, theme.GREEN), strict=True)
)
MAX_BATCH_ANNOTATIONS = 24


def batch_figure(df: pl.DataFrame) -> Figure:
    """PRD §13.6: adaptive batch size as a step chart, change reasons at transitions.

    One marker trace per reason (hover names the reason); the latest
    ``MAX_BATCH_ANNOTATIONS`` transitions are also labelled on the chart.
    """
    line, *reasons = LIVE_TRACES["batch"]
    traces = [
        _line(
            df, line, "batch", theme.BLUE, width=2, line=dict(color=theme.BLUE, width=2, shape="hv")
        )
    ]
    for spec, reason in zip(reasons, BATCH_REASONS, strict=True):
        color = _REASON_COLORS[reason]
        traces.append(
            _line(
                df,
                spec,
                reason,
                color,
                mode="markers",
                marker=dict(size=8, color=color, symbol="diamond"),
            )
        )
    layout = _layout("Adaptive batch size", height=280, yaxis=_axis_title("batch size"))
    if {"batch_change_reason", "adaptive_batch_size"} <= set(df.columns):
        changes = df.filter(pl.col("batch_change_reason").is_not_null())
        # One label per burst: a change right after a same-reason change is not labelled.
        reason, step = pl.col("batch_change_reason"), pl.col("step")
        first = (reason != reason.shift(1)) | (step - step.shift(1) > 1)
        changes = changes.filter(first.fill_null(True)).tail(MAX_BATCH_ANNOTATIONS)
        layout["annotations"] = [
            dict(
                x=step,
                y=size,
                text=reason,
                showarrow=True,
                arrowhead=0,
                ax=0,
                ay=-22,
                arrowcolor=theme.BORDER,
                font=dict(size=10, color=_REASON_COLORS.get(reason, theme.MUTED)),
            )
            for step, size, reason in changes.select(
                "step", "adaptive_batch_size", "batch_change_reason"
            ).iter_rows()
        ]
    return _figure(traces, layout)


def information_plane_figure(df: pl.DataFrame) -> Figure:
    """PRD §13.7: I(X;T) vs I(T;Y), coloured by step from blue (early) to red (late)."""
    layout = _layout(
        "Information plane",
        height=320,
        hovermode="closest",
        xaxis=_axis_title("I(X;T) bits"),
        yaxis=_axis_title("I(T;Y) bits"),
    )
    traces = []
    if {"mi_input_repr", "mi_repr_output"} <= set(df.columns):
        pts = df.filter(
            pl.col("mi_input_repr").is_not_null() & pl.col("mi_repr_output").is_not_null()
        )
        steps = pts["step"].to_list()
        traces.append(
            dict(
                type="scatter",
                x=pts["mi_input_repr"].to_list(),
                y=pts["mi_repr_output"].to_list(),
                mode="lines+markers",
                name="trajectory",
                line=dict(color="#334155", width=1),
                marker=dict(
                    size=9,
                    color=steps,
                    colorscale=[[0, "#3b82f6"], [1, "#ef4444"]],
                    colorbar=dict(title=dict(text="step"), thickness=10),
                    showscale=True,
                ),
                customdata=steps,
                hovertemplate="step %{customdata}<br>I(X;T) %{x:.3f}<br>I(T;Y) %{y:.3f}<extra></extra>",
            )
        )
    return _figure(traces, layout)


def mi_trajectory_figure(df: pl.DataFrame) -> Figure:
    """PRD §13.8: the three MI series over steps (compression on the right axis)."""
    xr, ry, comp = LIVE_TRACES["mi_trajectory"]
    layout = _layout(
        "MI trajectory",
        height=320,
        yaxis=_axis_title("bits"),
        yaxis2=dict(title=dict(text="compression"), overlaying="y", side="right", showgrid=False),
    )
    traces = [
        _line(df, xr, "I(X;T)", theme.BLUE, markers=True),
        _line(df, ry, "I(T;Y)", theme.ORANGE, markers=True),
        _line(df, comp, "I(T;Y)/I(X;T)", theme.GREEN, markers=True, yaxis="y2"),
    ]
    return _figure(traces, layout)


def activation_shares(df: pl.DataFrame) -> pl.DataFrame:
    """Parse ``activation_distribution`` JSON into one share column per activation.

    One row per generation in search runs (the generation's last distribution),
    else one row per measured step. Shares sum to 1 per row.
    """
    if "activation_distribution" not in df.columns:
        return pl.DataFrame()
    rows = df.filter(pl.col("activation_distribution").is_not_null())
    by = "symbio_generation" if has_data(rows, "symbio_generation") else "step"
    rows = rows.filter(pl.col(by).is_not_null()).group_by(by, maintain_order=True).last().sort(by)
    records = []
    for key, raw in rows.select(by, "activation_distribution").iter_rows():
        try:
            counts = {str(k): float(v) for k, v in json.loads(raw).items()}
        except (ValueError, TypeError, AttributeError):
            continue
        total = sum(counts.values())
        if total > 0:
            records.append({"x": key, **{k: v / total for k, v in counts.items()}})
    if not records:
        return pl.DataFrame()
    return pl.DataFrame(records).rename({"x": by}).fill_null(0.0)


def activation_distribution_figure(df: pl.DataFrame) -> Figure:
    """PRD §13.9: stacked area of activation shares over generations."""
    shares = activation_shares(df)
    by = shares.columns[0] if shares.width else "symbio_generation"
    per_gen = by == "symbio_generation"
    layout = _layout(
        "Activation distribution",
        height=300,
        xaxis=dict(
            title=dict(text="generation" if per_gen else "step"), dtick=1 if per_gen else None
        ),
        yaxis=dict(title=dict(text="share"), range=[0, 1], tickformat=".0%"),
    )
    traces = []
    for i, act in enumerate(c for c in shares.columns if c != by):
        color = theme.ACTIVATION_COLORS.get(act, theme.PALETTE[i % len(theme.PALETTE)])
        traces.append(
            dict(
                type="scatter",
                x=shares[by].to_list(),
                y=shares[act].to_list(),
                name=theme.activation_label(act),
                mode="lines",
                stackgroup="act",
                line=dict(color=color, width=1),
                hovertemplate="%{y:.0%}",
            )
        )
    return _figure(traces, layout)


def sparkline_figure(values: Sequence[float], color: str = theme.BLUE) -> Figure:
    """A tiny axis-less line for a stats tile."""
    trace = dict(
        type="scatter",
        y=list(values),
        mode="lines",
        line=dict(color=color, width=1.5),
        hoverinfo="skip",
    )
    layout = dict(
        height=36,
        margin=dict(l=0, r=0, t=2, b=2),
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        xaxis=dict(visible=False),
        yaxis=dict(visible=False),
        showlegend=False,
    )
    return {"data": [trace], "layout": layout}


# -- compare -------------------------------------------------------------------


def compare_figure(frames: dict[str, pl.DataFrame], column: str, title: str) -> Figure:
    """Overlay ``column`` of several runs (run id -> series frame)."""
    traces = []
    for i, (run_id, df) in enumerate(frames.items()):
        color = theme.PALETTE[i % len(theme.PALETTE)]
        traces.append(
            _line(df, TraceSpec(column), run_id, color, width=1.5, markers=column == "val_loss")
        )
    return _figure(traces, _layout(title, height=360))
