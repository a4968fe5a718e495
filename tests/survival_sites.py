"""Small survival cohorts in site CDMs: persons with an index condition, a sex, a year of birth, an
observation period and deaths in groups of five on shared days (so the default disclosure policy
releases every KM bin and crosstab cell), plus the pooled rows so a test can compute the lifelines /
pandas answer itself.  :func:`write_persons` writes any such frame; :func:`fill` is the console,
notebook-API and text-output tests' cohort."""

from __future__ import annotations

import datetime as dt

import pandas as pd
from sqlalchemy import insert

from cdm.schema import metadata
from cdm.vocabulary import Vocabulary

SITES = {"site-a": 40, "site-b": 50, "site-c": 60}
BASE = {"site-a": 10_000, "site-b": 20_000, "site-c": 30_000}
CODE = "443487006"
INDEX = dt.date(2016, 1, 15)
END = dt.date(2021, 12, 31)
COHORT = {"index": {"kind": "condition", "codes": [f"SNOMED:{CODE}"]}}
KM_SPEC = {"cohort": COHORT, "variables": {"sex": {"kind": "sex"}},
           "analysis": {"type": "km", "time": {"event": {"kind": "death"}}, "group": "sex", "bin_days": 30}}
COX_SPEC = {"cohort": COHORT, "variables": {"age": {"kind": "age"}},
            "analysis": {"type": "cox", "time": {"event": {"kind": "death"}}, "covariates": ["age"]}}
CROSSTAB_SPEC = {"cohort": COHORT, "variables": {"sex": {"kind": "sex"}, "age": {"kind": "age"}},
                 "analysis": {"type": "crosstab", "by": ["sex", "age"], "bins": {"age": [0, 60, 120]}}}


def persons(site: str) -> pd.DataFrame:
    rows = []
    for k in range(SITES[site]):
        pid = BASE[site] + k
        group = k // 5                      # five persons share sex, fate and day
        sex = "M" if group % 2 == 0 else "F"
        yob = 1935 + (group * 7 + (3 if site == "site-b" else 0)) % 45
        dies = group % 3 != 2
        days = 60 * (group + 1) + (30 if sex == "F" else 0) if dies else (END - INDEX).days
        rows.append({"person_id": pid, "sex": sex, "yob": yob, "time": float(days), "event": int(dies), "site": site})
    return pd.DataFrame(rows)


def all_persons() -> pd.DataFrame:
    return pd.concat([persons(site) for site in SITES], ignore_index=True)


def write_persons(engine, df: pd.DataFrame, code: str = CODE, index: dt.date = INDEX,
                  end: dt.date | None = END) -> None:
    """person, observation_period, the index condition ``SNOMED:code`` and death rows for ``df``
    (columns person_id, yob, time, event and optionally sex, default M).  Follow-up ends at ``end``,
    or, with ``end=None``, on each person's own day ``index + time`` (censorings on many days)."""
    concept = Vocabulary(engine).concept_for("SNOMED", code, "index condition", "Condition").concept_id
    with engine.begin() as conn:
        conn.execute(insert(metadata.tables["person"]), [
            {"person_id": int(r.person_id), "gender_concept_id": 8532 if getattr(r, "sex", "M") == "F" else 8507,
             "year_of_birth": int(r.yob), "month_of_birth": 6, "day_of_birth": 1, "race_concept_id": 0,
             "ethnicity_concept_id": 0} for r in df.itertuples()])
        conn.execute(insert(metadata.tables["observation_period"]), [
            {"observation_period_id": int(r.person_id), "person_id": int(r.person_id),
             "observation_period_start_date": dt.date(2010, 1, 1),
             "observation_period_end_date": end or index + dt.timedelta(days=int(r.time)),
             "period_type_concept_id": 32817} for r in df.itertuples()])
        conn.execute(insert(metadata.tables["condition_occurrence"]), [
            {"condition_occurrence_id": int(r.person_id), "person_id": int(r.person_id), "condition_concept_id": concept,
             "condition_start_date": index, "condition_type_concept_id": 32817} for r in df.itertuples()])
        conn.execute(insert(metadata.tables["death"]), [
            {"person_id": int(r.person_id), "death_date": index + dt.timedelta(days=int(r.time)),
             "death_type_concept_id": 32817} for r in df.itertuples() if r.event])


def fill(engine, site: str) -> None:
    write_persons(engine, persons(site))
