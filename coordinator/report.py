"""Showing a job to a researcher: pooled and per-site side by side, as text (CSV: :mod:`coordinator.results`).

Suppressed cells read ``suppressed``, never 0; a pooled cell missing a suppressed site's share reads
``>=N*`` (a lower bound) with a footnote naming the sites.  Every site asked is listed with what it
did: answered, refused (with its code and reason), timed out or was offline.
"""

from __future__ import annotations

import json

from coordinator.results import SUPPRESSED, Table, result_tables, site_note
from coordinator.stats.text import render as stats_text


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


def grid(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)] if rows else [len(h) for h in headers]
    line = lambda cells: "  ".join(str(c).ljust(w) if i < len(headers) - 1 else str(c)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def pooled_rows(job: dict) -> tuple[list[str], list[list[str]], list[str]]:
    """(headers, rows, footnotes) of the pooled table."""
    pooled = job.get("pooled") or {}
    sites = pooled.get("sites") or [s["site"] for s in job.get("per_site", [])]
    if pooled.get("aggregation") == "secure":
        sites = []  # no site's own value exists at the coordinator
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
    mode = (job.get("provenance") or {}).get("mode")
    if mode:  # which mode this release used (coordinator/secure.py)
        out.append(f"aggregation: {mode['mode']} ({mode['reason']})"
                   + ("; the coordinator saw only sums over the sites, no site's own values" if mode["mode"] == "secure"
                      else ""))
    site_rows = []
    for s in job.get("per_site", []):
        note = site_note(s)
        elapsed = f"{s['elapsed_ms']:.0f} ms" if s.get("elapsed_ms") is not None else ""
        site_rows.append([s["site"], s["status"], elapsed, note])
    if site_rows:
        out += ["", grid(["site", "status", "time", "note"], site_rows)]
    if job.get("pooled") and job["pooled"].get("rows") is not None:
        headers, rows, foot = pooled_rows(job)
        out += ["", grid(headers, rows)] + foot
    elif job.get("pooled") and (text := stats_text(job["pooled"])):  # multi-round results (issue 8)
        out += ["", text]
        out += [line for table in result_tables(job) if table.name == "survival" for line in ["", *text_table(table)]]
    elif job.get("pooled"):
        out += ["", "pooled:", json.dumps(job["pooled"], indent=2, default=str)[:4000]]
    else:
        for s in job.get("per_site", []):
            if s.get("result") is not None:
                out += ["", f"{s['site']}:", json.dumps(s["result"], indent=2, default=str)[:2000]]
    return "\n".join(out)


def cell_text(value) -> str:
    """One value as a researcher reads it (the CLI's tables and the console's)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:  # times in days, counts: every digit
            return f"{int(value):,}"
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    return str(value)


def text_table(table: Table, drop: tuple[str, ...] = ()) -> list[str]:
    """A :class:`~coordinator.results.Table` as aligned text: its title, header, rows and notes."""
    keep = [i for i, c in enumerate(table.columns) if c not in drop]
    rows = [[cell_text(row[i]) for i in keep] for row in table.rows]
    return [f"{table.title}:", grid([table.columns[i] for i in keep], rows)] + [f"  {n}" for n in table.notes]


def render_sites(sites: list[dict]) -> str:
    rows = [[s["site"], "online" if s["online"] else "offline", s.get("version") or "-",
             f"{s['seconds_since_seen']:.0f} s ago" if s.get("seconds_since_seen") is not None else "never",
             str(s.get("answered") if s.get("answered") is not None else "-"), s["enrolled_at"],
             ", ".join((s.get("policy") or {}).get("allowed_analyses") or []) or "-"] for s in sites]
    return grid(["site", "status", "version", "last seen", "answered", "enrolled", "policy allows"], rows)


def render_jobs(jobs: list[dict]) -> str:
    rows = [[j["job_id"], j["researcher"], (j.get("spec") or {}).get("analysis", {}).get("type", "?"), j["status"],
             (j.get("created_at") or "")[:19], (j.get("message") or "")[:60]] for j in jobs]
    return grid(["job", "researcher", "analysis", "status", "submitted", "message"], rows)


def render_plan(plan: dict, sql: bool = False) -> str:
    """The dry run as text: the rounds, then each site's verdict (and its SQL with ``sql``)."""
    out = [f"dry run of a {plan['analysis']} spec ({plan['spec_hash'][:12]}): {plan['rounds']}; "
           f"the first round asks the sites for {plan['first_round'].get('type')}. Nothing was run or released.", ""]
    rows = []
    for s in plan["sites"]:
        p = s.get("plan") or {}
        if s["status"] != "ok":
            verdict = f"{s['status']} {s.get('code') or ''}: {s.get('message') or ''}".replace(" :", ":")
        elif p.get("allowed"):
            verdict = "allowed" + (" (approved by hand at the site first)" if p.get("approval") == "manual" else "")
        else:
            verdict = f"would refuse {p['refusal']['code']}: {p['refusal']['message']}"
        unknown = ", ".join(p.get("unknown_codes") or []) or "-"
        rows.append([s["site"], verdict, p.get("backend") or "-", str(p.get("min_cell_count") or "-"), unknown])
    out.append(grid(["site", "verdict", "database", "min cell", "codes unknown there"], rows))
    for s in plan["sites"] if sql else []:
        if s.get("plan"):
            out += ["", f"-- {s['site']} ({s['plan']['backend']}): parameters {json.dumps(s['plan']['parameters'])}",
                    s["plan"]["sql"]]
    return "\n".join(out)
