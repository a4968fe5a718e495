"""Attack the node's disclosure policy end to end, through run_request on a real SQLite CDM.

* margins and linked tables: an attacker collects every count/crosstab/histogram the node releases
  about a cohort and its parts (by sex, by MDM2 status) and solves for each suppressed cell with
  linear programming (non-negative cells, every released number an equality, every unlisted
  crosstab key a 0) — the tightest bounds any linear attack can reach; no suppressed small cell may
  be pinned down.  The same attack is shown to win without secondary suppression and without the
  linked-release audit, so it is a real attack;
* differencing: two cohorts differing by one patient;
* unknown codes: a warning, and a refusal when the index event cannot be resolved at all;
* every decision lands in the audit log and ``radfed-node audit verify`` still passes.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.optimize import linprog
from sqlalchemy import insert

from cdm.schema import tables
from node.audit import AuditLog
from node.cli import main
from node.config import load_config
from node.execute import run_request
from node.disclosure.policy import Refusal, recoverable_cells

D = dt.date
N_PERSONS = 40
TF_EDGES = [0, 4, 20, 41]
TF_BINS = [f"[{float(a)}, {float(b)})" for a, b in zip(TF_EDGES, TF_EDGES[1:])]  # crosstab keys of the tf bins
INDEX = {"index": {"kind": "condition", "codes": ["RADFED:progression"]}}
VARIABLES = {"sex": {"kind": "sex"},
             "mdm2": {"kind": "variant", "gene": "MDM2", "variant_type": "cnv"},
             "tf": {"kind": "measurement", "code": "RADFED:ctdna_tumour_fraction", "reduce": "mean"}}


def load_persons(engine, n: int = N_PERSONS, year_of_birth=lambda i: 1950 + i % 30,
                 allele_frequency=lambda i: 0.2) -> None:
    """Person i: male when i is odd, born in ``year_of_birth(i)``, an MDM2 amplification (VAF
    ``allele_frequency(i)``) when 3 | i, tumour fraction i, indexed by a progression on 2020-01-01 + i
    days."""
    persons, conds, meas, variants = [], [], [], []
    for i in range(1, n + 1):
        persons.append(dict(person_id=i, gender_concept_id=8507 if i % 2 else 8532, year_of_birth=year_of_birth(i),
                            race_concept_id=0, ethnicity_concept_id=0))
        conds.append(dict(condition_occurrence_id=i, person_id=i, condition_concept_id=2000000400,
                          condition_start_date=D(2020, 1, 1) + dt.timedelta(days=i), condition_type_concept_id=0))
        meas.append(dict(measurement_id=i, person_id=i, measurement_concept_id=2000000200,
                         measurement_date=D(2020, 3, 1), measurement_type_concept_id=0, value_as_number=float(i)))
        if i % 3 == 0:
            variants.append(dict(variant_occurrence_id=i, person_id=i, variant_date=D(2020, 2, 1),
                                 target_gene1_symbol="MDM2", variant_type="cnv", is_ctdna=False,
                                 allele_frequency=allele_frequency(i)))
    with engine.begin() as c:
        for t, rows in (("person", persons), ("condition_occurrence", conds), ("measurement", meas),
                        ("variant_occurrence", variants)):
            c.execute(insert(tables[t]), rows)


def write_config(tmp_path, policy: str = "", name: str = "site-a"):
    """A real node.toml in tmp_path (with its data folder for audit log and state), loaded as the CLI would."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "node.toml"
    path.write_text(f'[site]\nname = "{name}"\ndata_dir = "data"\n[database]\nurl = "{tmp_path / "cdm.sqlite"}"\n'
                    f"{policy}\n")
    return load_config(path)


def ask(engine, config, analysis, cohort=None, requester="mallory", variables=VARIABLES):
    return run_request(engine, config, {"request_id": "r", "requester": requester,
                                        "spec": {"cohort": cohort or INDEX, "variables": variables,
                                                 "analysis": analysis}})


# -- the linear-programming attacker -------------------------------------------------------------------
# The attacker's unknowns are the 12 fine cells sex x mdm2 x tf bin; every count the node releases about
# the cohort or one of its parts is an equation; a crosstab key the node does not list is a 0.

