"""A job's results as plain tables: the one tabular view every output reads.

The CLI's text and CSV (:mod:`coordinator.report`), the notebook API's pandas DataFrames
(:mod:`coordinator.notebook`) and the web console's HTML tables and downloads all come from
:func:`result_tables` and :func:`sites_table`, so a number is the same wherever a researcher reads it.

A :class:`Table` holds raw values (numbers, strings, ``None``), never formatted text.  ``source`` is
``pooled`` for the pooled result and a site's name for what that site released on its own.  Every
site asked appears in :func:`sites_table`, with its contribution (``ok``) or its refusal and reason.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

#: what a suppressed cell reads, in every output (never 0)
SUPPRESSED = "suppressed"


@dataclass
class Table:
    name: str                 # stable machine name: survival, coefficients, cells, quantiles, ...
    title: str                # what a researcher reads above it
    columns: list[str]
    rows: list[list] = field(default_factory=list)
    index: list[str] = field(default_factory=list)  # the columns that identify a row
    notes: list[str] = field(default_factory=list)

    def records(self) -> list[dict]:
        return [dict(zip(self.columns, row)) for row in self.rows]

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows([["" if v is None else _csv_value(v) for v in row] for row in self.rows])
        return buffer.getvalue()

    def as_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "columns": self.columns, "rows": self.rows,
                "index": self.index, "notes": self.notes}


def _csv_value(value):
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)  # every digit: a CSV re-read gives the same float
    return value


# ---------------------------------------------------------------------------- per analysis kind


def _km_rows(label: str, curve: dict, source: str) -> list[list]:
    keys = ("times", "at_risk", "events", "censored", "survival", "ci_lower_95", "ci_upper_95", "coarsened")
    columns = [curve.get(k) or [] for k in keys]
    n = len(columns[0])
    return [[source, label] + [col[i] if i < len(col) else None for col in columns] for i in range(n)]


#: ``coarsened``: the time stands for several pooled event times (cdm/analyses/km.py)
KM_COLUMNS = ["source", "group", "time", "at_risk", "events", "censored", "survival", "ci_lower_95", "ci_upper_95",
              "coarsened"]


def _km(result: dict, per_site: dict[str, dict]) -> list[Table]:
    groups = result.get("groups") or {}
    rows = []
    for label, curve in sorted(groups.items()):
        rows += _km_rows(label, curve, "pooled")
    for site, site_result in sorted(per_site.items()):  # a site's own curve, where it released one
        for label, curve in sorted((site_result.get("groups") or {}).items()):
            if isinstance(curve, dict) and curve.get("survival"):
                rows += _km_rows(label, curve, site)
    bins = result.get("bin_days")
    survival = Table("survival", f"Kaplan-Meier survival table (time in days, bins of {bins} days; 95% CI log-log)",
                     KM_COLUMNS, rows, ["source", "group", "time"])
    summary = Table("groups", "Kaplan-Meier groups", ["group", "n", "events", "median", "complete", "suppressed_at"],
                    [[label, c.get("n"), sum(c.get("events") or []), c.get("median"), c.get("complete", True),
                      ", ".join(c.get("suppressed_at") or []) or None] for label, c in sorted(groups.items())],
                    ["group"])
    tables = [survival, summary]
    test = result.get("logrank")
    if test:
        tables.append(Table("logrank", "log-rank test", ["groups", "statistic", "df", "p"],
                            [[", ".join(test.get("groups") or []), test.get("statistic"), test.get("df"), test.get("p")]]))
    return tables


def _ratio_column(result: dict) -> str | None:
    if result.get("type") == "cox":
        return "exp(coef)"
    if result.get("family") == "binomial" or result.get("type") == "habitat":
        return "odds_ratio"
    return None


def _coefficients(result: dict, per_site: dict[str, dict]) -> list[Table]:
    ratio = _ratio_column(result)
    test = "t" if result.get("family") == "gaussian" else "z"
    columns = ["covariate", "coef"] + ([ratio] if ratio else []) + ["se", "coef_lower_95", "coef_upper_95"]
    if ratio:
        columns += [f"{ratio}_lower_95", f"{ratio}_upper_95"]
    columns += [test, "p"]
    rows = [[r.get(c) for c in columns] for r in result.get("coefficients") or []]
    what = {"cox": "Cox proportional hazards", "habitat": "habitat model (weighted logistic)"}.get(
        result.get("type"), f"GLM ({result.get('family')})")
    notes = []
    conv = result.get("convergence")
    if conv and not conv.get("converged", True):
        notes.append(f"NOT converged after {conv.get('iterations')} iterations: the estimates are not final")
    return [Table("coefficients", f"{what}: n={result.get('n')}", columns, rows, ["covariate"], notes)]


def _quantiles(result: dict, per_site: dict[str, dict]) -> list[Table]:
    columns = ["prob", "value", "exact", "lower_bound", "upper_bound", "note"]
    rows = [[q.get("prob"), q.get("value"), q.get("exact"), q.get("lower_bound"), q.get("upper_bound"), q.get("note")]
            for q in result.get("quantiles") or []]
    return [Table("quantiles", f"quantiles of {result.get('variable')} (n={result.get('n')})", columns, rows, ["prob"])]


def _correlation(result: dict, per_site: dict[str, dict]) -> list[Table]:
    names = result.get("variables") or []
    matrix = result.get("correlation") or []
    rows = [[name] + list(row) for name, row in zip(names, matrix)]
    moments = [[name, m, v, s] for name, m, v, s in zip(names, result.get("mean") or [], result.get("variance") or [],
                                                          result.get("sd") or [])]
    return [Table("correlation", f"Pearson correlation (n={result.get('n')})", ["variable"] + names, rows, ["variable"]),
            Table("moments", "pooled means and variances", ["variable", "mean", "variance", "sd"], moments, ["variable"])]


def _concordance(result: dict, per_site: dict[str, dict]) -> list[Table]:
    table = result.get("table") or {}
    cells = table.get("cells") or [[None, None], [None, None]]
    flags = table.get("cells_complete") or [[True, True], [True, True]]
    rows = []
    for i, imaging in enumerate(("yes", "no")):
        for j, ctdna in enumerate(("yes", "no")):
            rows.append([imaging, ctdna, cells[i][j], flags[i][j]])
    agreement = result.get("agreement") or {}
    bands_ok = result.get("bands_complete") or {}
    notes = [f"incomplete cells are lower bounds: suppressed at {', '.join(result['suppressed_at'])}"] \
        if result.get("suppressed_at") else []
    return [Table("agreement", f"imaging vs ctDNA progression (n={result.get('n')})",
                  ["imaging", "ctdna", "n", "complete"], rows, ["imaging", "ctdna"], notes),
            Table("kappa", "Cohen's kappa", ["kappa", "ci_lower_95", "ci_upper_95", "p_observed", "p_expected", "note"],
                  [[agreement.get(k) for k in ("kappa", "ci_lower_95", "ci_upper_95", "p_observed", "p_expected", "note")]]),
            Table("bands", "posterior bands", ["band", "n", "complete"],
                  [[name, n, bands_ok.get(name, True)] for name, n in (result.get("bands") or {}).items()], ["band"])]


def _cells(result: dict, per_site: dict[str, dict]) -> list[Table]:
    """Count, crosstab, summary and histogram: one row per (cell, source)."""
    keys = list(result.get("columns") or []) or ["cell"]
    summary = result.get("type") == "summary"
    columns = keys + ["source", "n", "complete"] + (["mean", "variance", "sd"] if summary else [])
    rows = []
    for row in result.get("rows") or []:
        key = [row["key"][i] if i < len(row["key"]) else "" for i in range(len(keys))]
        for source, cell in [("pooled", row["pooled"])] + sorted(row["per_site"].items()):
            n = cell.get("n")
            values = key + [source, SUPPRESSED if n is None else n, bool(cell.get("complete", n is not None))]
            if summary:
                values += [cell.get(k) for k in ("mean", "variance", "sd")]
            rows.append(values)
    notes = []
    suppressed_at = sorted({s for row in result.get("rows") or [] for s in row["pooled"].get("suppressed_at") or []})
    if suppressed_at:
        notes.append(f"pooled cells with complete=false are lower bounds: suppressed at {', '.join(suppressed_at)}")
    tables = [Table("cells", {"count": "persons", "crosstab": "crosstab", "summary": "summary (mean, variance)",
                              "histogram": "histogram"}.get(result.get("type"), "cells"),
                    columns, rows, keys + ["source"], notes)]
    test = result.get("chi_square")
    if isinstance(test, dict) and test.get("statistic") is not None:
        tables.append(Table("chi_square", "Pearson chi-square test of independence", ["statistic", "df", "p"],
                            [[test.get("statistic"), test.get("df"), test.get("p")]]))
    return tables


KINDS = {"km": _km, "cox": _coefficients, "glm": _coefficients, "habitat": _coefficients, "quantile": _quantiles,
         "correlation": _correlation, "concordance": _concordance}


def result_tables(job: dict) -> list[Table]:
    """The pooled result (and each site's own share where it released one) as tables; [] without one."""
    pooled = job.get("pooled") or {}
    per_site = {s["site"]: s["result"] for s in job.get("per_site") or [] if isinstance(s.get("result"), dict)}
    if "rows" in pooled:
        return _cells(pooled, per_site)
    builder = KINDS.get(pooled.get("type"))
    if builder is None:
        return []
    try:
        return builder(pooled, per_site)
    except (KeyError, TypeError, ValueError, AttributeError):  # an unexpected shape: the JSON still has it
        return []


def site_note(site: dict, with_code: bool = True) -> str:
    """The code and reason of a refusal, a site's warnings, or how far a running job has got with it
    (a plain ``released`` says nothing the status does not)."""
    note = (site.get("code") or "") if with_code else ""
    if site.get("message") and (site.get("status") != "ok" or site["message"] != "released"):
        note = f"{note} {site['message']}".strip()
    return note


def sites_table(job: dict) -> Table:
    """Every site asked: what it contributed (``ok``), or that it refused or failed, and why."""
    rows = []
    for s in job.get("per_site") or []:
        rows.append([s["site"], s["status"], s.get("code"), site_note(s, with_code=False) or None,
                     None if s.get("elapsed_ms") is None else round(float(s["elapsed_ms"]), 1)])
    return Table("sites", "sites", ["site", "status", "code", "note", "elapsed_ms"], rows, ["site"])


def job_csv(job: dict) -> str:
    """The main result table as CSV (its ``source`` column says pooled or which site), then one row per
    site that refused or did not answer (``status`` and ``note`` say why): every site is accounted for."""
    tables = result_tables(job)
    main = tables[0] if tables else Table("result", "result", ["source"])
    columns = main.columns + ([] if "source" in main.columns else ["source"]) + ["status", "note"]
    rows = [dict(zip(main.columns, row)) for row in main.rows]
    for row in rows:
        row.setdefault("source", "pooled")
        row["status"] = "ok"
    for s in job.get("per_site") or []:
        if s["status"] != "ok":
            rows.append({"source": s["site"], "status": s["status"], "note": site_note(s)})
    return Table(main.name, main.title, columns, [[r.get(c) for c in columns] for r in rows]).csv()
