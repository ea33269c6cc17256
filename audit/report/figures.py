"""Plotly figures shared by the report and the dashboard.

Category labels come from datasets and models, and plotly renders a subset of HTML inside labels
(``<b>``, ``<a href>``), so every label is HTML-escaped before it reaches a figure: plotly then
shows ``<script>`` as those characters. Data travel as JSON, which plotly escapes on export.
"""

from __future__ import annotations

import html
import json
import re
import uuid
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from markupsafe import Markup

from audit.report.formatting import (
    INSUFFICIENT,
    format_count,
    is_missing,
    metric_title,
    natural_key,
)

_HEIGHT_PX = 360
_PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#B279A2", "#E45756", "#72B7B2", "#9D755D")
#: The look of every chart, a few lines: plotly's default template is 8 KB of JSON per figure.
_LOOK = go.layout.Template(
    layout={
        "font": {"family": "system-ui, sans-serif", "size": 12, "color": "#1d1d1f"},
        "paper_bgcolor": "white",
        "plot_bgcolor": "#f4f5f7",
        "colorway": list(_PALETTE),
        "xaxis": {"gridcolor": "white", "automargin": True},
        "yaxis": {"gridcolor": "white", "zerolinecolor": "#bbb", "automargin": True},
        "hoverlabel": {"font": {"size": 12}},
    }
)
_ASSETS = Path(__file__).resolve().parent / "assets"


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """plotly.js for the report: the basic bundle (scatter and bar, all the report draws) shipped
    in ``assets/``, a quarter of the size, when it is the release the installed plotly embeds;
    else plotly's own full bundle."""
    from plotly.offline import get_plotlyjs

    full = get_plotlyjs()
    release = re.search(r"plotly\.js v(\d+\.\d+\.\d+)", full[:300])
    basic = _ASSETS / f"plotly-basic-{release.group(1)}.min.js" if release else None
    if basic is not None and basic.is_file():
        return basic.read_text(encoding="utf-8")
    return full


def safe_label(text: object) -> str:
    """A category label plotly displays literally (plotly decodes ``&lt; &gt; &amp;``)."""
    return html.escape(str(text), quote=False)


def _error_arrays(frame: pd.DataFrame, scale: float) -> dict[str, object]:
    value = frame["value"].astype(float) * scale
    upper = (frame["ci_high"].astype(float) * scale - value).clip(lower=0)
    lower = (value - frame["ci_low"].astype(float) * scale).clip(lower=0)
    return {
        "type": "data",
        "symmetric": False,
        # Four significant digits: a chart shows no more, and 17 of them per bar add up.
        "array": [float(f"{v:.4g}") for v in upper.fillna(0)],
        "arrayminus": [float(f"{v:.4g}") for v in lower.fillna(0)],
        "visible": True,
    }


def _bar_values(frame: pd.DataFrame) -> pd.DataFrame:
    rows = frame.copy()
    for column in ("ci_low", "ci_high", "note", "n"):
        if column not in rows:
            rows[column] = None
    # An "insufficient data" row keeps its place on the axis but gets no bar.
    rows["value"] = [
        None if str(note or "") == INSUFFICIENT or is_missing(v) else float(v)
        for v, note in zip(rows["value"], rows["note"], strict=True)
    ]
    return rows