FINE = list(itertools.product(["F", "M"], [0.0, 1.0], TF_BINS))
DIMS = {"sex": 0, "mdm2": 1, "tf": 2}
LEVELS = [["F", "M"], [0.0, 1.0], TF_BINS]
MDM2 = {"kind": "variant", "gene": "MDM2", "variant_type": "cnv"}
SUBCOHORTS = [  # (cohort restriction, which fine cells it keeps)
    ({}, lambda f: True),
    ({"sex": ["F"]}, lambda f: f[0] == "F"),
    ({"sex": ["M"]}, lambda f: f[0] == "M"),
    ({"inclusion": [MDM2]}, lambda f: f[1] == 1.0),
    ({"exclusion": [MDM2]}, lambda f: f[1] == 0.0),
]


def _truth(i: int) -> tuple:
    tf_bin = next(label for label, a, b in zip(TF_BINS, TF_EDGES, TF_EDGES[1:]) if a <= i < b)
    return ("M" if i % 2 else "F", 1.0 if i % 3 == 0 else 0.0, tf_bin)


PERSONS_TRUTH = np.array([sum(_truth(i) == f for i in range(1, N_PERSONS + 1)) for f in FINE], dtype=float)


def load_table(engine, counts) -> None:
    """``counts[j]`` persons in fine cell ``FINE[j]`` (tumour fraction 1, 10 or 30 by bin)."""
    tf_value = dict(zip(TF_BINS, (1.0, 10.0, 30.0)))
    persons, conds, meas, variants = [], [], [], []
    pid = 0
    for (sex, mdm2, tf_bin), n in zip(FINE, counts):
        for _ in range(int(n)):
            pid += 1
            persons.append(dict(person_id=pid, gender_concept_id=8507 if sex == "M" else 8532, year_of_birth=1960,
                                race_concept_id=0, ethnicity_concept_id=0))
            conds.append(dict(condition_occurrence_id=pid, person_id=pid, condition_concept_id=2000000400,
                              condition_start_date=D(2020, 1, 1), condition_type_concept_id=0))
            meas.append(dict(measurement_id=pid, person_id=pid, measurement_concept_id=2000000200,
                             measurement_date=D(2020, 3, 1), measurement_type_concept_id=0,
                             value_as_number=tf_value[tf_bin]))
            if mdm2:
                variants.append(dict(variant_occurrence_id=pid, person_id=pid, variant_date=D(2020, 2, 1),
                                     target_gene1_symbol="MDM2", variant_type="cnv", is_ctdna=False))
    with engine.begin() as c:
        for t, rows in (("person", persons), ("condition_occurrence", conds), ("measurement", meas),
                        ("variant_occurrence", variants)):
            if rows:
                c.execute(insert(tables[t]), rows)


def _cells_of(by: list[str], key, member) -> np.ndarray:
    """Indicator over the fine cells that a released cell (``by`` = ``key``, in the sub-cohort whose fine
    cells satisfy ``member``) adds up."""
    return np.array([float(member(f) and all(f[DIMS[b]] == k for b, k in zip(by, key))) for f in FINE])


def _releases(engine, config) -> tuple[list, int]:
    """Every count/crosstab/histogram the attacker can get about the cohort and its parts by sex and by
    MDM2 status: ((indicator over the fine cells, released value or None) pairs, refusals)."""
    out, refused = [], 0
    for restriction, member in SUBCOHORTS:
        cohort = {**INDEX, **restriction}
        queries = [({"type": "count"}, [])]
        queries += [({"type": "crosstab", "by": list(by), "bins": {"tf": TF_EDGES} if "tf" in by else {}}, list(by))
                    for size in (1, 2, 3) for by in itertools.combinations(["sex", "mdm2", "tf"], size)]
        queries.append(({"type": "histogram", "variable": "tf", "edges": TF_EDGES}, ["tf"]))
        for analysis, by in queries:
            r = ask(engine, config, analysis, cohort)
            if r["status"] != "ok":
                assert r["code"] in ("MIN_CELL", "DIFFERENCING"), r
                refused += 1
                continue
            if analysis["type"] == "count":
                out.append((_cells_of([], [], member), r["result"]["n"]))
            elif analysis["type"] == "histogram":
                out += [(_cells_of(by, [label], member), n) for label, n in zip(TF_BINS, r["result"]["counts"])]
            else:
                listed = {tuple(c["key"]): c["n"] for c in r["result"]["cells"]}
                for key in itertools.product(*(LEVELS[DIMS[b]] for b in by)):
                    out.append((_cells_of(by, key, member), listed.get(key, 0)))  # not listed: known 0
    return out, refused


