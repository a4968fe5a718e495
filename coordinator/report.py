"""Showing a job to a researcher: pooled and per-site side by side, as text or CSV.

Suppressed cells read ``suppressed``, never 0; a pooled cell missing a suppressed site's share reads
``>=N*`` (a lower bound) with a footnote naming the sites.
"""

from __future__ import annotations

import csv
import io
import json

from coordinator.stats.text import render as stats_text

SUPPRESSED = "suppressed"


def _fmt_count(cell: dict | None, pooled: bool = False) -> str:
    if cell is None:
        return "-"
    if cell.get("n") is None:
        return SUPPRESSED
    if pooled and not cell.get("complete", True):
        return f">={cell['n']:,}*"
    return f"{cell['n']:,}"


def _fmt_moments(cell: dict | None, pooled: bool = False) -> str:
    if cell is None:
        return "-"
    if cell.get("n") is None:
        return SUPPRESSED
    mean, sd = cell.get("mean"), cell.get("sd")
    text = f"{mean:.4g}" if mean is not None else "n/a"
    if sd is not None:
        text += f" ± {sd:.3g}"
    text += f" (n={cell['n']:,})"
    if pooled and not cell.get("complete", True):
        text += "*"
    return text


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)] if rows else [len(h) for h in headers]
    line = lambda cells: "  ".join(str(c).ljust(w) if i < len(headers) - 1 else str(c)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def pooled_rows(job: dict) -> tuple[list[str], list[list[str]], list[str]]:
    """(headers, rows, footnotes) of the pooled table."""
    pooled = job.get("pooled") or {}
    sites = pooled.get("sites") or [s["site"] for s in job.get("per_site", [])]
    fmt = _fmt_moments if pooled.get("type") == "summary" else _fmt_count
    key_headers = pooled.get("columns") or ["cell"]
    headers = key_headers + ["pooled"] + list(sites)
    rows, notes = [], set()
    for row in pooled.get("rows", []):
        key = [str(k) for k in row["key"]] + [""] * (len(key_headers) - len(row["key"]))
        rows.append(key[:len(key_headers)] + [fmt(row["pooled"], True)]
                    + [fmt(row["per_site"].get(s)) for s in sites])
        if row["pooled"].get("suppressed_at"):
            notes.update(row["pooled"]["suppressed_at"])
    foot = ([f"* lower bound: suppressed at {', '.join(sorted(notes))} (small cells are never shown as 0)"]
            if notes else [])
    return headers, rows, foot


def render_job(job: dict) -> str:
    analysis = (job.get("spec") or {}).get("analysis", {}).get("type", "?")
    out = [f"job {job['job_id']}  {analysis}  {job['status']}: {job.get('message') or ''}"]
    site_rows = []
    for s in job.get("per_site", []):
        note = s.get("code") or ""
        if s.get("message") and (s.get("status") != "ok" or "warnings:" in s["message"]):
            note = f"{note} {s['message']}".strip()
        elapsed = f"{s['elapsed_ms']:.0f} ms" if s.get("elapsed_ms") is not None else ""
        site_rows.append([s["site"], s["status"], elapsed, note])
    if site_rows:
        out += ["", _table(["site", "status", "time", "note"], site_rows)]
    if job.get("pooled") and job["pooled"].get("rows") is not None:
        headers, rows, foot = pooled_rows(job)
        out += ["", _table(headers, rows)] + foot
    elif job.get("pooled") and (text := stats_text(job["pooled"])):  # multi-round results (issue 8)
        out += ["", text]
    elif job.get("pooled"):
        out += ["", "pooled:", json.dumps(job["pooled"], indent=2, default=str)[:4000]]
    else:
        for s in job.get("per_site", []):
            if s.get("result") is not None:
                out += ["", f"{s['site']}:", json.dumps(s["result"], indent=2, default=str)[:2000]]
    return "\n".join(out)


def job_csv(job: dict) -> str:
    """Long format: one line per (cell, source) with source = pooled or a site."""
    pooled = job.get("pooled") or {}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    keys = pooled.get("columns") or ["cell"]
    summary = pooled.get("type") == "summary"
    writer.writerow(keys + ["source", "n", "complete"] + (["mean", "variance", "sd"] if summary else []))
    for row in pooled.get("rows", []):
        sources = [("pooled", row["pooled"])] + sorted(row["per_site"].items())
        for source, cell in sources:
            n = cell.get("n")
            values = [row["key"][i] if i < len(row["key"]) else "" for i in range(len(keys))]
            values += [source, SUPPRESSED if n is None else n, str(cell.get("complete", n is not None)).lower()]
            if summary:
                values += ["" if cell.get(k) is None else cell[k] for k in ("mean", "variance", "sd")]
            writer.writerow(values)
    return buffer.getvalue()


def render_sites(sites: list[dict]) -> str:
    rows = [[s["site"], "online" if s["online"] else "offline", s.get("version") or "-",
             f"{s['seconds_since_seen']:.0f} s ago" if s.get("seconds_since_seen") is not None else "never",
             str(s.get("answered") if s.get("answered") is not None else "-"), s["enrolled_at"]] for s in sites]
    return _table(["site", "status", "version", "last seen", "answered", "enrolled"], rows)


def render_jobs(jobs: list[dict]) -> str:
    rows = [[j["job_id"], j["researcher"], (j.get("spec") or {}).get("analysis", {}).get("type", "?"), j["status"],
             (j.get("created_at") or "")[:19], (j.get("message") or "")[:60]] for j in jobs]
    return _table(["job", "researcher", "analysis", "status", "submitted", "message"], rows)
