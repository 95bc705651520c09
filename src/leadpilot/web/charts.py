"""Plotly figures for the dashboard, built in Python from the dashboard service's figures, embedded as JSON."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import plotly.graph_objects as go

Translate = Callable[[str], str]
_LAYOUT: dict[str, Any] = {
    "margin": {"l": 60, "r": 20, "t": 40, "b": 40},
    "height": 320,
    "paper_bgcolor": "rgba(0,0,0,0)",
    "plot_bgcolor": "rgba(0,0,0,0)",
}


def script_json(figure: go.Figure) -> str:
    """The figure as JSON that is safe inside a ``<script type="application/json">`` element."""
    return figure.to_json().replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def funnel_figure(funnel: list[dict[str, Any]], t: Translate) -> go.Figure:
    """Leads by stage as a funnel, in life-cycle order."""
    figure = go.Figure(go.Funnel(y=[t(f"stage.{row['stage']}") for row in funnel], x=[row["leads"] for row in funnel]))
    figure.update_layout(title=t("dashboard.funnel"), **_LAYOUT)
    return figure


def leaderboard_figure(rows: list[dict[str, Any]], t: Translate) -> go.Figure:
    """Won and lost leads per salesperson as grouped bars."""
    names = [row["username"] for row in rows]
    figure = go.Figure(
        [
            go.Bar(name=t("dashboard.won"), x=names, y=[row["won"] for row in rows]),
            go.Bar(name=t("dashboard.open"), x=names, y=[row["open"] for row in rows]),
            go.Bar(name=t("dashboard.lost"), x=names, y=[row["lost"] for row in rows]),
        ]
    )
    figure.update_layout(title=t("dashboard.leaderboard"), barmode="group", **_LAYOUT)
    return figure


def breakdown_figure(rows: list[dict[str, Any]], title: str, t: Translate) -> go.Figure:
    """Leads and won leads per product line or region as bars."""
    keys = [str(row["key"]) for row in rows]
    figure = go.Figure(
        [
            go.Bar(name=t("dashboard.leads"), x=keys, y=[row["leads"] for row in rows]),
            go.Bar(name=t("dashboard.won"), x=keys, y=[row["won"] for row in rows]),
        ]
    )
    figure.update_layout(title=title, barmode="group", **_LAYOUT)
    return figure


def dashboard_charts(summary: dict[str, Any], t: Translate) -> dict[str, str]:
    """Chart id -> figure JSON for the dashboard page."""
    return {
        "funnel": script_json(funnel_figure(summary["funnel"], t)),
        "leaderboard": script_json(leaderboard_figure(summary["leaderboard"], t)),
        "product_line": script_json(breakdown_figure(summary["by_product_line"], t("dashboard.by_product_line"), t)),
        "region": script_json(breakdown_figure(summary["by_region"], t("dashboard.by_region"), t)),
    }
