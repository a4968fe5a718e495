"""Interactive figures of a job's result, built with Plotly (the console draws them with the
plotly.min.js the ``plotly`` package ships, served by the coordinator itself: no CDN).

Per result kind: Kaplan-Meier curves with 95% bands and a number-at-risk table under them; forest
plots of hazard and odds ratios; heat maps of two-way crosstabs (suppressed cells blank and labelled,
pooled lower bounds marked ``>=``); bars of counts per source; means with their SD; the correlation
matrix; the concordance table.  The numbers are the ones in the job (the same as the tables and the
CSV), never re-computed here.
"""

from __future__ import annotations

from coordinator.results import SUPPRESSED

FONT = {"family": "system-ui, sans-serif", "size": 13}
RISK_TICKS = 6


def _layout(fig, title: str, height: int = 480) -> None:
    fig.update_layout(title={"text": title, "x": 0.01}, font=FONT, height=height, template="plotly_white",
                      margin={"l": 70, "r": 20, "t": 60, "b": 50}, legend={"orientation": "h", "y": -0.15})


def _at_risk(curve: dict, t: float) -> int:
    """Number still at risk at ``t``: the at-risk count of the first reported time >= t."""
    for time, n in zip(curve["times"], curve["at_risk"]):
        if time >= t:
            return int(n)
    return 0


