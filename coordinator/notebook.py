"""The notebook API: federated analyses from Python, results as pandas DataFrames.

    from coordinator.notebook import Client

    client = Client()                       # RADFED_URL / RADFED_TOKEN, or Client(url, token)
    km = client.run("km.yaml")              # a dict, YAML/JSON text or a file
    km.survival_function_                   # like lifelines' KaplanMeierFitter.survival_function_
    km.plot()                               # matplotlib Axes
    cox = client.run({...cox spec...})
    cox.summary                             # like lifelines' CoxPHFitter.summary
    cox.per_site                            # every site: ok, refused (code, reason), offline...

A spec is validated here first with the nodes' own rules (:class:`cdm.spec.SpecError` names each
field and why); a job that fails raises :class:`JobFailed` carrying every site's reason.  The numbers
are the job's own (:mod:`coordinator.results`, the same tables the CLI prints and the console shows),
never recomputed.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cdm.errors import RadfedWarning
from cdm.spec import SpecError, loads_spec, parse_spec
from coordinator import client as http
from coordinator.client import ClientError
from coordinator.results import SUPPRESSED, Table, job_csv, result_tables, sites_table

__all__ = ["Client", "ClientError", "JobFailed", "PartialResult", "Result", "SpecError", "load_spec"]


class PartialResult(RadfedWarning):
    """Some site asked did not contribute (refused, timed out, offline): the result says which."""


class JobFailed(ClientError):
    """The job finished ``failed`` (or, with ``require_all``, a site did not answer): ``reasons`` maps
    each site that did not contribute to ``(status, code, message)``."""

    def __init__(self, job: dict, reasons: dict[str, tuple]):
        self.job, self.reasons = job, reasons
        why = "; ".join(f"{site}: {status}{' ' + code if code else ''}{': ' + message if message else ''}"
                        for site, (status, code, message) in reasons.items())
        super().__init__(f"job {job.get('job_id', '?')[:8]} {job.get('status')}: {job.get('message') or ''}"
                         + (f" ({why})" if why else ""))


def load_spec(spec) -> dict:
    """A spec from a dict, a YAML/JSON text or a file path; validated (:class:`SpecError` if not)."""
    if isinstance(spec, dict):
        data = spec
    elif isinstance(spec, Path) or (isinstance(spec, str) and "\n" not in spec and Path(spec).suffix in
                                    (".yaml", ".yml", ".json")):
        text = Path(spec).read_text(encoding="utf-8")
        loads_spec(text)
        data = yaml.safe_load(text)
    elif isinstance(spec, str):
        loads_spec(spec)
        data = yaml.safe_load(spec)
    else:
        raise TypeError("a spec is a dict, YAML/JSON text or a path to a .yaml/.json file")
    node_spec = {k: v for k, v in data.items() if k != "federation"}
    parse_spec(node_spec)
    return data


class Client(http.Client):
    """:class:`coordinator.client.Client` whose :meth:`run` returns a :class:`Result`."""

    def run(self, spec, sites=None, quorum=None, timeout=None, wait: float = 600.0, hold_offline=None,
            require_all: bool = False) -> "Result":
        job = super().run(load_spec(spec), sites, quorum, timeout, wait, hold_offline)
        return Result.from_job(job, require_all)

    def result(self, job_id: str, wait: float = 0.0) -> "Result":
        return Result.from_job(self.job(job_id, wait))

    def plan(self, spec, sites=None, timeout: float = 10.0) -> pd.DataFrame:
        """The dry run, one row per site: status, allowed, refusal, approval, unknown codes, SQL."""
        plan = super().plan(load_spec(spec), sites, timeout)
        rows = []
        for s in plan["sites"]:
            p = s.get("plan") or {}
            rows.append({"site": s["site"], "status": s["status"], "allowed": p.get("allowed"),
                         "refusal": (p.get("refusal") or {}).get("code") or s.get("code"),
                         "reason": (p.get("refusal") or {}).get("message") or (s["message"] if s["status"] != "ok" else None),
                         "approval": p.get("approval"), "unknown_codes": p.get("unknown_codes"),
                         "backend": p.get("backend"), "sql": p.get("sql")})
        frame = pd.DataFrame(rows).set_index("site")
        frame.attrs.update(rounds=plan["rounds"], first_round=plan["first_round"], spec_hash=plan["spec_hash"])
        return frame

    def sites_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.sites()).set_index("site")


def _frame(table: Table) -> pd.DataFrame:
    frame = pd.DataFrame(table.rows, columns=table.columns)
    if "n" in frame.columns:  # a suppressed cell is missing (NA), never 0; `complete` says it was
        frame["n"] = pd.array([None if v == SUPPRESSED else v for v in frame["n"]], dtype="Int64")
    return frame


class Result:
    """A finished job as DataFrames.  Attributes by analysis kind:

    * every kind: ``status``, ``job``, ``provenance``, ``spec_hash``, ``per_site`` (each site's status,
      refusal code and reason), ``tables`` (every table by name), ``warnings``;
    * ``km``: ``survival_function_``, ``confidence_interval_``, ``event_table``, ``median_survival_time_``,
      ``summary`` (per group), ``logrank``;
    * ``cox`` / ``glm`` / ``habitat``: ``summary`` (lifelines' column names), ``params_``;
    * cells (count, crosstab, summary, histogram): ``summary`` (pooled), ``site_frames`` (each site's own);
    * ``quantile``, ``correlation``, ``concordance``: ``summary``.
    """

    def __init__(self, job: dict):
        self.job = job
        self.job_id = job.get("job_id")
        self.status = job.get("status")
        self.message = job.get("message")
        self.pooled = job.get("pooled") or {}
        self.kind = self.pooled.get("type") or (job.get("spec") or {}).get("analysis", {}).get("type")
        self.provenance = job.get("provenance") or {}
        self.spec_hash = job.get("spec_hash") or self.provenance.get("spec_hash")
        self.tables = {t.name: _frame(t) for t in result_tables(job)}
        self.per_site = _frame(sites_table(job)).set_index("site")
        self.warnings = [f"{site}: {row.note}" for site, row in self.per_site.iterrows()
                         if row.status != "ok" or (row.note and "warnings:" in str(row.note))]

    @classmethod
    def from_job(cls, job: dict, require_all: bool = False) -> "Result":
        missing = {s["site"]: (s["status"], s.get("code"), s.get("message") or "")
                   for s in job.get("per_site") or [] if s["status"] != "ok"}
        if job.get("status") == "failed" or (require_all and missing):
            raise JobFailed(job, missing)
        if missing:  # a partial result is a result, but the notebook should say so where it is read
            warnings.warn(f"job {str(job.get('job_id'))[:8]} is {job.get('status')}: " + "; ".join(
                f"{site} {status}{' ' + code if code else ''}" for site, (status, code, _) in missing.items())
                + " (see .per_site)", PartialResult, stacklevel=3)
        return cls(job)

    def __repr__(self) -> str:
        return f"<radfed Result {self.kind} job {str(self.job_id)[:8]}: {self.status}, {self.message}>"

    # ------------------------------------------------------------------ every kind

    @property
    def complete(self) -> bool:
        """Every site asked answered and nothing in the pooled result is a lower bound."""
        return self.status == "done" and not any("lower bound" in n for t in result_tables(self.job) for n in t.notes)

    def to_csv(self, path=None) -> str:
        text = job_csv(self.job)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def to_json(self) -> str:
        return json.dumps(self.job, indent=2, default=str)

    # ------------------------------------------------------------------ summaries

    @property
    def summary(self) -> pd.DataFrame:
        if self.kind in ("cox", "glm", "habitat"):
            return self._coefficients()
        if self.kind == "km":
            return self.tables["groups"].set_index("group")
        if "cells" in self.tables:
            cells = self.tables["cells"]
            keys = [c for c in cells.columns if c not in ("source", "n", "complete", "mean", "variance", "sd")]
            return cells[cells["source"] == "pooled"].drop(columns="source").set_index(keys)
        if self.kind == "quantile":
            return self.tables["quantiles"].set_index("prob")
        if self.kind == "correlation":
            return self.tables["correlation"].set_index("variable")
        if self.kind == "concordance":
            return self.tables["agreement"].set_index(["imaging", "ctdna"])
        raise AttributeError(f"no summary for a {self.kind} result ({self.status}: {self.message})")

    def _coefficients(self) -> pd.DataFrame:
        rows = self.pooled.get("coefficients") or []
        ratio = "exp(coef)" if self.kind == "cox" else ("odds_ratio" if self.pooled.get("family") != "gaussian" else None)
        test = "t" if self.pooled.get("family") == "gaussian" else "z"
        out = pd.DataFrame({
            "coef": [r.get("coef") for r in rows],
            **({ratio: [r.get(ratio) for r in rows]} if ratio else {}),
            "se(coef)": [r.get("se") for r in rows],
            "coef lower 95%": [r.get("coef_lower_95") for r in rows],
            "coef upper 95%": [r.get("coef_upper_95") for r in rows],
            **({f"{ratio} lower 95%": [r.get(f"{ratio}_lower_95") for r in rows],
                f"{ratio} upper 95%": [r.get(f"{ratio}_upper_95") for r in rows]} if ratio else {}),
            "cmp to": 0.0,
            test: [r.get(test) for r in rows],
            "p": [r.get("p") for r in rows],
            "-log2(p)": [None if not r.get("p") else -np.log2(r["p"]) for r in rows],
        }, index=pd.Index([r.get("covariate") for r in rows], name="covariate"))
        return out.astype(float)

    @property
    def params_(self) -> pd.Series:
        return self._coefficients()["coef"]

    @property
    def site_frames(self) -> dict[str, pd.DataFrame]:
        """What each site released on its own (its cells; a KM curve where a site released one)."""
        main = self.tables.get("cells", self.tables.get("survival"))
        if main is None:
            return {}
        keys = [c for c in main.columns if c not in ("source",)]
        return {site: part[keys].reset_index(drop=True) for site, part in main.groupby("source") if site != "pooled"}

    # ------------------------------------------------------------------ Kaplan-Meier

    def _km(self) -> pd.DataFrame:
        if self.kind != "km":
            raise AttributeError(f"a {self.kind} result has no survival function")
        survival = self.tables["survival"]
        return survival[survival["source"] == "pooled"]

    def _wide(self, column: str, start: float, suffix: str = "") -> pd.DataFrame:
        km = self._km()
        labels = list(dict.fromkeys(km["group"]))
        single = len(labels) == 1 and not self.pooled.get("group")
        timeline = np.unique(np.concatenate([[0.0], km["time"].to_numpy(dtype=float)]))
        out = pd.DataFrame(index=pd.Index(timeline, name="timeline"))
        for label in labels:
            part = km[km["group"] == label].set_index("time")[column].astype(float)
            name = ("KM_estimate" if single else str(label)) + suffix
            out[name] = part.reindex(timeline).ffill().fillna(start).to_numpy()
        return out

    @property
    def survival_function_(self) -> pd.DataFrame:
        """Survival at each time of the shared grid (one column per group; ``KM_estimate`` ungrouped)."""
        return self._wide("survival", 1.0)

    @property
    def confidence_interval_(self) -> pd.DataFrame:
        """lifelines' exponential (log-log) 95% interval, columns ``<group>_lower_0.95`` / ``_upper_0.95``."""
        return pd.concat([self._wide("ci_lower_95", 1.0, "_lower_0.95"), self._wide("ci_upper_95", 1.0, "_upper_0.95")],
                         axis=1)

    @property
    def event_table(self) -> pd.DataFrame:
        km = self._km().rename(columns={"time": "event_at", "events": "observed"})
        km = km.assign(removed=km["observed"] + km["censored"])
        return km.set_index(["group", "event_at"])[["removed", "observed", "censored", "at_risk"]]

    @property
    def median_survival_time_(self) -> pd.Series:
        return self.tables["groups"].set_index("group")["median"].astype(float)

    @property
    def logrank(self) -> dict | None:
        return self.pooled.get("logrank") if self.kind == "km" else None

    # ------------------------------------------------------------------ plots

    def plot(self, ax=None, **kwargs):
        """Kaplan-Meier curves with 95% bands, a forest plot of ratios, or counts per cell; the Axes."""
        import matplotlib.pyplot as plt

        ax = ax if ax is not None else plt.subplots(figsize=kwargs.pop("figsize", (7, 4.5)))[1]
        if self.kind == "km":
            sf, ci = self.survival_function_, self.confidence_interval_
            for i, column in enumerate(sf.columns):
                ax.step(sf.index, sf[column], where="post", color=f"C{i}", label=column, **kwargs)
                ax.fill_between(sf.index, ci[f"{column}_lower_0.95"], ci[f"{column}_upper_0.95"], step="post",
                                color=f"C{i}", alpha=0.2, linewidth=0)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("days")
            ax.set_ylabel("survival probability")
            ax.legend()
        elif self.kind in ("cox", "glm", "habitat"):
            summary = self.summary.drop(index="intercept", errors="ignore")
            ratio = next((c for c in ("exp(coef)", "odds_ratio") if c in summary.columns), None)
            value, low, high = (ratio, f"{ratio} lower 95%", f"{ratio} upper 95%") if ratio else \
                ("coef", "coef lower 95%", "coef upper 95%")
            y = np.arange(len(summary))
            mid = summary[value].to_numpy()
            ax.errorbar(mid, y, xerr=[mid - summary[low].to_numpy(), summary[high].to_numpy() - mid],
                        fmt="s", capsize=3, **kwargs)
            ax.axvline(1.0 if ratio else 0.0, color="grey", linestyle="--")
            if ratio:
                ax.set_xscale("log")
            ax.set_yticks(y, summary.index)
            ax.invert_yaxis()
            ax.set_xlabel(f"{value} (95% CI)")
        elif "cells" in self.tables:
            pooled = self.summary["n"].astype("float")
            pooled.plot.bar(ax=ax, **kwargs)
            ax.set_ylabel("persons (pooled)")
        else:
            raise AttributeError(f"no plot for a {self.kind} result")
        ax.set_title(f"{self.kind}, job {str(self.job_id)[:8]} ({self.status})")
        return ax
