"""Imaging vs ctDNA progression calls across the network: agreement table, Cohen's kappa, bands.

Each node computes, per patient, the posterior probability of true progression from both calls
(:func:`cdm.rounds.posterior_progression`: Bayes' rule with each test's sensitivity/specificity and a
prior, tests conditionally independent given the truth) and releases only counts
(:func:`cdm.rounds.concordance_table`): the 2 x 2 agreement table and the number of patients whose
posterior puts them in "likely progression" (``>= hi``), "indeterminate", "likely response" (``<= lo``).
Counts add over sites; Cohen's (1960) kappa ``(p_o - p_e) / (1 - p_e)`` is computed on the pooled
table, with the large-sample standard errors of Fleiss, Cohen & Everitt (1969): in general (for the
interval) and under kappa = 0 (for the test), as statsmodels ``cohens_kappa``.

Site half: the per-person frame (two 0/1 variables); 2x2 cells through the policy's ``suppress``;
a band is hidden when any of its cells is.
"""

from __future__ import annotations

import math

import numpy as np

from cdm import rounds
from cdm import spec as S
from cdm.analyses.inference import Z95
from cdm.analyses.kind import Kind, complete_rows, not_small
from cdm.analyses.session import Session, StatsError, array, need
from cdm.errors import Refusal

BANDS = ("likely_progression", "indeterminate", "likely_response")


def cohens_kappa(table) -> dict:
    """Kappa and its standard error for a square agreement table (rows rater 1, columns rater 2)."""
    t = np.asarray(table, dtype=float)
    n = t.sum()
    if n == 0:
        raise StatsError("the pooled agreement table is empty")
    p = t / n
    rows, cols = p.sum(axis=1), p.sum(axis=0)
    p_o, p_e = float(np.trace(p)), float(rows @ cols)
    if p_e >= 1:
        return {"kappa": None, "p_observed": p_o, "p_expected": p_e, "note": "both raters constant: kappa undefined"}
    kappa = (p_o - p_e) / (1 - p_e)
    # Fleiss, Cohen & Everitt (1969) large-sample variance (kappa != 0)
    term_a = float(np.sum(np.diag(p) * (1 - (rows + cols) * (1 - kappa)) ** 2))
    off = p * (cols[:, None] + rows[None, :]) ** 2
    np.fill_diagonal(off, 0.0)
    term_b = (1 - kappa) ** 2 * float(off.sum())
    term_c = (kappa - p_e * (1 - kappa)) ** 2
    se = math.sqrt(max(term_a + term_b - term_c, 0.0) / ((1 - p_e) ** 2 * n))
    se0 = math.sqrt((p_e + p_e ** 2 - float(np.sum(rows * cols * (rows + cols)))) / (n * (1 - p_e) ** 2))
    return {"kappa": kappa, "se": se, "ci_lower_95": kappa - Z95 * se, "ci_upper_95": kappa + Z95 * se,
            "se_null": se0, "z": kappa / se0 if se0 > 0 else None, "p_observed": p_o, "p_expected": p_e}


def run(analysis, session: Session) -> dict:
    """Pool the sites' counts.  A cell or band a site suppressed is summed without that site's share and
    flagged incomplete (a lower bound, never a zero), and kappa is then not computed."""
    request = analysis.model_dump(mode="json")
    results = session.round(request)
    table, complete = np.zeros((2, 2)), np.ones((2, 2), dtype=bool)
    bands, bands_complete = dict.fromkeys(BANDS, 0), dict.fromkeys(BANDS, True)
    n, suppressed_at = 0, set()
    for site, r in results.items():
        n += int(need(r, "n", site, "concordance"))
        cells = need(r, "table", site, "concordance")
        held_back = np.array([[c is None for c in row] for row in cells], dtype=bool).reshape(2, 2)
        if held_back.any():
            suppressed_at.add(site)
            complete &= ~held_back
            cells = [[0 if c is None else c for c in row] for row in cells]
        table = table + array({"table": cells}, "table", site, "concordance", (2, 2))
        for band in BANDS:
            if r.get(band) is None:
                suppressed_at.add(site)
                bands_complete[band] = False
            else:
                bands[band] += int(r[band])
    out = {"type": "concordance", "sites": list(session.sites or []), "n": n,
           "table": {"rows": "imaging progression (yes, no)", "columns": "ctDNA progression (yes, no)",
                     "cells": table.astype(int).tolist(), "cells_complete": complete.tolist()},
           "bands": bands, "bands_complete": bands_complete, "band": list(analysis.band),
           "complete": not suppressed_at, "suppressed_at": sorted(suppressed_at), "rounds": session.rounds}
    if suppressed_at:  # kappa of a table with cells missing would be a guess, not the pooled kappa
        out["agreement"] = {"kappa": None, "note": f"not computed: cells suppressed at {', '.join(sorted(suppressed_at))}; "
                                                   "the table and band counts are lower bounds"}
    else:
        out["agreement"] = cohens_kappa(table)
    return out