def km_figure(result: dict, title: str):
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    groups = {g: c for g, c in sorted((result.get("groups") or {}).items()) if c.get("times")}
    if not groups:
        return None
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.78, 0.22], vertical_spacing=0.06)
    horizon = max(max(c["times"]) for c in groups.values())
    ticks = [round(horizon * i / (RISK_TICKS - 1)) for i in range(RISK_TICKS)]
    for i, (group, c) in enumerate(groups.items()):
        color = qualitative.Plotly[i % len(qualitative.Plotly)]
        times = [0.0] + list(c["times"])
        label = f"{group} (n={c.get('n')})" + ("" if c.get("complete", True) else " *incomplete")
        if c.get("ci_lower_95") and c.get("ci_upper_95"):
            fig.add_trace(go.Scatter(x=times, y=[1.0] + list(c["ci_upper_95"]), line_shape="hv", mode="lines",
                                     line={"width": 0}, showlegend=False, hoverinfo="skip", legendgroup=str(group)),
                          row=1, col=1)
            fig.add_trace(go.Scatter(x=times, y=[1.0] + list(c["ci_lower_95"]), line_shape="hv", mode="lines",
                                     line={"width": 0}, fill="tonexty", fillcolor=_alpha(color, 0.18),
                                     name=f"{group} 95% CI", showlegend=False, hoverinfo="skip",
                                     legendgroup=str(group)), row=1, col=1)
        fig.add_trace(go.Scatter(
            x=times, y=[1.0] + list(c["survival"]), line_shape="hv", mode="lines", name=label,
            line={"color": color, "width": 2}, legendgroup=str(group),
            customdata=[[None, None]] + [[n, d] for n, d in zip(c["at_risk"], c["events"])],
            hovertemplate="day %{x}<br>survival %{y:.4f}<br>at risk %{customdata[0]}, events %{customdata[1]}"
                          f"<extra>{group}</extra>"), row=1, col=1)
        fig.add_trace(go.Scatter(x=ticks, y=[str(group)] * len(ticks), mode="text",
                                 text=[str(_at_risk(c, t)) for t in ticks], textfont={"color": color},
                                 showlegend=False, hoverinfo="skip"), row=2, col=1)
    test = result.get("logrank") or {}
    note = f" — log-rank p = {test['p']:.3g}" if test.get("p") is not None else ""
    _layout(fig, f"{title}{note}", 560)
    fig.update_yaxes(title_text="survival probability", range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(title_text="at risk", autorange="reversed", showgrid=False, row=2, col=1)
    fig.update_xaxes(title_text=f"days (bins of {result.get('bin_days')})", tickvals=ticks, row=2, col=1)
    fig.update_xaxes(tickvals=ticks, row=1, col=1)
    return fig


def _alpha(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def forest_figure(result: dict, title: str):
    import plotly.graph_objects as go

    ratio = "exp(coef)" if result.get("type") == "cox" else "odds_ratio"
    rows = [r for r in result.get("coefficients") or [] if r.get("covariate") != "intercept"]
    if result.get("family") == "gaussian":  # a linear model: coefficients on their own scale
        x = [r["coef"] for r in rows]
        low = [r["coef"] - r["coef_lower_95"] for r in rows]
        high = [r["coef_upper_95"] - r["coef"] for r in rows]
        reference, axis, label = 0.0, "linear", "coefficient (95% CI)"
    else:
        rows = [r for r in rows if r.get(ratio) is not None and r.get(f"{ratio}_lower_95") and r.get(f"{ratio}_upper_95")]
        x = [r[ratio] for r in rows]
        low = [r[ratio] - r[f"{ratio}_lower_95"] for r in rows]
        high = [r[f"{ratio}_upper_95"] - r[ratio] for r in rows]
        reference, axis = 1.0, "log"
        label = ("hazard ratio" if ratio == "exp(coef)" else "odds ratio") + " (95% CI, log scale)"
    if not rows:
        return None
    names = [r["covariate"] for r in rows]
    fig = go.Figure(go.Scatter(
        x=x, y=names, mode="markers", marker={"size": 10, "symbol": "square"},
        error_x={"type": "data", "symmetric": False, "array": high, "arrayminus": low},
        customdata=[[r.get("p")] for r in rows], hovertemplate="%{y}: %{x:.4g}, p=%{customdata[0]:.3g}<extra></extra>"))
    fig.add_vline(x=reference, line_dash="dash", line_color="grey")
    _layout(fig, title, max(260, 90 + 45 * len(rows)))
    fig.update_xaxes(type=axis, title_text=label)
    fig.update_yaxes(autorange="reversed")
    return fig


def _cell_text(cell: dict | None) -> str:
    if cell is None:
        return ""
    if cell.get("n") is None:
        return SUPPRESSED
    return (">=" if not cell.get("complete", True) else "") + f"{cell['n']:,}"


def heatmap_figure(result: dict, title: str):
    """A two-way (or wider, first dimension against the rest) crosstab of pooled counts."""
    import plotly.graph_objects as go

    rows = result.get("rows") or []
    columns = result.get("columns") or []
    if len(columns) < 2 or not rows:
        return None
    ys = sorted({str(r["key"][0]) for r in rows})
    xs = sorted({" / ".join(str(k) for k in r["key"][1:]) for r in rows})
    z = [[None] * len(xs) for _ in ys]
    text = [[""] * len(xs) for _ in ys]
    for r in rows:
        i, j = ys.index(str(r["key"][0])), xs.index(" / ".join(str(k) for k in r["key"][1:]))
        z[i][j] = r["pooled"].get("n")
        text[i][j] = _cell_text(r["pooled"])
    fig = go.Figure(go.Heatmap(z=z, x=xs, y=ys, text=text, texttemplate="%{text}", colorscale="Blues",
                               hovertemplate=f"{columns[0]} %{{y}}, {' / '.join(columns[1:])} %{{x}}: %{{text}}<extra></extra>",
                               colorbar={"title": {"text": "persons"}}))
    _layout(fig, f"{title} (pooled; '>=' a lower bound, a site suppressed a small cell)", max(320, 120 + 50 * len(ys)))
    fig.update_xaxes(title_text=" / ".join(columns[1:]), type="category")
    fig.update_yaxes(title_text=columns[0], type="category")
    return fig


def bars_figure(result: dict, title: str):
    """Counts per cell, pooled and per site side by side (suppressed cells labelled, never 0)."""
    import plotly.graph_objects as go

    rows = result.get("rows") or []
    if not rows:
        return None
    labels = [" / ".join(str(k) for k in r["key"]) or "all" for r in rows]
    fig = go.Figure()
    for source in ["pooled"] + list(result.get("sites") or []):
        cells = [r["pooled"] if source == "pooled" else r["per_site"].get(source) for r in rows]
        fig.add_trace(go.Bar(x=labels, y=[(c or {}).get("n") for c in cells], name=source,
                             text=[_cell_text(c) for c in cells], textposition="outside"))
    _layout(fig, title)
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="persons")
    return fig


def summary_figure(result: dict, title: str):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = result.get("rows") or []
    if not rows:
        return None
    sources = ["pooled"] + list(result.get("sites") or [])
    fig = make_subplots(rows=1, cols=len(rows), subplot_titles=[f"{r['key'][0]}: mean ± sd" for r in rows])
    for k, r in enumerate(rows, 1):
        cells = [r["pooled"] if s == "pooled" else r["per_site"].get(s) or {} for s in sources]
        fig.add_trace(go.Scatter(x=sources, y=[c.get("mean") for c in cells], mode="markers", showlegend=False,
                                 error_y={"type": "data", "array": [c.get("sd") or 0 for c in cells]},
                                 text=[_cell_text(c) for c in cells],
                                 hovertemplate="%{x}: %{y:.4g} (n=%{text})<extra></extra>"), row=1, col=k)
    _layout(fig, title)
    return fig


def matrix_figure(result: dict, title: str):
    import plotly.graph_objects as go

    names = result.get("variables") or []
    matrix = result.get("correlation") or []
    if not names:
        return None
    fig = go.Figure(go.Heatmap(z=matrix, x=names, y=names, zmin=-1, zmax=1, colorscale="RdBu", texttemplate="%{z:.3f}"))
    _layout(fig, f"{title} (n={result.get('n')})", 420)
    fig.update_yaxes(autorange="reversed")
    return fig


def concordance_figure(result: dict, title: str):
    import plotly.graph_objects as go

    table = result.get("table") or {}
    cells = table.get("cells")
    if not cells:
        return None
    flags = table.get("cells_complete") or [[True, True], [True, True]]
    text = [[(">=" if not ok else "") + str(n) for n, ok in zip(row, row_ok)] for row, row_ok in zip(cells, flags)]
    fig = go.Figure(go.Heatmap(z=cells, x=["ctDNA yes", "ctDNA no"], y=["imaging yes", "imaging no"], text=text,
                               texttemplate="%{text}", colorscale="Greens"))
    _layout(fig, title, 360)
    fig.update_yaxes(autorange="reversed")
    return fig


def quantile_figure(result: dict, title: str):
    import plotly.graph_objects as go

    rows = [q for q in result.get("quantiles") or [] if q.get("value") is not None]
    if not rows:
        return None
    fig = go.Figure(go.Scatter(x=[q["prob"] for q in rows], y=[q["value"] for q in rows], mode="markers+lines"))
    _layout(fig, f"{title}: {result.get('variable')}", 380)
    fig.update_xaxes(title_text="probability")
    fig.update_yaxes(title_text=str(result.get("variable")))
    return fig


def _cells_figure(result: dict, title: str):
    if result.get("type") == "summary":
        return summary_figure(result, title)
    if result.get("type") == "crosstab" and len(result.get("columns") or []) >= 2:
        return heatmap_figure(result, title)
    return bars_figure(result, title)


FIGURES = {"km": km_figure, "cox": forest_figure, "glm": forest_figure, "habitat": forest_figure,
           "correlation": matrix_figure, "concordance": concordance_figure, "quantile": quantile_figure}


def figure_for(job: dict) -> str | None:
    """The job's figure as Plotly JSON text, or None when its result has none."""
    pooled = job.get("pooled") or {}
    kind = pooled.get("type")
    title = f"{kind} — job {job['job_id'][:8]}"
    builder = _cells_figure if "rows" in pooled else FIGURES.get(kind)
    if builder is None:
        return None
    try:
        fig = builder(pooled, title)
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return None if fig is None else fig.to_json()