def recovered_cells(releases, truth) -> list[tuple[np.ndarray, float]]:
    """Suppressed small cells (1..4 persons) the attacker pins to one value: (cell, value)."""
    shown = [(a, n) for a, n in releases if n is not None]
    A, b = np.array([a for a, _ in shown]), np.array([n for _, n in shown], dtype=float)
    assert np.allclose(A @ truth, b)  # the attacker's model of the releases is exact
    out = []
    for target in {tuple(a) for a, n in releases if n is None}:
        target = np.array(target)
        bounds = [linprog(sign * target, A_eq=A, b_eq=b, bounds=(0, None), method="highs") for sign in (1, -1)]
        assert all(res.status == 0 for res in bounds)
        lo, hi = bounds[0].fun, -bounds[1].fun
        assert lo - 1e-6 <= target @ truth <= hi + 1e-6
        if hi - lo < 1 - 1e-6 and 0 < target @ truth < 5:
            out.append((target, lo))
    return out


def primary_only(keys, counts, policy) -> set[int]:
    return {i for i, n in enumerate(counts) if policy.small(n)}


# found by a random search: each table's own secondary suppression holds, the linked tables do not
LINKED_LEAK = [9, 6, 4, 2, 2, 0, 0, 0, 1, 9, 6, 15]


def test_suppressed_cells_cannot_be_recovered_from_all_margins(sqlite_cdm, tmp_path):
    load_persons(sqlite_cdm)
    config = write_config(tmp_path, "[policy]\nmin_cell_count = 5\n")
    releases, _ = _releases(sqlite_cdm, config)
    assert any(0 < a @ PERSONS_TRUTH < 5 for a, n in releases if n is None)  # there are small cells to attack
    assert recovered_cells(releases, PERSONS_TRUTH) == []


def test_the_attack_is_real_against_primary_suppression_alone(sqlite_cdm, tmp_path, monkeypatch):
    """Without secondary suppression and without the linked-release audit the attacker wins; the audit
    alone already stops it (it refuses the releases that would complete a disclosure)."""
    import node.disclosure.policy

    load_persons(sqlite_cdm)
    monkeypatch.setattr(node.disclosure.policy, "suppress_cells", primary_only)  # what Policy.suppress calls
    with monkeypatch.context() as patch:  # the site-wide auditor off too, for this half only
        _site_auditor_off(patch)
        config = write_config(tmp_path / "off", "[policy]\nmin_cell_count = 5\naudit_linked_releases = false\n")
        won = recovered_cells(_releases(sqlite_cdm, config)[0], PERSONS_TRUTH)
    assert won and all(abs(value - target @ PERSONS_TRUTH) < 1e-6 for target, value in won)
    config = write_config(tmp_path / "on", "[policy]\nmin_cell_count = 5\n")
    releases, refused = _releases(sqlite_cdm, config)
    assert refused > 0 and recovered_cells(releases, PERSONS_TRUTH) == []


def _site_auditor_off(monkeypatch):
    """The site-wide release auditor (node/disclosure) also closes these gaps: a control that shows a
    gap is real turns it off as well as the per-requester audit."""
    import node.execute

    return monkeypatch.setattr(node.execute.release_history, "check_and_record", lambda *args: None)


def test_linked_tables_need_the_release_audit(sqlite_cdm, tmp_path, monkeypatch):
    """Per-table secondary suppression is not enough across linked tables (sub-cohorts, other
    cross-classifications): the audit of everything released to the requester closes the gap."""
    load_table(sqlite_cdm, LINKED_LEAK)
    truth = np.array(LINKED_LEAK, dtype=float)
    off = write_config(tmp_path / "off", "[policy]\naudit_linked_releases = false\ndifferencing_k = 0\n")
    with monkeypatch.context() as patch:
        _site_auditor_off(patch)
        assert recovered_cells(_releases(sqlite_cdm, off)[0], truth)  # the gap is real
    on = write_config(tmp_path / "on", "[policy]\ndifferencing_k = 0\n")
    releases, refused = _releases(sqlite_cdm, on)
    assert refused > 0 and recovered_cells(releases, truth) == []
    # another requester starts from nothing: the same first release is fine for them
    first = ask(sqlite_cdm, on, {"type": "crosstab", "by": ["sex"]}, requester="trent")
    assert first["status"] == "ok"


