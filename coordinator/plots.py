"""PNG plots of a job's results: pooled and per-site side by side; suppressed cells drawn as such."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60] or "plot"


def _label(key: list) -> str:
    return " / ".join(str(k) for k in key) or "all"


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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_job(job: dict, title: str, path: Path) -> Path | None:
    pooled = job.get("pooled")
    if not pooled:
        return None
    kind = pooled.get("type")
    if kind in ("count", "crosstab", "histogram"):
        return _counts(job, title, path)
    if kind == "summary":
        return _summary(job, title, path)
    return _curves(job, title, path)