# -- site half -------------------------------------------------------------------------------------


CELLS = ((1, 1), (1, 0), (0, 1), (0, 0))  # (imaging, ctdna): table[0] = imaging yes, table[1] = no


def counts(a, values: dict) -> dict:
    """The 2x2 table and the band counts of the persons with both calls (nothing hidden yet)."""
    rows = complete_rows(values, [a.imaging, a.ctdna])
    if not np.all((rows == 0) | (rows == 1)):
        raise Refusal("BAD_SPEC", f"concordance: {a.imaging!r} and {a.ctdna!r} must take values 0/1 "
                                  "(use reduce: first/last/max for ctdna detected)")
    imaging, ctdna = rows[:, 0], rows[:, 1]
    posterior = rounds.posterior_progression(imaging, ctdna, *_params(a))
    return rounds.concordance_table(imaging, ctdna, posterior, a.band)


def _params(a) -> tuple:
    return a.imaging_sens, a.imaging_spec, a.ctdna_sens, a.ctdna_spec, a.prior


def released(a, table: dict, hidden_cells, small) -> dict:
    """What is released of ``table`` with the cells ``hidden_cells`` (indexes into :data:`CELLS`)
    hidden: each band whose cells include a hidden one, or that is ``small`` itself, is hidden too (a
    band total next to a released cell would give away a suppressed one).  A site applies this to its
    own table; the coordinator of a secure job to the pooled one."""
    cells = [table["table"][0][0], table["table"][0][1], table["table"][1][0], table["table"][1][1]]
    cell_posterior = rounds.posterior_progression([c[0] for c in CELLS], [c[1] for c in CELLS], *_params(a))
    lo, hi = a.band
    band_of = ["likely_progression" if q >= hi else "likely_response" if q <= lo else "indeterminate"
               for q in cell_posterior]
    out = {"n": table["n"],
           "table": [[None if i in hidden_cells else cells[i] for i in (0, 1)],
                     [None if i in hidden_cells else cells[i] for i in (2, 3)]],
           "posterior": [[float(cell_posterior[0]), float(cell_posterior[1])],
                         [float(cell_posterior[2]), float(cell_posterior[3])]],
           "suppressed": [list(CELLS[i]) for i in sorted(hidden_cells)]}
    for band in BANDS:
        members = [i for i, b in enumerate(band_of) if b == band]
        out[band] = None if any(i in hidden_cells for i in members) or small(table[band]) else table[band]
        if out[band] is None:
            out["suppressed"].append(band)
    return out


def site(spec: S.Spec, data, policy) -> dict:
    """The 2x2 table and the band counts at this site, small cells and their bands hidden."""
    a = spec.analysis
    table = counts(a, data.values)
    not_small(table["n"], policy, "persons with both calls")
    cells = [table["table"][0][0], table["table"][0][1], table["table"][1][0], table["table"][1][1]]
    return released(a, table, policy.suppress(list(CELLS), cells), policy.small)


KIND = Kind(model=S.ConcordanceRound, site=site, run=run, checks_data=True)