def test_recoverable_cells_is_a_span_test_over_atoms():
    everyone, women, men = np.arange(40), np.arange(0, 38), np.arange(38, 40)
    assert recoverable_cells([everyone], [women, men], 5) == []  # two hidden cells, one known total
    assert recoverable_cells([everyone, women], [men], 5) == [0]  # 40 - 38 gives the 2 men away
    assert recoverable_cells([everyone, women], [women[:3]], 5) == []  # a part of a known set is not known
    # linked: the 2 men appear through another cross-classification (their age band = 12 + 2 men)
    band = np.concatenate([np.arange(0, 12), men])
    assert recoverable_cells([everyone, band, np.arange(0, 12)], [men], 5) == [0]
    assert recoverable_cells([everyone, band], [men, np.arange(0, 12)], 5) == []
    assert recoverable_cells([everyone], [np.arange(0, 0)], 5) == []  # an empty cell discloses nobody


def test_an_audit_too_large_to_solve_fails_closed(monkeypatch):
    import node.disclosure.policy

    monkeypatch.setattr(node.disclosure.policy, "MAX_AUDIT_ENTRIES", 3)
    with pytest.raises(Refusal) as refused:
        recoverable_cells([np.arange(40), np.arange(20), np.arange(10)], [np.arange(2)], 5)
    assert refused.value.code == "DIFFERENCING" and "cannot be audited" in refused.value.message


def test_differencing_two_cohorts_is_refused_and_audited(sqlite_cdm, tmp_path):
    load_persons(sqlite_cdm)
    config = write_config(tmp_path, "[policy]\ndifferencing_k = 5\n")
    assert ask(sqlite_cdm, config, {"type": "count"})["result"] == {"n": N_PERSONS}
    # the same cohort minus the one patient with tumour fraction 40 would give that patient away
    minus_one = {**INDEX, "exclusion": [{"kind": "measurement", "code": "RADFED:ctdna_tumour_fraction",
                                         "value": {"min": 39.5}}]}
    attack = ask(sqlite_cdm, config, {"type": "count"}, minus_one)
    assert attack["status"] == "refused" and attack["code"] == "DIFFERENCING" and attack["result"] is None
    # the same difference through a crosstab is refused as well: the patient set is what counts
    attack = ask(sqlite_cdm, config, {"type": "crosstab", "by": ["sex"]}, minus_one)
    assert attack["code"] == "DIFFERENCING"
    minus_ten = {**INDEX, "exclusion": [{"kind": "measurement", "code": "RADFED:ctdna_tumour_fraction",
                                         "value": {"min": 30.5}}]}
    assert ask(sqlite_cdm, config, {"type": "count"}, minus_ten)["result"] == {"n": 30}
    entries = AuditLog.for_config(config).entries()
    assert [e["code"] for e in entries] == [None, "DIFFERENCING", "DIFFERENCING", None]
    assert all(e["released"] is None for e in entries if e["code"])
    done = CliRunner().invoke(main, ["--config", str(config.path), "audit", "verify"])
    assert done.exit_code == 0 and "audit log intact" in done.output


