"""Plain-text rendering of multi-round results for the CLI (``radfed query run`` / ``radfed result``).

One function per result type, each a few lines: the numbers a researcher reads first (coefficient
table, curves' medians and the log-rank test, quantiles, kappa), never the raw per-time sums.
"""

from __future__ import annotations


def _num(x, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{digits}g}"


def _grid(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    fmt = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return [fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def _model(result: dict) -> list[str]:
    ratio = "exp(coef)" if result["type"] == "cox" else ("odds_ratio" if result.get("family") == "binomial" else None)
    test = "t" if result.get("family") == "gaussian" else "z"
    headers = ["covariate", "coef"] + ([ratio] if ratio else []) + ["se", "lower 95%", "upper 95%", test, "p"]
    rows = [[r["covariate"], _num(r["coef"])] + ([_num(r[ratio])] if ratio else [])
            + [_num(r["se"]), _num(r["coef_lower_95"]), _num(r["coef_upper_95"]), _num(r.get(test)), _num(r.get("p"), 3)]
            for r in result["coefficients"]]
    title = {"cox": f"Cox ({result.get('mode')}, {result.get('ties')} ties"
                    f"{', time-varying' if result.get('time_varying') else ''})",
             "glm": f"GLM {result.get('family')} on {result.get('outcome')}",
             "habitat": f"habitat model (reference {result.get('reference_habitat')})"}[result["type"]]
    head = f"{title}: n={_num(result.get('n'))}"
    if result.get("events") is not None:
        head += f", events={_num(result['events'])}"
    head += f", {result.get('rounds')} round(s)"
    conv = result.get("convergence")
    if conv:
        head += f", {'converged' if conv['converged'] else 'NOT converged'} in {conv['iterations']} iterations"
    out = [head, ""] + _grid(headers, rows)
    if result.get("loglik") is not None:
        out.append(f"log-likelihood {result['loglik']:.6g}")
    lr = result.get("likelihood_ratio_test")
    if lr:
        out.append(f"likelihood-ratio test {lr['statistic']:.4g} on {lr['df']} df, p={_num(lr['p'], 3)}")
    if result["type"] == "cox":
        out.append(f"concordance {_num(result.get('concordance'))} ({result.get('concordance_note')})")
    if result.get("r_squared") is not None:
        out.append(f"R^2 {result['r_squared']:.4g}, residual df {result['df_resid']}")
    return out


def _km(result: dict) -> list[str]:
    rows = [[g, _num(c["n"]), _num(sum(c["events"])), _num(c.get("median"))] for g, c in result["groups"].items()]
    out = [f"Kaplan-Meier by {result.get('group') or 'all'} (bins of {result['bin_days']} days)", ""]
    out += _grid(["group", "n", "events", "median"], rows)
    test = result.get("logrank")
    if test and test.get("statistic") is not None:
        out.append(f"log-rank chi2 {test['statistic']:.4g} on {test['df']} df, p={_num(test['p'], 3)}")
    for label, c in result["groups"].items():  # say, per time, where the curve is coarsened
        moved = [t for t, flag in zip(c["times"], c.get("coarsened") or []) if flag]
        if moved and c.get("merged_by"):
            out.append(f"group {label}: approximate from t = {_num(moved[0])} on ({len(moved)} time(s)): "
                       f"{', '.join(c['merged_by'])} merged bins (plain mode)")
        elif moved:
            out.append(f"group {label}: coarsened at t = {', '.join(_num(t) for t in moved)} (each released value is "
                       "exact at its time; its row counts everyone who left during its span)")
    if result.get("coarsening") and any(c.get("merged_by") for c in result["groups"].values()):
        out.append(result["coarsening"])
    if result.get("suppressed"):
        out.append(f"withheld (below the minimum on the pooled data): {', '.join(result['suppressed'])}")
    return out


def _quantile(result: dict) -> list[str]:
    rows = [[_num(q["prob"]), _num(q["value"], 10) if q["exact"] else
             f"in ({_num(q.get('lower_bound'))}, {_num(q.get('upper_bound'))}]", "exact" if q["exact"] else q["note"]]
            for q in result["quantiles"]]
    return [f"quantiles of {result['variable']}: n={_num(result['n'])}, {result['rounds']} round(s)", ""] + \
        _grid(["prob", "value", ""], rows)


def _correlation(result: dict) -> list[str]:
    names = result["variables"]
    rows = [[name] + [_num(x, 3) for x in row] for name, row in zip(names, result["correlation"])]
    return [f"Pearson correlation: n={_num(result['n'])}", ""] + _grid([""] + names, rows)


def _concordance(result: dict) -> list[str]:
    table = result["table"]
    flags = table.get("cells_complete", [[True, True], [True, True]])
    cell = lambda n, whole: str(n) if whole else f">={n}*"  # noqa: E731 - a lower bound, never a bare count
    (a, b), (c, d) = [[cell(n, ok) for n, ok in zip(row, row_ok)] for row, row_ok in zip(table["cells"], flags)]
    k = result["agreement"]
    band_ok = result.get("bands_complete", {})
    out = [f"imaging vs ctDNA progression: n={_num(result['n'])}", "",
           *_grid(["", "ctDNA yes", "ctDNA no"], [["imaging yes", a, b], ["imaging no", c, d]]),
           (f"Cohen's kappa {_num(k.get('kappa'))} (95% CI {_num(k.get('ci_lower_95'))} to {_num(k.get('ci_upper_95'))})"
            if k.get("kappa") is not None else f"Cohen's kappa {k.get('note') or 'undefined'}"),
           "posterior bands: " + ", ".join(f"{name.replace('_', ' ')} {cell(n, band_ok.get(name, True))}"
                                           for name, n in result["bands"].items())]
    if result.get("suppressed_at"):
        out.append(f"* lower bound: suppressed at {', '.join(result['suppressed_at'])} (small cells are never shown as 0)")
    return out


RENDERERS = {"cox": _model, "glm": _model, "habitat": _model, "km": _km, "quantile": _quantile,
             "correlation": _correlation, "concordance": _concordance}


def render(result: dict) -> str | None:
    """Text for a multi-round result, or None for any other pooled shape."""
    renderer = RENDERERS.get((result or {}).get("type"))
    if renderer is None or "rows" in result:
        return None
    try:
        return "\n".join(renderer(result))
    except (KeyError, TypeError, ValueError):  # an unexpected shape: the caller falls back to JSON
        return None
