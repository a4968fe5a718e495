"""PNG plots of a job's results: pooled and per-site side by side; suppressed cells drawn as such."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FormatStrFormatter  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60] or "plot"


def _label(key: list) -> str:
    return " / ".join(str(k) for k in key) or "all"


def _saved(fig, path: Path, tight: bool = True) -> Path:
    """Write ``fig`` as PNG (110 dpi) to ``path`` and free it: pyplot keeps every open figure."""
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _counts(job: dict, title: str, path: Path) -> Path:
    pooled = job["pooled"]
    rows, sites = pooled["rows"], pooled["sites"]
    labels = [_label(r["key"]) for r in rows]
    series = ["pooled"] + sites
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) * len(series) / 2 + 3), 4.5))
    for j, name in enumerate(series):
        for i, row in enumerate(rows):
            cell = row["pooled"] if name == "pooled" else row["per_site"].get(name)
            x = i + (j - (len(series) - 1) / 2) * width
            if cell is None:
                continue
            if cell.get("n") is None:  # suppressed: a marked gap, never a zero bar
                ax.text(x, 0, "supp.", rotation=90, ha="center", va="bottom", fontsize=7, color="grey")
                continue
            incomplete = name == "pooled" and not cell.get("complete", True)
            ax.bar(x, cell["n"], width, color=f"C{j}", hatch="//" if incomplete else None,
                   label=name if i == 0 or not ax.get_legend_handles_labels()[1].count(name) else None)
    handles, names = ax.get_legend_handles_labels()
    seen = {}
    for h, n in zip(handles, names):
        seen.setdefault(n, h)
    ax.legend(seen.values(), seen.keys(), fontsize=8)
    ax.set_xticks(range(len(rows)), labels, rotation=30 if len(rows) > 4 else 0, ha="right" if len(rows) > 4 else "center",
                  fontsize=8)
    ax.set_ylabel("persons")
    ax.set_title(f"{title}\n(hatched: pooled lower bound, a site suppressed a small cell)", fontsize=10)
    return _saved(fig, path)


def _summary(job: dict, title: str, path: Path) -> Path:
    pooled = job["pooled"]
    rows, sites = pooled["rows"], pooled["sites"]
    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 4), squeeze=False)
    for ax, row in zip(axes[0], rows):
        names = ["pooled"] + sites
        cells = [row["pooled"]] + [row["per_site"].get(s) for s in sites]
        for i, (name, cell) in enumerate(zip(names, cells)):
            if not cell or cell.get("mean") is None:
                ax.text(i, 0.5, "supp.", transform=ax.get_xaxis_transform(), ha="center", color="grey")
                continue
            ax.errorbar(i, cell["mean"], yerr=cell.get("sd") or 0, fmt="o", color=f"C{i}", capsize=4)
            ax.annotate(f"n={cell['n']}", (i, cell["mean"]), textcoords="offset points", xytext=(6, 0), fontsize=7)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_title(f"{_label(row['key'])}: mean ± sd", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _saved(fig, path)


def _curves(job: dict, title: str, path: Path) -> Path | None:
    """Survival curves from a stats result: {"curves": {group: {"times": [...], "survival": [...]}}} or flat."""
    pooled = job["pooled"]
    curves = pooled.get("curves") or pooled.get("groups") or ({"all": pooled} if "survival" in pooled else None)
    if not isinstance(curves, dict):
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    drawn = 0
    for i, (group, curve) in enumerate(sorted(curves.items())):
        times = curve.get("times") or curve.get("timeline")
        survival = curve.get("survival") or curve.get("survival_function")
        if not times or not survival:
            continue
        ax.step([0] + list(times), [1.0] + list(survival), where="post", color=f"C{i}", label=str(group))
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("days")
    ax.set_ylabel("survival")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _saved(fig, path)


def km_plot(result: dict, title: str, path: Path) -> Path | None:
    """Pooled Kaplan-Meier step curves with 95% bands and a number-at-risk table under the axes."""
    groups = {g: c for g, c in sorted((result.get("groups") or {}).items()) if c.get("times")}
    if not groups:
        return None
    fig = plt.figure(figsize=(7, 5.2))
    ax = fig.add_axes((0.11, 0.1 + 0.045 * len(groups) + 0.08, 0.85, 0.72 - 0.045 * len(groups)))
    horizon = max(max(c["times"]) for c in groups.values())
    for i, (group, c) in enumerate(groups.items()):
        times = [0.0] + list(c["times"])
        ax.step(times, [1.0] + list(c["survival"]), where="post", color=f"C{i}", label=f"{group} (n={c.get('n', '?')})")
        if c.get("ci_lower_95") and c.get("ci_upper_95"):
            ax.fill_between(times, [1.0] + list(c["ci_lower_95"]), [1.0] + list(c["ci_upper_95"]), step="post",
                            color=f"C{i}", alpha=0.15, linewidth=0)
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, horizon)
    ax.set_ylabel("survival probability")
    test = result.get("logrank") or {}
    note = f"  log-rank p = {test['p']:.3g}" if test.get("p") is not None else ""
    ax.set_title(f"{title}{note}", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    ticks = [t for t in ax.get_xticks() if 0 <= t <= horizon]
    ax.set_xticks(ticks)
    ax.set_xlabel(f"days (bins of {result.get('bin_days', '?')})", fontsize=8)
    # the risk table: number still at risk at each tick, from the pooled at-risk step function
    table = fig.add_axes((0.11, 0.03, 0.85, 0.045 * len(groups) + 0.02), sharex=ax)
    table.set_axis_off()
    left = blended_transform_factory(table.transAxes, table.transData)  # x in axes fraction, y in rows
    table.text(-0.03, len(groups) + 0.2, "at risk", fontsize=8, ha="right", transform=left)
    for row, (group, c) in enumerate(groups.items()):
        y = len(groups) - row - 0.5
        table.text(-0.03, y, str(group), fontsize=8, ha="right", va="center", color=f"C{row}", transform=left)
        for tick in ticks:
            table.text(tick, y, str(_at_risk(c, tick)), fontsize=8, ha="center", va="center")
    table.set_ylim(0, len(groups) + 0.6)
    return _saved(fig, path, tight=False)  # the at-risk table is laid out by hand


def _at_risk(curve: dict, t: float) -> int:
    for time, n in zip(curve["times"], curve["at_risk"]):
        if time >= t:
            return int(n)
    return 0


def forest_plot(result: dict, title: str, path: Path) -> Path | None:
    """Ratios (hazard ratios for Cox, odds ratios for logistic) with 95% intervals on a log axis."""
    rows = result.get("coefficients") or []
    ratio = "exp(coef)" if result.get("type") == "cox" else "odds_ratio"
    rows = [r for r in rows if r.get(ratio) is not None and r.get("covariate") != "intercept"]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * len(rows)))
    for i, r in enumerate(reversed(rows)):
        lo, hi = r[f"{ratio}_lower_95"], r[f"{ratio}_upper_95"]
        ax.plot([lo, hi], [i, i], color="C0")
        ax.plot([r[ratio]], [i], "s", color="C0")
        p = f"p={r['p']:.2g}" if r.get("p") is not None else ""
        ax.annotate(f"{r[ratio]:.2f} ({lo:.2f}-{hi:.2f}) {p}", (hi, i), textcoords="offset points", xytext=(6, -3),
                    fontsize=7)
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.tick_params(axis="x", which="both", labelsize=7)
    ax.set_yticks(range(len(rows)), [r["covariate"] for r in reversed(rows)], fontsize=8)
    ax.set_xlabel("hazard ratio (95% CI)" if ratio == "exp(coef)" else "odds ratio (95% CI)")
    low = min(r[f"{ratio}_lower_95"] for r in rows)
    high = max(r[f"{ratio}_upper_95"] for r in rows)
    ax.set_xlim(min(low, 1.0) / 1.3, max(high, 1.0) * 3.0)
    ax.set_title(f"{title} (n={result.get('n', '?')}, {result.get('rounds', '?')} rounds)", fontsize=10)
    return _saved(fig, path)


def plot_job(job: dict, title: str, path: Path) -> Path | None:
    pooled = job.get("pooled")
    if not pooled:
        return None
    kind = pooled.get("type")
    if kind == "km":
        return km_plot(pooled, title, path)
    if kind in ("cox", "glm", "habitat") and pooled.get("family") != "gaussian":
        return forest_plot(pooled, title, path)
    if kind in ("count", "crosstab", "histogram"):
        return _counts(job, title, path)
    if kind == "summary":
        return _summary(job, title, path)
    return _curves(job, title, path)