def in_natural_order(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows by their ``group`` in natural order (``formatting.natural_key``)."""
    keys = [natural_key(group) for group in rows["group"]]
    return rows.iloc[sorted(range(len(rows)), key=keys.__getitem__)]


def group_bars(
    runs: Sequence[tuple[str, pd.DataFrame]], title: str, metric: str, percent: bool = False
) -> go.Figure:
    """One small panel per group axis (and intersection): bars per group with 95% intervals,
    one colour per run; with one run, the overall value is a dashed line in every panel.

    Groups are in their natural order (age ranges by age). When the values shown span more than
    two orders of magnitude (a toxicity score near 1e-4 beside one near 0.3), the value axis is
    logarithmic, and its title says so. Each frame has ``axis, group, value, ci_low, ci_high, n,
    note`` (rows with ``axis == 'all'`` are the overall value).
    """
    from plotly.subplots import make_subplots

    scale = 100.0 if percent else 1.0
    prepared = [(label, _bar_values(frame)) for label, frame in runs]
    axes = list(
        dict.fromkeys(
            str(a) for _, rows in prepared for a in rows["axis"].astype(str) if a != "all"
        )
    )
    panels = axes or ["all"]
    figure = make_subplots(
        rows=len(panels),
        cols=1,
        subplot_titles=[safe_label(a) for a in panels],
        vertical_spacing=min(0.12, 0.5 / max(len(panels), 1)),
    )
    shown = []
    for i, (label, rows) in enumerate(prepared):
        for row, axis in enumerate(panels, start=1):
            groups = rows[rows["axis"].astype(str).eq(axis)]
            groups = groups.iloc[
                sorted(range(len(groups)), key=lambda j: natural_key(groups["group"].iloc[j]))
            ]
            figure.add_bar(
                name=safe_label(label),
                legendgroup=safe_label(label),
                showlegend=row == 1 and len(prepared) > 1,
                x=[safe_label(g) for g in groups["group"]],
                y=groups["value"].astype(float) * scale,
                error_y=_error_arrays(groups, scale),
                hovertext=[format_count(n) for n in groups["n"]],
                marker_color=_PALETTE[i % len(_PALETTE)],
                row=row,
                col=1,
            )
            shown += [v for v in groups["value"].astype(float) * scale if v == v and v > 0]
        overall = rows[rows["axis"].astype(str).eq("all")]
        if len(prepared) == 1 and not overall.empty and not is_missing(overall["value"].iloc[0]):
            figure.add_hline(
                y=float(overall["value"].iloc[0]) * scale,
                line_dash="dash",
                annotation_text="overall",
                line_color="#555",
                row="all",
                col=1,
            )
    logarithmic = bool(shown) and max(shown) / min(shown) > 100
    value_title = metric_title(metric) + (" (%)" if percent else "")
    if logarithmic:
        value_title += ", log scale"
        figure.update_yaxes(type="log")
    figure.update_yaxes(title_text=safe_label(value_title), title_font_size=11)
    figure.update_layout(
        template=_LOOK,
        title=safe_label(title),
        height=max(_HEIGHT_PX, 90 + 230 * len(panels)),
        margin={"l": 60, "r": 20, "t": 70, "b": 60},
        barmode="group",
        showlegend=len(prepared) > 1,
    )
    return figure


def confusion_heatmap(counts: pd.DataFrame, title: str) -> go.Figure:
    """Rows: true values; columns: predictions; cells: counts (row shares on hover)."""
    shares = counts.div(counts.sum(axis=1).where(lambda s: s > 0), axis=0).fillna(0)
    figure = go.Figure(
        go.Heatmap(
            z=shares.to_numpy(),
            x=[safe_label(c) for c in counts.columns],
            y=[safe_label(r) for r in counts.index],
            text=counts.to_numpy(),
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1,
            colorbar={"title": "row share"},
        )
    )
    figure.update_layout(
        template=_LOOK,
        title=safe_label(title),
        xaxis_title="prediction",
        yaxis_title="true value",
        height=max(_HEIGHT_PX, 40 * len(counts) + 160),
        yaxis_autorange="reversed",
    )
    return figure


def term_bars(frame: pd.DataFrame, title: str, terms: Sequence[str]) -> go.Figure:
    """Grouped bars: for each term, each group's mean TF-IDF with its interval."""
    figure = go.Figure()
    for group, rows in frame[frame["term"].isin(terms)].groupby("group", sort=True):
        rows = rows.set_index("term").reindex(list(terms)).reset_index()
        figure.add_bar(
            name=safe_label(group),
            x=[safe_label(t) for t in rows["term"]],
            y=rows["value"].astype(float),
            error_y=_error_arrays(rows, 1.0),
        )
    figure.update_layout(
        template=_LOOK,
        title=safe_label(title),
        barmode="group",
        yaxis_title=metric_title("mean_tfidf"),
        height=_HEIGHT_PX + 40,
        margin={"l": 50, "r": 20, "t": 50, "b": 90},
    )
    return figure


def figure_html(figure: go.Figure, nonce: str = "") -> Markup:
    """A figure as a compact HTML fragment: a sized ``div`` and one call to ``Plotly.newPlot``;
    plotly.js itself and the charts' look (``look_script``) are embedded once by the page.

    ``nonce`` marks the fragment's script as the report's own under the page's
    Content-Security-Policy, which refuses every script without it. The figure travels as JSON
    with ``<``, ``>`` and ``&`` escaped, so no text in it can end the script.
    """
    spec = json.loads(pio.to_json(figure, pretty=False))
    spec["layout"].pop("template", None)  # the page's one copy stands in (look_script)
    height = int(spec["layout"].get("height") or _HEIGHT_PX)
    element = f"fig-{uuid.uuid4().hex[:12]}"
    call = (
        f'Plotly.newPlot("{element}",f.data,Object.assign({{template:window.AUDIT_LOOK}},'
        f"f.layout),{{displaylogo:false,responsive:true}});"
    )
    attribute = f' nonce="{nonce}"' if nonce else ""
    return Markup(  # noqa: S704 - our own markup; the figure's text is JSON-escaped
        f'<div id="{element}" class="plotly-graph-div" style="height:{height}px;width:100%">'
        f"</div><script{attribute}>(function(){{var f={_script_json(spec)};{call}}})();</script>"
    )


def look_script() -> str:
    """The charts' look (``_LOOK``) as the page's one ``window.AUDIT_LOOK``."""
    return f"window.AUDIT_LOOK={_script_json(_LOOK.to_plotly_json())};"


def _script_json(value: object) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