def test_unknown_codes_warn_and_an_unknown_index_is_refused(sqlite_cdm, tmp_path):
    load_persons(sqlite_cdm)
    config = write_config(tmp_path)
    # one unknown code next to a known one: the known one still defines the cohort, with a warning
    mixed = {"index": {"kind": "condition", "codes": ["RADFED:progression", "SNOMED:123"]},
             "inclusion": [{"kind": "procedure", "codes": ["SNOMED:987654"]}]}
    r = ask(sqlite_cdm, config, {"type": "count"}, {**mixed, "inclusion": []})
    assert r["status"] == "ok" and r["result"] == {"n": N_PERSONS}
    assert r["warnings"] == ["UNKNOWN_CODE SNOMED:123: not in this node's vocabulary"]
    # an unknown code in a variable is a warning too (its value is simply never present here)
    variables = {**VARIABLES, "adc": {"kind": "image_feature", "code": "LOINC:00000-0"}}
    r = ask(sqlite_cdm, config, {"type": "count"}, variables=variables)
    assert r["status"] == "ok" and r["warnings"] == []  # count does not use adc: never compiled
    r = ask(sqlite_cdm, config, {"type": "summary", "variables": ["adc"]}, variables=variables)
    assert r["warnings"] == ["UNKNOWN_CODE LOINC:00000-0: not in this node's vocabulary"]
    # every index code unknown: refused, never a silent zero
    r = ask(sqlite_cdm, config, {"type": "count"}, {"index": {"kind": "condition", "codes": ["SNOMED:123", "SNOMED:456"]}})
    assert r["status"] == "refused" and r["code"] == "UNKNOWN_CODE" and r["result"] is None
    assert "SNOMED:123" in r["message"] and "SNOMED:456" in r["message"]
    assert r["warnings"] == ["UNKNOWN_CODE SNOMED:123: not in this node's vocabulary",
                             "UNKNOWN_CODE SNOMED:456: not in this node's vocabulary"]
    r = ask(sqlite_cdm, config, {"type": "count"}, {"index": {"kind": "measurement", "code": "LOINC:1-1"}})
    assert r["code"] == "UNKNOWN_CODE"
    # a known index with an unknown inclusion criterion runs (the criterion matches nobody) and warns
    r = ask(sqlite_cdm, config, {"type": "count"}, {**INDEX, "exclusion": mixed["inclusion"]})
    assert r["result"] == {"n": N_PERSONS} and r["warnings"] == ["UNKNOWN_CODE SNOMED:987654: not in this node's vocabulary"]
    entries = AuditLog.for_config(config).entries()
    assert entries[0]["warnings"] == ["UNKNOWN_CODE SNOMED:123: not in this node's vocabulary"]
    assert [e["code"] for e in entries].count("UNKNOWN_CODE") == 2
    assert AuditLog.for_config(config).verify() == []
    # the site's dry run says so too
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"cohort": {**mixed, "inclusion": []}, "analysis": {"type": "count"}}))
    dry = CliRunner().invoke(main, ["--config", str(config.path), "query", str(spec)])
    assert dry.exit_code == 0 and "warning: UNKNOWN_CODE SNOMED:123: not in this node's vocabulary" in dry.stderr
    assert json.loads(dry.stdout) == {"n": N_PERSONS}


def test_bad_policy_config_is_a_clear_error_and_releases_nothing(sqlite_cdm, tmp_path):
    load_persons(sqlite_cdm)
    for policy, words in (('[policy]\napproval = "some"\n', "approval must be"),
                          ('[policy]\napproval = ["crosstabs"]\n', "unknown analysis type"),
                          ('[policy.noise]\nmechanism = "cauchy"\n', "mechanism must be one of"),
                          ('[policy.noise]\nmechanism = "laplace"\nepsilon_per_query = -1\n', "positive number"),
                          ('[policy.noise]\nmechanism = "gaussian"\nepsilon_per_query = 2\n', "epsilon_per_query < 1"),
                          ('[policy.noise]\nmechanism = "laplace"\nclip = {age = [5, 1]}\n', "lo < hi"),
                          ('[policy.noise]\nmechanism = "laplace"\nepsilon = 0.1\n', "unknown key(s) ['epsilon']"),
                          ('[policy]\naudit_linked_releases = "yes"\n', "true or false")):
        config = write_config(tmp_path, policy)
        r = ask(sqlite_cdm, config, {"type": "count"})
        assert r["status"] == "error" and r["code"] == "INTERNAL" and r["result"] is None
        assert "configuration is invalid" in r["message"] and words in r["message"], (policy, r["message"])


def test_quantile_rounds_cannot_be_differenced_through_the_tail(sqlite_cdm, tmp_path, monkeypatch):
    """n_le at 38 is hidden (only 2 persons above it); a count of the persons with tumour fraction
    <= 38 would give it back, so the audit refuses that count."""
    load_persons(sqlite_cdm)
    config = write_config(tmp_path, "[policy]\ndifferencing_k = 0\n")
    r = ask(sqlite_cdm, config, {"type": "quantile_round", "variable": "tf", "thresholds": [20, 38]})
    assert r["result"]["n_le"] == [20, None] and r["result"]["n"] == N_PERSONS
    low = {**INDEX, "exclusion": [{"kind": "measurement", "code": "RADFED:ctdna_tumour_fraction",
                                   "value": {"min": 38.5}}]}
    attack = ask(sqlite_cdm, config, {"type": "count"}, low)
    assert attack["code"] == "DIFFERENCING" and "linked tables" in attack["message"]
    off = write_config(tmp_path / "off", "[policy]\ndifferencing_k = 0\naudit_linked_releases = false\n")
    _site_auditor_off(monkeypatch)
    ask(sqlite_cdm, off, {"type": "quantile_round", "variable": "tf", "thresholds": [20, 38]})
    assert ask(sqlite_cdm, off, {"type": "count"}, low)["result"] == {"n": 38}  # 40 - 38: the two above
