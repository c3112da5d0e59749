"""Colours, the Plotly template and number formatting shared by every page.

The dashboard is dark (PRD §13: "dark theme, interactive hover tooltips,
responsive grid"); the page chrome lives in ``assets/style.css`` and uses the
same palette as the charts below.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import plotly.graph_objects as go
import plotly.io as pio

BG = "#0b0f14"
PANEL = "#111821"
BORDER = "#1f2a37"
GRID = "#1c2631"
TEXT = "#e5e7eb"
MUTED = "#9ca3af"

BLUE = "#60a5fa"
ORANGE = "#fb923c"
GREEN = "#34d399"
RED = "#f87171"
PURPLE = "#a78bfa"
PINK = "#f472b6"
CYAN = "#22d3ee"
YELLOW = "#facc15"

#: One colour per CUSUM signal, used by its line and by its alert markers.
SIGNAL_COLORS = {"grad": RED, "clip": ORANGE, "tps": CYAN, "val": PURPLE}
#: Colours of activations in the distribution chart and candidate table.
ACTIVATION_COLORS = {"gelu": BLUE, "relu": ORANGE, "silu": GREEN, "swiglu": PINK}
PALETTE = (BLUE, ORANGE, GREEN, PINK, PURPLE, CYAN, YELLOW, RED)

ACTIVATION_LABELS = {"gelu": "GELU", "relu": "ReLU", "silu": "SiLU", "swiglu": "SwiGLU"}
SEARCH_MODE_LABELS = {"ffn-activation-search": "FFN Activation Search"}
STATUS_CLASSES = {
    "running": "status-running",
    "completed": "status-completed",
    "failed": "status-failed",
    "cancelled": "status-cancelled",
}

TEMPLATE_NAME = "alpha_dark"

_axis = dict(
    gridcolor=GRID,
    zerolinecolor=GRID,
    linecolor=BORDER,
    tickfont=dict(color=MUTED, size=11),
    title=dict(font=dict(color=MUTED, size=11)),
)
TEMPLATE = go.layout.Template(
    layout=go.Layout(
        paper_bgcolor=PANEL,
        plot_bgcolor=PANEL,
        font=dict(family="Inter, system-ui, sans-serif", color=TEXT, size=12),
        colorway=list(PALETTE),
        xaxis=_axis,
        yaxis=_axis,
        hovermode="x unified",
        hoverlabel=dict(bgcolor="#0f172a", bordercolor=BORDER, font=dict(color=TEXT)),
        legend=dict(
            orientation="h",
            yanchor="bottom",
            y=1.02,
            xanchor="right",
            x=1,
            font=dict(size=11),
            bgcolor="rgba(0,0,0,0)",
        ),
        margin=dict(l=56, r=24, t=66, b=40),
        title=dict(
            font=dict(size=14, color=TEXT),
            x=0.01,
            xanchor="left",
            yref="container",
            y=0.97,
            yanchor="top",
        ),
    )
)
pio.templates[TEMPLATE_NAME] = TEMPLATE
#: The template as plain JSON, for figures built as dicts.
TEMPLATE_JSON = TEMPLATE.to_plotly_json()


def activation_label(name: str | None) -> str:
    """``swiglu`` -> ``SwiGLU``; unknown names pass through."""
    if not name:
        return "?"
    return ACTIVATION_LABELS.get(name.lower(), name)


def fmt_num(value: float | int | None, digits: int = 4) -> str:
    """A compact human number: 3.142, 1.2e-05, 51.3k; '—' for missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e15:
        v = int(value)
        return f"{v / 1e6:.2f}M" if abs(v) >= 10_000_000 else f"{v:,}"
    v = float(value)
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
        return f"{v:.2e}"
    if abs(v) >= 1000:
        return f"{v / 1000:.1f}k"
    return f"{v:.{digits}g}"


def fmt_duration(seconds: float | None) -> str:
    """1h 02m, 3m 05s, 42s; '—' for missing."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "—"
    s = int(round(seconds))
    if s >= 86400:
        return f"{s // 86400}d {s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def fmt_time(ts: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """UTC timestamp as 'YYYY-MM-DD HH:MM' (or ``fmt``)."""
    if ts is None:
        return "—"
    if ts.tzinfo is not None:
        ts = ts - (ts.utcoffset() or timedelta(0))
    return ts.strftime(fmt)
